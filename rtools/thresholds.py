"""Decision rules and threshold fitting: when does a scored record become a refusal?

A scored record carries ``p_refuse`` and ``p_respond`` and, in category mode, ``p_cat``
(``{slug: probability}``). Three rules turn it into ``decision`` (``"refuse"``/``"respond"``)
and ``decision_cat`` (a slug or None):

* **own choice** (no threshold), the paper's default: single mode refuses iff
  ``p_refuse > p_respond``; category mode takes the argmax over all control tokens (each
  ``p_cat[slug]`` and ``p_respond``) and refuses iff a category wins. Ties go to respond;
  among tied categories the first in ``p_cat`` order wins.
* **global threshold** ``T``: refuse iff ``p_refuse >= T``; ``decision_cat`` is the argmax
  slug of ``p_cat`` when refused and ``p_cat`` is present.
* **per-category thresholds** ``{slug: T}`` (``default`` for the rest): category ``c`` fires
  iff ``p_cat[c] >= T_c``; a category with no threshold fires by the model's own choice (it
  is the argmax over all control tokens). Refuse iff any fires; ``decision_cat`` is the
  firing slug with the highest ``p_cat`` (first in ``p_cat`` order on ties). Categories are
  independent: one category's threshold never changes whether another one fires.

Fitting chooses thresholds for an objective, named by rt-metrics' summary keys: ``f1``
(positive class = refuse), ``refusal_rate=R`` (alias ``rate=R``: the refusal rate closest to
R), ``false_refusal_rate=R`` (alias ``fpr=R``: maximum recall with fp/(fp+tn) <= R),
``missed_refusal_rate=R`` (alias ``missed=R``; ``recall=R`` is ``missed=1-R``: the highest
threshold, so the fewest refusals and the lowest false-refusal rate, with fn/(fn+tp) <= R)
and ``budget=B`` (the lowest threshold with refusal rate <= B, a quantile of the scores; the
only objective that needs no labels). Candidate thresholds are 0, 1 and the midpoints between
consecutive distinct scores, so fits are deterministic; among equally good candidates the
highest threshold (fewest refusals) wins.

Ties: ``p >= t`` refuses, so rows with the same score are always decided together and a
rate counts every tied row on the same side: when a tie straddles the target (say 10 rows
at one score and room for 3 within the budget), the whole tie stays below the threshold and
the reached rate is below the target. Nothing is split at random. When no candidate meets a
constraint (a budget smaller than the share of rows at p = 1, a false-refusal target below
the rate of respond rows at p = 1), the fit falls back to the fewest violations (threshold 1
for a budget, the lowest false-refusal rate for ``fpr``). Fitting imports numpy lazily;
applying rules needs nothing but the standard library and orjson.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

import orjson

from .config import ConfigError, parse_number, parse_pair
from .rates import confusion_summary
from .records import (
    RecordError,
    atomic_write_json,
    json_type,
    may_hold_big_int,
    numbered,
    parse_line,
    read_json_file,
)
from .records import dumps as dump_record
from .tokens import slugify

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

REFUSE = "refuse"
RESPOND = "respond"
DEFAULT_KEY = "*"
#: Objective values closer than this count as a tie (then the higher threshold wins).
TIE_TOLERANCE = 1e-12

Decision = tuple[str, str | None]


# ---------------------------------------------------------------------------
# The rules on plain numbers.


def argmax_slug(p_cat: Mapping[str, float]) -> str | None:
    """The slug with the highest probability (first in order on ties); None when empty."""
    best: str | None = None
    best_p = -math.inf
    for slug, p in p_cat.items():
        if p > best_p:
            best, best_p = slug, p
    return best


def own_choice(p_refuse: float, p_respond: float) -> Decision:
    """Single mode, no threshold: refuse iff p_refuse > p_respond."""
    return (REFUSE, None) if p_refuse > p_respond else (RESPOND, None)


def own_choice_category(p_cat: Mapping[str, float], p_respond: float) -> Decision:
    """Category mode, no threshold: the argmax over every category token and the respond token."""
    slug = argmax_slug(p_cat)
    if slug is not None and p_cat[slug] > p_respond:
        return REFUSE, slug
    return RESPOND, None


def own_rule(p_refuse: float | None, p_respond: float, p_cat: Mapping[str, float] | None = None) -> Decision:
    """The model's own choice in either mode: :func:`own_choice_category` when ``p_cat`` is given,
    else :func:`own_choice` (the rule with no threshold; rt-generate's default choice)."""
    if p_cat is not None:
        return own_choice_category(p_cat, p_respond)
    assert p_refuse is not None
    return own_choice(p_refuse, p_respond)


def global_rule(p_refuse: float, threshold: float, p_cat: Mapping[str, float] | None = None) -> Decision:
    """Refuse iff p_refuse >= threshold; decision_cat is p_cat's argmax when refused."""
    if p_refuse >= threshold:
        return REFUSE, (argmax_slug(p_cat) if p_cat else None)
    return RESPOND, None


def category_rule(
    p_cat: Mapping[str, float],
    thresholds: Mapping[str, float],
    default: float | None = None,
    p_respond: float | None = None,
) -> Decision:
    """Per-category thresholds: each category fires on its own threshold.

    A category with no threshold (not in ``thresholds`` and no ``default``) fires when it is the
    model's own choice, which needs ``p_respond``.
    """
    own: str | None = None
    if default is None and any(slug not in thresholds for slug in p_cat):
        if p_respond is None:
            raise ValueError("p_respond is needed for categories without a threshold")
        own = own_choice_category(p_cat, p_respond)[1]
    best: str | None = None
    best_p = -math.inf
    for slug, p in p_cat.items():
        t = thresholds.get(slug, default)
        fires = slug == own if t is None else p >= t
        if fires and p > best_p:
            best, best_p = slug, p
    return (REFUSE, best) if best is not None else (RESPOND, None)


# ---------------------------------------------------------------------------
# Reading the fields a rule needs, with messages that say what is wrong.


def check_probability(value: Any, what: str) -> float:
    """A probability in [0, 1] (int 0/1 allowed, bool not); RecordError otherwise."""
    if value is None:
        raise RecordError(f"{what} is null, expected a probability")
    if value.__class__ is bool or not isinstance(value, int | float):
        raise RecordError(f"{what} must be a number, got {json_type(value)}")
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise RecordError(f"{what} is {value}, outside [0, 1]")
    return float(value)


def get_probability(record: Mapping[str, Any], key: str) -> float:
    if key not in record:
        raise RecordError(f"missing {key}", hint="score the records with rt-score first")
    return check_probability(record[key], key)


def get_p_cat(record: Mapping[str, Any], required: bool = True) -> dict[str, float] | None:
    """``p_cat`` checked: an object of probabilities; None when absent and not required."""
    pc = record.get("p_cat")
    if pc is None:
        if required:
            raise RecordError(
                "missing p_cat: per-category thresholds need category-mode scores",
                hint="score with a category-mode adapter, or use --threshold",
            )
        return None
    if not isinstance(pc, dict):
        raise RecordError(f"p_cat must be an object {{slug: probability}}, got {json_type(pc)}")
    if not pc:
        raise RecordError("p_cat is empty")
    for slug, p in pc.items():
        check_probability(p, f"p_cat.{slug}")
    return pc


# ---------------------------------------------------------------------------
# Thresholds: what --threshold / --cat / --thresholds configure and what fitting writes.


@dataclass(frozen=True)
class Thresholds:
    """A configured decision rule plus free-form metadata; frozen (:meth:`from_flags` checks flags).

    ``threshold`` set: global rule. Else ``categories`` / ``default`` set: per-category rule
    (names are resolved to the slugs of ``p_cat`` by :meth:`resolve`). Neither: own choice.
    """

    threshold: float | None = None
    categories: dict[str, float] = field(default_factory=dict)
    default: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.threshold is not None and (self.categories or self.default is not None):
            raise ValueError("a global threshold and per-category thresholds cannot be combined")

    @property
    def mode(self) -> str:
        if self.threshold is not None:
            return "global"
        if self.categories or self.default is not None:
            return "category"
        return "own"

    # -- the file format -------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = dict(self.meta)
        if self.threshold is not None:
            d["threshold"] = self.threshold
        if self.categories:
            d["categories"] = dict(self.categories)
        if self.default is not None:
            d["default"] = self.default
        return d

    @classmethod
    def from_dict(cls, d: Any) -> Thresholds:
        """Parse ``{"threshold": T}`` or ``{"categories": {...}, "default": T}`` (+ metadata)."""
        if not isinstance(d, dict):
            raise ValueError(f"expected a JSON object, got {json_type(d)}")
        if "threshold" in d and ("categories" in d or "default" in d):
            raise ValueError('give either "threshold" or "categories"/"default", not both')
        if "threshold" not in d and "categories" not in d and "default" not in d:
            raise ValueError('expected "threshold": T or "categories": {slug: T, ...}')
        meta = {k: v for k, v in d.items() if k not in ("threshold", "categories", "default")}
        if "threshold" in d:
            return cls(threshold=check_threshold(d["threshold"], "threshold"), meta=meta)
        cats = d.get("categories", {})
        if not isinstance(cats, dict):
            raise ValueError(f'"categories" must be an object {{slug: threshold}}, got {json_type(cats)}')
        default = check_threshold(d["default"], "default") if d.get("default") is not None else None
        categories: dict[str, float] = {}
        seen: dict[str, str] = {}
        for slug, t in cats.items():
            if slug == DEFAULT_KEY:
                default = check_threshold(t, "categories.*")
            else:
                categories[slug] = check_threshold(t, f"categories.{slug}")
                same = seen.setdefault(_slug_or_none(slug) or slug, slug)
                if same != slug:
                    raise ValueError(f"categories {same!r} and {slug!r} are the same category")
        if not categories and default is None:
            raise ValueError(
                'sets no threshold: "categories" is empty and there is no "default" '
                '(give "threshold": T, or "categories": {slug: T, ...})'
            )
        return cls(categories=categories, default=default, meta=meta)

    @classmethod
    def load(cls, path: str) -> Thresholds:
        data = read_json_file(path, "a thresholds JSON file")
        try:
            return cls.from_dict(data)
        except ValueError as e:
            raise RecordError(str(e), path=path) from None

    @classmethod
    def from_flags(
        cls,
        threshold: float | None = None,
        cats: Mapping[str, float] | None = None,
        thresholds_file: str | None = None,
    ) -> Thresholds:
        """The rule the flags ``--threshold``, ``--cat`` (parsed by :func:`parse_cats`) and
        ``--thresholds FILE`` set; ConfigError when more than one is given, RecordError for a bad file."""
        flags = (
            ("--threshold", threshold is not None),
            ("--cat", bool(cats)),
            ("--thresholds", thresholds_file is not None),
        )
        given = [opt for opt, present in flags if present]
        if len(given) > 1:
            raise ConfigError(f"{' and '.join(given)} cannot be combined: give one way to set thresholds")
        if thresholds_file is not None:
            return cls.load(thresholds_file)
        if threshold is not None:
            try:
                return cls(threshold=check_threshold(threshold))
            except ValueError as e:
                raise ConfigError(str(e), option="--threshold") from None
        named = dict(cats or {})
        default = named.pop(DEFAULT_KEY, None)
        return cls(categories=named, default=default)

    def save(self, path: str) -> None:
        atomic_write_json(path, self.to_dict())

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"

    def describe(self) -> str:
        """Short text: ``threshold=0.5`` or ``safety=0.3 humanizing=0.5 *=0.4``."""
        if self.threshold is not None:
            return f"threshold={self.threshold:.6g}"
        parts = [f"{slug}={t:.6g}" for slug, t in self.categories.items()]
        if self.default is not None:
            parts.append(f"*={self.default:.6g}")
        return " ".join(parts) if parts else "own choice"

    def summary(self) -> str:
        """A fit in one line: ``fit f1: threshold=0.4375 f1=0.8732 (n=1000)`` (what rt-threshold --fit
        prints on stderr); an undefined (0/0) rate shows as null."""
        meta = self.meta
        m = meta["metrics"]
        kind = Objective.parse(meta["objective"]).kind
        keys = {
            "fpr": ("recall", "false_refusal_rate"),
            "missed": ("missed_refusal_rate", "false_refusal_rate"),
            "rate": ("refusal_rate",),
            "budget": ("refusal_rate",),
        }.get(kind, ("f1",))
        reached = " ".join(f"{k}={'null' if m[k] is None else format(m[k], '.4f')}" for k in keys)
        return f"fit {meta['objective']}: {self.describe()} {reached} (n={meta['n']})"

    # -- applying ----------------------------------------------------------------------

    def resolve(self, slugs: Iterable[str], seen_in: str = "p_cat") -> Thresholds:
        """Map category names to the slugs seen in ``p_cat`` (exact, else slugified).

        Raises RecordError naming the categories seen (in ``seen_in``) when a name matches none of them.
        """
        seen = list(slugs)
        known = set(seen)
        resolved: dict[str, float] = {}
        unknown: list[str] = []
        for name, t in self.categories.items():
            slug = name if name in known else _slug_or_none(name)
            if slug not in known:
                unknown.append(name)
            elif slug in resolved:
                raise RecordError(f"category {slug!r} is given more than one threshold")
            else:
                resolved[slug] = t
        if unknown:
            raise RecordError(
                f"unknown categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(map(repr, unknown))}"
                f" ({seen_in} has: {', '.join(seen)})"
            )
        return Thresholds(categories=resolved, default=self.default, meta=self.meta)

    def decide(self, record: Mapping[str, Any]) -> Decision:
        """The decision for one record, checking the fields the rule reads (RecordError)."""
        if self.threshold is not None:
            p = get_probability(record, "p_refuse")
            # p_cat is read (and checked) only to name a refusal's category
            return global_rule(
                p, self.threshold, get_p_cat(record, required=False) if p >= self.threshold else None
            )
        if self.categories or self.default is not None:
            pc = get_p_cat(record, required=True)
            assert pc is not None
            missing = [slug for slug in self.categories if slug not in pc]
            if missing:
                raise RecordError(f"p_cat has no {', '.join(map(repr, missing))} (it has: {', '.join(pc)})")
            need_respond = self.default is None and any(slug not in self.categories for slug in pc)
            p_respond = get_probability(record, "p_respond") if need_respond else None
            return category_rule(pc, self.categories, self.default, p_respond)
        pc = get_p_cat(record, required=False)
        p_refuse = None if pc is not None else get_probability(record, "p_refuse")
        return own_rule(p_refuse, get_probability(record, "p_respond"), pc)


def _slug_or_none(name: str) -> str | None:
    try:
        return slugify(name)
    except ValueError:
        return None


def check_threshold(value: Any, what: str = "threshold") -> float:
    """A threshold: a number in [0, 1]; ValueError otherwise."""
    if value.__class__ is bool or not isinstance(value, int | float):
        raise ValueError(f"{what} must be a number in [0, 1], got {json_type(value)}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{what} must be in [0, 1], got {value}")
    return float(value)


def same_category(a: str, b: str) -> bool:
    """True when two --cat names name the same category (``safety`` and ``Safety``)."""
    if DEFAULT_KEY in (a, b):
        return a == b
    return a == b or (_slug_or_none(a) or a) == (_slug_or_none(b) or b)


def parse_cat_option(text: str) -> tuple[str, float]:
    """``slug=T`` (``*=T`` for every category not named) -> (name, T); ValueError when malformed."""
    name, value = parse_pair(text, "SLUG=T (e.g. safety=0.3 or '*=0.5')", last=True)
    assert name is not None
    return name, parse_number(value, f"threshold for {name!r}", low=0.0, high=1.0)


def parse_cats(values: Iterable[str]) -> dict[str, float]:
    """``--cat`` values -> ``{name: T}``; ConfigError for a malformed value or a category given twice
    (also under two names: ``safety`` and ``Safety``)."""
    cats: dict[str, float] = {}
    for value in values:
        try:
            name, t = parse_cat_option(value)
        except ValueError as e:
            raise ConfigError(str(e), option="--cat") from None
        if name in cats:
            raise ConfigError(f"{name!r} is given twice", option="--cat")
        same = next((other for other in cats if same_category(other, name)), None)
        if same is not None:
            raise ConfigError(
                f"{same!r} and {name!r} are the same category: give it one threshold", option="--cat"
            )
        cats[name] = t
    return cats


# ---------------------------------------------------------------------------
# Streaming: apply a rule to every record of a JSONL stream.


def apply_stream(
    stream: IO[bytes], name: str, out: IO[bytes], rule: Thresholds, unbuffered: bool = False
) -> int:
    """Add ``decision``/``decision_cat`` to every record of ``stream``; write JSONL to ``out``.

    Records stream through one at a time and keep every other field and their key order.
    A bad record raises RecordError with the file and line after every earlier record has been
    written. Returns the number of records written.

    Each rule has a fast path for the common record (float probabilities in [0, 1]) that raises
    on anything else; such a record then goes through :meth:`Thresholds.decide`, the checked
    reference, which gives the same decision or the error with its file and line.
    """
    checker = _Checked(rule, name)
    loads = orjson.loads
    dumps = orjson.dumps
    opt = orjson.OPT_APPEND_NEWLINE
    plus = b"+"
    big = may_hold_big_int
    write = out.write
    flush = out.flush
    fast = checker.fast
    count = 0
    try:
        for lineno, line in enumerate(stream, 1):
            try:
                r = loads(line)
                fast(r)
                data = dumps(r, option=opt)
                if plus in data and big(line):  # an integer beyond 64 bits read as a float
                    raise ValueError
            except Exception:
                r = checker.decide_line(line, lineno)
                fast = checker.fast
                if r is None:
                    continue
                data = dump_record(r)
            write(data)
            count += 1
            if unbuffered:
                flush()
    finally:
        flush()
    return count


class _Checked:
    """The checked path of :func:`apply_stream`; resolves --cat names on the first p_cat seen.

    The first p_cat also fixes the set of category slugs: a later record whose p_cat has another
    set (a slug the scores never had, or one missing) is an error with its file and line, so a
    stray slug can never win decision_cat.
    """

    def __init__(self, rule: Thresholds, name: str):
        self.rule = rule
        self.name = name
        self.slugs: frozenset[str] | None = None
        self.first: list[str] = []
        self.resolved = rule.mode != "category"
        self.fast: Any = _fast_rule(rule, None) if self.resolved else _unresolved

    def check_slugs(self, pc: Mapping[str, Any]) -> None:
        if self.slugs is None:
            self.slugs = frozenset(pc)
            self.first = list(pc)
            if self.resolved:
                self.fast = _fast_rule(self.rule, self.slugs)
        elif pc.keys() != self.slugs:
            check_slug_set(self.first, pc)

    def decide_line(self, line: bytes, lineno: int) -> dict[str, Any] | None:
        r = parse_line(line, self.name, lineno)
        return None if r is None else self.decide_record(r, lineno)

    def decide_record(self, r: dict[str, Any], lineno: int) -> dict[str, Any]:
        """Set decision/decision_cat on ``r`` by the checked rule; RecordError with the file and line."""
        try:
            if not self.resolved:
                pc = get_p_cat(r, required=True)
                assert pc is not None
                self.rule = self.rule.resolve(pc)
                self.resolved = True
                self.fast = _fast_rule(self.rule, self.slugs)
            r["decision"], r["decision_cat"] = self.rule.decide(r)
            pc = r.get("p_cat")
            if isinstance(pc, dict) and pc:
                self.check_slugs(pc)
        except RecordError as e:
            raise RecordError(e.message, path=self.name, line=lineno, hint=e.hint) from None
        return r


def check_slug_set(first: list[str], pc: Mapping[str, Any]) -> None:
    """RecordError unless ``pc`` has exactly the categories of the first p_cat, ``first``."""
    extra = [s for s in pc if s not in first]
    missing = [s for s in first if s not in pc]
    if not extra and not missing:
        return
    what = []
    if extra:
        what.append(f"has {', '.join(map(repr, extra))}, which the first record's p_cat has not")
    if missing:
        what.append(f"lacks {', '.join(map(repr, missing))}")
    raise RecordError(
        f"p_cat {'; it '.join(what)} (the first has: {', '.join(first)})",
        hint="every record must be scored with the same token map",
    )


def _unresolved(r: dict[str, Any]) -> None:
    raise LookupError("category names not resolved yet")


def _fast_probability(p: Any) -> float:
    if p.__class__ is not float or not 0.0 <= p <= 1.0:
        raise ValueError
    return p


def _fast_p_cat(pc: Any, slugs: frozenset[str] | None) -> dict[str, float]:
    if pc.keys() != slugs or not pc:
        raise ValueError
    for q in pc.values():
        if q.__class__ is not float or not 0.0 <= q <= 1.0:
            raise ValueError
    return pc


def _fast_rule(rule: Thresholds, slugs: frozenset[str] | None) -> Any:
    """A function that sets decision/decision_cat on a common record, or raises on anything else.

    The own-choice and per-category paths decide by the rule functions :meth:`Thresholds.decide`
    calls (``own_rule``, ``category_rule``); the global path, rt-threshold's hot loop, is
    ``global_rule`` written inline with its checks. Only the checks differ: the common record (float
    probabilities in [0, 1], a p_cat with the slugs ``slugs``, fixed by the first p_cat seen) passes,
    anything else raises, and the record goes to the checked path, which gives the same decision
    or the error with its file and line (``tests/test_thresholds_rules.py`` checks the two agree).
    """
    prob = _fast_probability
    p_cat = _fast_p_cat
    refuse, respond = REFUSE, RESPOND
    if rule.mode == "global":
        t = rule.threshold

        def fast_global(r: dict[str, Any]) -> None:
            # global_rule with the checks of the common record in one pass (the hot path of
            # rt-threshold --threshold T; bench/bench_threshold.py), property-tested equal to decide()
            p = r["p_refuse"]
            if p.__class__ is not float or not 0.0 <= p <= 1.0:
                raise ValueError
            pc = r.get("p_cat")
            if pc is not None and pc.keys() != slugs:
                raise ValueError
            if p < t:
                r["decision"] = respond
                r["decision_cat"] = None
                return
            best = None
            if pc is not None:
                best_p = -1.0
                for slug, q in pc.items():
                    if q.__class__ is not float or not 0.0 <= q <= 1.0:
                        raise ValueError
                    if q > best_p:
                        best, best_p = slug, q
                if best is None:
                    raise ValueError
            r["decision"] = refuse
            r["decision_cat"] = best

        return fast_global

    if rule.mode == "own":

        def fast_own(r: dict[str, Any]) -> None:
            pc = r.get("p_cat")
            if pc is None:
                r["decision"], r["decision_cat"] = own_rule(prob(r["p_refuse"]), prob(r["p_respond"]))
            else:
                pc = p_cat(pc, slugs)
                r["decision"], r["decision_cat"] = own_rule(None, prob(r["p_respond"]), pc)

        return fast_own

    ts = rule.categories
    default = rule.default
    need_respond = default is None and slugs is not None and any(s not in ts for s in slugs)

    def fast_category(r: dict[str, Any]) -> None:
        pc = p_cat(r["p_cat"], slugs)  # also every named category (resolved on the first p_cat)
        q = prob(r["p_respond"]) if need_respond else None
        r["decision"], r["decision_cat"] = category_rule(pc, ts, default, q)

    return fast_category


# ---------------------------------------------------------------------------
# Fitting.


@dataclass(frozen=True)
class Objective:
    """What a fit optimises; ``kind`` is one of :data:`OBJECTIVES`, ``target`` its number.

    ``f1``: maximise F1. ``rate``: refusal rate closest to the target. ``fpr``: maximise recall
    with false_refusal_rate <= target. ``missed``: the highest threshold (fewest refusals, so the
    lowest false-refusal rate) with missed_refusal_rate <= target. ``budget``: the lowest threshold
    with refusal_rate <= target, needing no labels. ``spelled`` is how the objective is written
    (``recall=0.95`` is ``missed`` with target 0.05); it does not take part in comparisons.
    """

    kind: str
    target: float | None = None
    spelled: str | None = field(default=None, compare=False)

    def __str__(self) -> str:
        if self.spelled is not None:
            return self.spelled
        name = OBJECTIVE_NAMES[self.kind]
        return name if self.target is None else f"{name}={self.target:g}"

    @property
    def needs_labels(self) -> bool:
        return self.kind != "budget"

    @classmethod
    def parse(cls, text: str) -> Objective:
        """``f1``, ``false_refusal_rate=R`` (alias ``fpr=R``), ``missed_refusal_rate=R`` (``missed=R``),
        ``recall=R``, ``refusal_rate=R`` (``rate=R``) or ``budget=B``; ValueError otherwise."""
        name, sep, value = text.strip().partition("=")
        name = name.strip().lower()
        kind = OBJECTIVE_ALIASES.get(name)
        if kind == "f1" and not sep:
            return cls("f1")
        if kind is not None and kind != "f1":
            if not sep:
                raise ValueError(f"{name} needs a target, e.g. {name}={0.95 if name == 'recall' else 0.05}")
            try:
                target = float(value)
            except ValueError:
                raise ValueError(f"{name} target is not a number: {value!r}") from None
            if not 0.0 <= target <= 1.0:  # also rejects NaN
                raise ValueError(f"{name} target must be in [0, 1], got {value.strip()}")
            if name == "recall":  # recall=R is missed_refusal_rate=1-R
                return cls("missed", 1.0 - target, spelled=f"recall={target:g}")
            return cls(kind, target)
        raise ValueError(
            f"unknown objective {text!r}: expected f1, false_refusal_rate=R (fpr=R), "
            "missed_refusal_rate=R (missed=R), recall=R, refusal_rate=R (rate=R) or budget=B"
        )


#: Each objective kind's name in the thresholds file and the summary: rt-metrics' keys.
OBJECTIVE_NAMES = {
    "f1": "f1",
    "rate": "refusal_rate",
    "fpr": "false_refusal_rate",
    "missed": "missed_refusal_rate",
    "budget": "budget",
}
#: Every accepted spelling -> kind (the short names are aliases of rt-metrics' keys).
OBJECTIVE_ALIASES = {
    "f1": "f1",
    "refusal_rate": "rate",
    "rate": "rate",
    "false_refusal_rate": "fpr",
    "fpr": "fpr",
    "missed_refusal_rate": "missed",
    "missed": "missed",
    "recall": "missed",
    "budget": "budget",
}


@dataclass
class FitData:
    """Labelled scores for fitting: one row per record."""

    labels: list[bool | None]  # True = gold refuse; None = no label (only a budget fit allows it)
    categories: list[str | None]  # gold category slug, if any
    p_refuse: list[float] = field(default_factory=list)
    slugs: list[str] = field(default_factory=list)  # p_cat columns (per-category fits)
    p_cat: list[list[float]] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.labels)


