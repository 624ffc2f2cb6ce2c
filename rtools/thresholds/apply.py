"""Applying a rule to records: rt-threshold's stream (:func:`apply_stream`) and the library's :func:`decide`.

The reference is the checked path: each line read by :func:`rtools.records.parse_line`, decided by
:meth:`Thresholds.decide` (which checks every field it reads, so a bad record is an error naming the
file and line) and written by :func:`rtools.records.dumps`. The fast path reads a chunk of lines at a
time (:func:`rtools.records.rewrite_chunk`: one orjson call reads the chunk, one per record writes it,
one write per chunk) and decides with a function written for the common record (float probabilities
in [0, 1], a p_cat with the categories of the first p_cat) that raises on anything else; then the
whole chunk goes through the checked path. So the fast path writes the reference's bytes or none at
all (``tests/test_thresholds_rules.py`` holds the two equal).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import IO, Any

from ..records import (
    STDOUT_NAME,
    RecordError,
    dumps,
    iter_chunks,
    naming,
    numbered,
    parse_line,
    rewrite_chunk,
)
from .calibration import raw_view
from .rules import REFUSE, RESPOND, category_rule, get_p_cat, own_rule
from .spec import Thresholds


def apply_stream(
    stream: IO[bytes],
    name: str,
    out: IO[bytes],
    rule: Thresholds,
    unbuffered: bool = False,
    out_name: str = STDOUT_NAME,
) -> int:
    """Add ``decision``/``decision_cat`` to every record of ``stream``; write JSONL to ``out``.

    Records keep every other field and their key order. They are read as they arrive and written a
    chunk at a time (``unbuffered``: flushed after each chunk, so a record from a slow pipe comes out
    as soon as it is decided). A bad record raises RecordError with the file and line after every
    earlier record has been written; an error writing ``out`` names it as ``out_name``. Returns the
    number of records written.
    """
    applier = _Applier(rule, name)
    count = 0
    with naming(out_name):
        try:
            for chunk in iter_chunks(stream):
                data, n, error = applier.chunk(chunk if chunk.endswith(b"\n") else chunk + b"\n")
                if data:
                    out.write(data)
                    if unbuffered:
                        out.flush()
                count += n
                if error is not None:
                    raise error
        finally:
            out.flush()
    return count


class _Applier:
    """Decides chunks of lines: the fast path, else the checked path line by line.

    The checked path resolves --cat names on the first p_cat seen, which also fixes the set of
    category slugs: a later record whose p_cat has another set (a slug the scores never had, or one
    missing) is an error with its file and line, so a stray slug can never win decision_cat.
    """

    def __init__(self, rule: Thresholds, name: str):
        self.rule = rule
        self.name = name
        self.lineno = 0  # lines read so far
        self.slugs: frozenset[str] | None = None
        self.first: list[str] = []
        self.resolved = rule.mode != "category"
        self.fast: Any = self._fast_rule()

    def _fast_rule(self) -> Any:
        if not self.resolved:
            return _unresolved
        if self.rule.calibration is not None:  # calibrated scores: the checked path, a chunk at a time
            return self._checked_records
        return _fast_rule(self.rule, self.slugs)

    def _checked_records(self, records: list[dict[str, Any]]) -> None:
        for r in records:  # an error, position unknown here, sends the chunk to the line-by-line path
            self.decide_record(r, 0)

    def chunk(self, chunk: bytes) -> tuple[bytes, int, RecordError | None]:
        """The output for ``chunk`` (complete lines) and the number of records in it; or, for a chunk
        with a bad record, the output before it, their number and the record's error."""
        done = rewrite_chunk(chunk, self.fast)
        if done is not None:
            self.lineno += done[1]
            return done[0], done[1], None
        lines = chunk.split(b"\n")
        lines.pop()  # after the last newline
        out: list[bytes] = []
        for line in lines:
            self.lineno += 1
            try:
                r = parse_line(line, self.name, self.lineno)
                if r is not None:
                    out.append(dumps(self.decide_record(r, self.lineno)))
            except RecordError as e:
                return b"".join(out), len(out), e
        return b"".join(out), len(out), None

    def check_slugs(self, pc: Mapping[str, Any]) -> None:
        if self.slugs is None:
            self.slugs = frozenset(pc)
            self.first = list(pc)
            self.fast = self._fast_rule()
        elif pc.keys() != self.slugs:
            check_slug_set(self.first, pc)

    def decide_record(self, r: dict[str, Any], lineno: int) -> dict[str, Any]:
        """Set decision/decision_cat on ``r`` by the checked rule; RecordError with the file and line."""
        try:
            if not self.resolved:
                pc = get_p_cat(r, required=True)
                assert pc is not None
                self.rule = self.rule.resolve(pc)
                self.resolved = True
                self.fast = self._fast_rule()
            calibration = self.rule.calibration
            if calibration is None:
                r["decision"], r["decision_cat"] = self.rule.decide_scores(r)
            elif self.rule.mode == "own":  # the model's own choice, on its raw scores
                decision = self.rule.decide_scores(raw_view(r))
                calibration.apply(r)
                r["decision"], r["decision_cat"] = decision
            else:
                calibration.apply(r)
                r["decision"], r["decision_cat"] = self.rule.decide_scores(r)
            pc = r.get("p_cat")
            if isinstance(pc, dict) and pc:
                self.check_slugs(pc)
        except RecordError as e:
            raise RecordError(e.message, path=self.name, line=lineno, hint=e.hint) from None
        return r


