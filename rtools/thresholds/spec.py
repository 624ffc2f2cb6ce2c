"""``Thresholds``: the decision rule that --threshold, --cat and --thresholds FILE configure, and the
thresholds file format (``{"threshold": T}`` or ``{"categories": {SLUG: T}, "default": T}`` plus what
was fitted), read strictly: a value out of range, a key given twice, or two names of one category is
an error naming the file.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..config import BadValue, ConfigError, parse_number, parse_pair
from ..records import RecordError, atomic_write_json, json_type, read_json_file
from ..shipped import DEFAULT_THRESHOLDS, default_thresholds_path
from ..tokens import slugify
from .calibration import Calibration, raw_view
from .objectives import Objective
from .rules import (
    DEFAULT_KEY,
    Decision,
    category_rule,
    check_threshold,
    get_p_cat,
    get_probability,
    global_rule,
    own_rule,
)


@dataclass(frozen=True)
class Thresholds:
    """A configured decision rule plus free-form metadata; frozen (:meth:`from_flags` checks flags).

    ``threshold`` set: global rule. Else ``categories`` / ``default`` set: per-category rule
    (names are resolved to the slugs of ``p_cat`` by :meth:`resolve`). Neither: own choice.
    ``calibration``: scores are calibrated before the thresholds apply (the own choice is the
    model's, made on the raw scores).
    """

    threshold: float | None = None
    categories: dict[str, float] = field(default_factory=dict)
    default: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    calibration: Calibration | None = None
    #: What a fit has to say about its answer (a degenerate threshold), one line each; not saved.
    notes: tuple[str, ...] = field(default=(), compare=False, repr=False)

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
        if self.calibration is not None:
            d["calibration"] = self.calibration.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Any) -> Thresholds:
        """Parse ``{"threshold": T}`` or ``{"categories": {...}, "default": T}``, and/or
        ``{"calibration": {...}}`` (+ metadata)."""
        if not isinstance(d, dict):
            raise ValueError(f"expected a JSON object, got {json_type(d)}")
        if "threshold" in d and ("categories" in d or "default" in d):
            raise ValueError('give either "threshold" or "categories"/"default", not both')
        calibration = Calibration.from_dict(d["calibration"]) if "calibration" in d else None
        if "threshold" not in d and "categories" not in d and "default" not in d:
            if calibration is not None:
                return cls(calibration=calibration, meta=_meta(d))
            raise ValueError('expected "threshold": T or "categories": {slug: T, ...}')
        meta = _meta(d)
        if "threshold" in d:
            return cls(
                threshold=check_threshold(d["threshold"], "threshold"), meta=meta, calibration=calibration
            )
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
        return cls(categories=categories, default=default, meta=meta, calibration=calibration)

    @classmethod
    def load(cls, path: str) -> Thresholds:
        """The thresholds file ``path``; the name ``default`` (rtools.shipped.DEFAULT_THRESHOLDS) is the
        shipped scorer's, checked against its SHA256SUMS first (a file named default is ./default)."""
        if path == DEFAULT_THRESHOLDS:
            try:
                path = default_thresholds_path()
            except (OSError, ValueError) as e:
                raise RecordError(
                    f"-T default: the shipped scorer's thresholds cannot be used: {e}",
                    hint="reinstall rtools, or give a thresholds file",
                ) from None
        data = read_json_file(path, "a thresholds JSON file", unique_keys=True)
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
                raise BadValue(str(e), "threshold") from None
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
        return Thresholds(
            categories=resolved, default=self.default, meta=self.meta, calibration=self.calibration
        )

    def decide(self, record: Mapping[str, Any]) -> Decision:
        """The decision for one record, checking the fields the rule reads (RecordError). With a
        calibration, the thresholds apply to the calibrated scores and the own choice is made on the
        raw ones; ``record`` is not changed (:func:`rtools.thresholds.decide` rewrites the fields)."""
        if self.calibration is None:
            return self.decide_scores(record)
        if self.mode == "own":
            return self.decide_scores(raw_view(record))
        return self.decide_scores(self.calibration.applied(record))

    def decide_scores(self, record: Mapping[str, Any]) -> Decision:
        """The decision for one record's scores as they are (no calibration), checking the fields read."""
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


def _meta(d: dict[str, Any]) -> dict[str, Any]:
    """The metadata of a thresholds file: every key but the rule's and the calibration."""
    return {k: v for k, v in d.items() if k not in ("threshold", "categories", "default", "calibration")}


def _slug_or_none(name: str) -> str | None:
    try:
        return slugify(name)
    except ValueError:
        return None


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
    """``--cat`` values -> ``{name: T}``; BadValue (of ``cats``) for a malformed value or a category given twice
    (also under two names: ``safety`` and ``Safety``)."""
    cats: dict[str, float] = {}
    for value in values:
        try:
            name, t = parse_cat_option(value)
        except ValueError as e:
            raise BadValue(str(e), "cats") from None
        if name in cats:
            raise BadValue(f"{name!r} is given twice", "cats")
        same = next((other for other in cats if same_category(other, name)), None)
        if same is not None:
            raise BadValue(f"{same!r} and {name!r} are the same category: give it one threshold", "cats")
        cats[name] = t
    return cats