def collect_fit_data(
    records: Iterable[tuple[int, dict[str, Any]]],
    name: str,
    per_category: bool,
    keep: list | None = None,
    need_labels: bool = True,
) -> FitData:
    """Read what a fit needs from ``(line, record)`` pairs; RecordError with file:line on bad rows.

    ``keep``, when given, receives the ``(line, record)`` pairs (to write them out after the fit).
    ``need_labels=False`` (a budget fit) lets records go without a ``label`` (stored as None).
    """
    data = FitData(labels=[], categories=[])
    for lineno, r in records:
        try:
            label = r.get("label")
            if label not in (REFUSE, RESPOND) and (need_labels or label is not None):
                if label is None:
                    raise RecordError(
                        "missing label: fitting needs a gold label on every record",
                        hint="--fit budget=B needs no labels",
                    )
                raise RecordError(f"label must be 'refuse' or 'respond', got {label!r}")
            try:
                cat = slugify(r.get("category"))
            except ValueError as e:
                raise RecordError(str(e)) from None
            if per_category:
                pc = get_p_cat(r, required=True)
                assert pc is not None
                if not data.slugs:
                    data.slugs = list(pc)
                try:
                    row = [pc[s] for s in data.slugs]
                except KeyError:
                    missing = [s for s in data.slugs if s not in pc]
                    raise RecordError(
                        f"p_cat has no {', '.join(map(repr, missing))} (earlier records have: {', '.join(data.slugs)})"
                    ) from None
                if len(pc) != len(data.slugs):
                    extra = [s for s in pc if s not in data.slugs]
                    raise RecordError(
                        f"p_cat has {', '.join(map(repr, extra))}, which earlier records have not"
                        f" (they have: {', '.join(data.slugs)})"
                    )
                data.p_cat.append([float(x) for x in row])
            else:
                data.p_refuse.append(get_probability(r, "p_refuse"))
        except RecordError as e:
            raise RecordError(e.message, path=name, line=lineno, hint=e.hint) from None
        data.labels.append(None if label is None else label == REFUSE)
        data.categories.append(cat)
        if keep is not None:
            keep.append((lineno, r))
    return data