def decide(
    records: Iterable[dict[str, Any] | tuple[int, dict[str, Any]]], rule: Thresholds, name: str = "<input>"
) -> Iterator[dict[str, Any]]:
    """Each record (or ``(line, record)`` pair from :func:`rtools.records.read_records`) with
    ``decision`` and ``decision_cat`` set by ``rule``, one at a time: what rt-threshold writes.

    The records are copied, key order kept. Category names of the rule are resolved on the first
    ``p_cat``, which also fixes the slugs every later ``p_cat`` must have. A bad record raises
    RecordError naming ``name`` and its line (its position, for plain records).
    """
    applier = _Applier(rule, name)
    for lineno, r in numbered(records):
        r = dict(r)
        if rule.calibration is None:
            try:  # the fast path first: it sets the fields only when it decides
                applier.fast([r])
                yield r
                continue
            except Exception:
                pass
        yield applier.decide_record(r, lineno)


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


# ---------------------------------------------------------------------------
# The fast path: one function per rule, deciding a list of common records or raising.


def _unresolved(records: list[dict[str, Any]]) -> None:
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
    """A function that sets decision/decision_cat on each of a list of common records, or raises on
    anything else.

    The own-choice and per-category paths decide by the rule functions :meth:`Thresholds.decide`
    calls (``own_rule``, ``category_rule``); the global path, rt-threshold's hot loop, is
    ``global_rule`` written inline with its checks. Only the checks differ: the common record (float
    probabilities in [0, 1], a p_cat with the slugs ``slugs``, fixed by the first p_cat seen) passes,
    anything else raises, and the records go to the checked path, which gives the same decisions
    or the error with its file and line (``tests/test_thresholds_rules.py`` checks the two agree).
    """
    prob = _fast_probability
    p_cat = _fast_p_cat
    refuse, respond = REFUSE, RESPOND
    float_ = float
    if rule.mode == "global":
        t = rule.threshold
        k = len(slugs) if slugs is not None else -1

        def fast_global(records: list[dict[str, Any]]) -> None:
            # global_rule with the checks of the common record in one pass (the hot path of
            # rt-threshold --threshold T; bench/bench_threshold.py), property-tested equal to decide()
            for r in records:
                p = r["p_refuse"]
                if p.__class__ is not float_ or not 0.0 <= p <= 1.0:
                    raise ValueError
                pc = r.get("p_cat")
                if p < t:
                    if pc is not None and pc.keys() != slugs:
                        raise ValueError
                    r["decision"] = respond
                    r["decision_cat"] = None
                    continue
                best = None
                if pc is not None:
                    if len(pc) != k:  # and each slug one of the k below: the same set
                        raise ValueError
                    best_p = -1.0
                    for slug, q in pc.items():
                        if q.__class__ is not float_ or not 0.0 <= q <= 1.0 or slug not in slugs:
                            raise ValueError
                        if q > best_p:
                            best, best_p = slug, q
                r["decision"] = refuse
                r["decision_cat"] = best

        return fast_global

    if rule.mode == "own":

        def fast_own(records: list[dict[str, Any]]) -> None:
            for r in records:
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

    def fast_category(records: list[dict[str, Any]]) -> None:
        for r in records:
            pc = p_cat(r["p_cat"], slugs)  # also every named category (resolved on the first p_cat)
            q = prob(r["p_respond"]) if need_respond else None
            r["decision"], r["decision_cat"] = category_rule(pc, ts, default, q)

    return fast_category