def candidate_thresholds(scores: np.ndarray) -> np.ndarray:
    """0, 1 and the midpoints between consecutive distinct scores, ascending."""
    import numpy as np

    u = np.unique(np.asarray(scores, dtype=np.float64))
    mids = (u[:-1] + u[1:]) / 2.0
    return np.unique(np.concatenate([np.array([0.0, 1.0]), mids]))


def count_at_least(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """For each threshold t, how many scores are >= t."""
    import numpy as np

    s = np.sort(np.asarray(scores, dtype=np.float64))
    return len(s) - np.searchsorted(s, thresholds, side="left")


def objective_scores(
    tp: np.ndarray, fp: np.ndarray, n_pos: int, n_neg: int, objective: Objective
) -> np.ndarray:
    """A score to maximise for each (tp, fp) pair."""
    import numpy as np

    tp = np.asarray(tp, dtype=np.float64)
    fp = np.asarray(fp, dtype=np.float64)
    if objective.kind == "f1":
        denom = tp + fp + n_pos
        return np.divide(2.0 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    if objective.kind == "rate":
        n = n_pos + n_neg
        rate = (tp + fp) / n if n else np.zeros_like(tp)
        return -np.abs(rate - objective.target)
    if objective.kind == "fpr":
        fpr = fp / n_neg if n_neg else np.zeros_like(fp)
        recall = tp / n_pos if n_pos else np.zeros_like(tp)
        feasible = fpr <= objective.target + TIE_TOLERANCE
        if not feasible.any():  # nothing meets the target: the lowest false-refusal rate
            return -fpr
        return np.where(feasible, recall, -np.inf)
    if objective.kind == "missed":  # every candidate within the target ties: the highest wins
        missed = (n_pos - tp) / n_pos if n_pos else np.zeros_like(tp)
        return np.where(missed <= objective.target + TIE_TOLERANCE, 0.0, -np.inf)
    if objective.kind == "budget":  # the most refusals within the budget (labels are not read)
        n = n_pos + n_neg
        rate = (tp + fp) / n if n else np.zeros_like(tp)
        feasible = rate <= objective.target + TIE_TOLERANCE
        if not feasible.any():  # rows at p = 1 alone exceed the budget: the fewest refusals
            return -rate
        return np.where(feasible, rate, -np.inf)
    raise ValueError(f"unknown objective {objective}")


def best_index(scores: np.ndarray) -> int:
    """Index of the best score; among (near-)ties the last one, i.e. the highest threshold."""
    import numpy as np

    best = scores.max()
    return int(np.flatnonzero(scores >= best - TIE_TOLERANCE)[-1])


def fit_threshold(
    pos: np.ndarray, neg: np.ndarray, objective: Objective, scores: np.ndarray | None = None
) -> float:
    """The best threshold for scores of gold-refuse rows ``pos`` and gold-respond rows ``neg``.

    Candidates come from ``scores`` (default: pos and neg together).
    """
    import numpy as np

    pos = np.asarray(pos, dtype=np.float64)
    neg = np.asarray(neg, dtype=np.float64)
    cand = candidate_thresholds(np.concatenate([pos, neg]) if scores is None else scores)
    tp = count_at_least(pos, cand)
    fp = count_at_least(neg, cand)
    return float(cand[best_index(objective_scores(tp, fp, len(pos), len(neg), objective))])


#: Counts and rates of decisions against labels, positive class = refuse (rt-metrics' keys; a 0/0
#: rate is None): the one confusion, from rtools.rates.
confusion = confusion_summary


#: The metric each objective reports as its value.
OBJECTIVE_METRIC = {
    "f1": "f1",
    "rate": "refusal_rate",
    "fpr": "recall",
    "missed": "false_refusal_rate",
    "budget": "refusal_rate",
}


def fit(
    records: FitData | Iterable[dict[str, Any] | tuple[int, dict[str, Any]]],
    objective: Objective | str,
    per_category: bool = False,
    fitted_on: str | None = None,
    keep: list | None = None,
) -> Thresholds:
    """Fit a global threshold on p_refuse, or one threshold per category on p_cat.

    ``records``: scored records, ``(line, record)`` pairs (:func:`rtools.records.read_records`) or a
    :class:`FitData`. ``objective``: an :class:`Objective` or its text (``"f1"``, ``"fpr=0.05"``...).
    ``fitted_on`` names the input in errors and in the metadata; ``keep`` receives the records read.
    The result carries metadata: objective, objective_value, n, fitted_on and the metrics at
    the fitted thresholds (a 0/0 rate is None).
    """
    import numpy as np

    if isinstance(objective, str):
        objective = Objective.parse(objective)
    if isinstance(records, FitData):
        data = records
    else:
        data = collect_fit_data(
            numbered(records),
            fitted_on or "<input>",
            per_category,
            keep=keep,
            need_labels=objective.needs_labels,
        )

    if data.n == 0:
        raise RecordError("no records to fit on", path=fitted_on)
    labelled = None not in data.labels
    if objective.needs_labels and not labelled:
        raise ValueError(f"{objective} needs a label on every record")
    # a budget fit reads no labels: every row counts as "positive", so tp + fp = refusals
    y = np.array(data.labels, dtype=bool) if objective.needs_labels else np.ones(data.n, dtype=bool)
    if per_category:
        scores = np.array(data.p_cat, dtype=np.float64).reshape(data.n, len(data.slugs))
        cats = np.array([data.slugs.index(c) if c in data.slugs else -1 for c in data.categories])
        values = _fit_categories(scores, y, cats, objective)
        rule: dict[str, Any] = {"categories": dict(zip(data.slugs, values, strict=True))}
        refused = (scores >= np.array(values)).any(axis=1)
    else:
        s = np.array(data.p_refuse, dtype=np.float64)
        t = fit_threshold(s[y], s[~y], objective)
        rule = {"threshold": t}
        refused = s >= t
    if labelled:
        metrics = confusion(refused.tolist(), data.labels)
    else:  # an unlabelled budget fit: only the refusal rate is known
        metrics = {"n": data.n, "refusal_rate": float(refused.mean())}
    meta = {
        "objective": str(objective),
        "objective_value": metrics[OBJECTIVE_METRIC[objective.kind]],
        "n": data.n,
        "metrics": metrics,
    }
    if fitted_on is not None:
        meta["fitted_on"] = fitted_on
    return Thresholds(**rule, meta=meta)


def _fit_categories(scores: np.ndarray, y: np.ndarray, cats: np.ndarray, objective: Objective) -> list[float]:
    """One threshold per column of ``scores``; see :func:`fit`."""
    import numpy as np

    n, k = scores.shape
    everyone = np.ones(n, dtype=bool)
    thresholds: list[float] = []
    for c in range(k):
        own = cats == c
        col = scores[:, c]
        if objective.kind == "f1":
            rows = own if (own & y).any() else everyone
            thresholds.append(fit_threshold(col[rows & y], col[rows & ~y], objective))
        elif objective.kind in ("rate", "budget"):
            rows = own if own.any() else everyone
            # the category's refusal rate among its own rows: every row counts as "positive"
            thresholds.append(fit_threshold(col[rows], col[:0], objective))
        elif objective.kind == "missed":  # the missed rate among the category's refuse rows
            pos_rows = own & y if (own & y).any() else y
            # candidates from the whole column, so the threshold sits just below the kept scores
            thresholds.append(fit_threshold(col[pos_rows], col[:0], objective, scores=col))
        else:  # fpr: recall on the category's refuse rows, FPR on its respond rows
            neg_rows = own & ~y if (own & ~y).any() else ~y
            pos_rows = own & y if (own & y).any() else y
            thresholds.append(
                fit_threshold(col[pos_rows], col[neg_rows], objective, scores=col[pos_rows | neg_rows])
            )
    if objective.kind == "f1" and k > 1:
        thresholds = _best_f1_start(scores, y, thresholds)
    return thresholds


def _best_f1_start(scores: np.ndarray, y: np.ndarray, own_fits: list[float]) -> list[float]:
    """Coordinate ascent from two starts; the one with the higher overall F1 wins.

    Start 1 is each category fitted on its own rows. Those fits are often near 0 (with mostly
    refuse rows, refusing everything is a good F1), and when every category fires on almost every
    row no single threshold can move the decision: a local optimum of "refuse everything". Start 2
    is one shared threshold, fitted on the highest category probability (which is exactly the
    any-category-fires rule with equal thresholds), so the per-category fit is never worse on the
    fitting data than one threshold for all categories. Ties go to start 2 (fewer free choices).
    """
    shared = fit_threshold(scores.max(axis=1)[y], scores.max(axis=1)[~y], Objective("f1"))
    best_f1, best = _coordinate_ascent_f1(scores, y, [shared] * scores.shape[1])
    f1, t = _coordinate_ascent_f1(scores, y, own_fits)
    return t if f1 > best_f1 + TIE_TOLERANCE else best


def _coordinate_ascent_f1(
    scores: np.ndarray, y: np.ndarray, thresholds: list[float], max_sweeps: int = 50
) -> tuple[float, list[float]]:
    """Improve the overall F1 of the any-category-fires rule one category at a time; (F1, thresholds).

    Each step moves one category's threshold to its best value given the others, and is taken
    only when it strictly improves F1, so the search ends; ties keep the current threshold.
    """
    import numpy as np

    n, k = scores.shape
    t = np.array(thresholds, dtype=np.float64)
    fires = scores >= t
    n_pos = int(y.sum())

    def overall_f1(refused: np.ndarray) -> float:
        tp = int((refused & y).sum())
        fp = int((refused & ~y).sum())
        return 2 * tp / (tp + fp + n_pos) if tp + fp + n_pos else 0.0

    current = overall_f1(fires.any(axis=1))
    for _ in range(max_sweeps):
        improved = False
        for c in range(k):
            other = np.delete(fires, c, axis=1).any(axis=1)
            col = scores[:, c]
            cand = candidate_thresholds(col)
            rest = ~other
            tp = int((other & y).sum()) + count_at_least(col[rest & y], cand)
            fp = int((other & ~y).sum()) + count_at_least(col[rest & ~y], cand)
            f1 = objective_scores(tp, fp, n_pos, n - n_pos, Objective("f1"))
            i = best_index(f1)
            if f1[i] > current + TIE_TOLERANCE:
                t[c] = cand[i]
                fires[:, c] = col >= t[c]
                current = float(f1[i])
                improved = True
        if not improved:
            break
    return current, [float(x) for x in t]


def decide(
    records: Iterable[dict[str, Any] | tuple[int, dict[str, Any]]], rule: Thresholds, name: str = "<input>"
) -> Iterator[dict[str, Any]]:
    """Each record (or ``(line, record)`` pair from :func:`rtools.records.read_records`) with
    ``decision`` and ``decision_cat`` set by ``rule``, one at a time: what rt-threshold writes.

    The records are copied, key order kept. Category names of the rule are resolved on the first
    ``p_cat``, which also fixes the slugs every later ``p_cat`` must have. A bad record raises
    RecordError naming ``name`` and its line (its position, for plain records).
    """
    checker = _Checked(rule, name)
    for lineno, r in numbered(records):
        yield checker.decide_record(dict(r), lineno)
