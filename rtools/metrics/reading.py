"""Records -> arrays: :func:`collect` reads rt-metrics' input into an :class:`EvalData`.

One pass over the ``(line_number, record)`` pairs of :func:`rtools.records.read_records` gathers
each field the metrics use into a plain list (the hot loop: a million records take about a second),
then each column is checked and turned into a numpy array. A bad record raises
:class:`~rtools.records.RecordError` naming the file and the line of the first bad value.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from ..records import RecordError
from ..tokens import slugify
from .keys import LABEL_CODES, SCORE_FIELD


@dataclass
class EvalData:
    """Everything rt-metrics needs, as arrays with one entry per record (in input order)."""

    y: np.ndarray  #: bool, gold label is refuse
    pred: np.ndarray | None  #: bool, decision is refuse (None: no decisions were needed)
    score: np.ndarray | None  #: float, p_refuse (None unless every row has one)
    cat: np.ndarray  #: int32 category code, -1 for rows without a category
    categories: list[str]  #: slug of each category code
    lines: np.ndarray  #: int64 input line number of each row (for error messages)
    #: int8 per row: 1 where the slug of decision_cat equals the gold category, else 0 (None: never set)
    cat_match: np.ndarray | None = None
    #: int8 per row: 1 consistent, 0 not, -1 field absent (None: never set)
    consistent: np.ndarray | None = None
    #: per category slug: the scores of that category's rows, in input order (p_cat[slug] or p_refuse)
    cat_scores: dict[str, np.ndarray] = field(default_factory=dict)
    #: per category slug: which field ``cat_scores[slug]`` came from ("p_cat.SLUG" or "p_refuse")
    cat_score_source: dict[str, str] = field(default_factory=dict)
    #: line of the first row without a p_refuse (None when all have one)
    missing_score_line: int | None = None
    #: number of rows with a p_refuse
    scored: int = 0

    @property
    def n(self) -> int:
        return int(self.y.shape[0])


class _SlugIndex(dict):
    """Category name -> integer code; ``slugs[code]`` is the slug. Unknown names are slugified once."""

    def __init__(self, slugs: Sequence[str] = ()) -> None:
        super().__init__()
        self.slugs: list[str] = list(slugs)
        self._codes: dict[str, int] = {slug: code for code, slug in enumerate(self.slugs)}
        self[None] = -1

    def __missing__(self, name: Any) -> int:
        slug = slugify(name)  # ValueError for a non-string
        if slug is None:
            code = -1
        else:
            code = self._codes.get(slug, -1)
            if code < 0:
                code = self._codes[slug] = len(self.slugs)
                self.slugs.append(slug)
        self[name] = code
        return code


def _show(value: Any) -> str:
    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_number(v: Any) -> bool:
    t = type(v)
    return t is float or t is int


@dataclass
class _Columns:
    """The fields rt-metrics reads, one list per field with one entry per record, values unchecked
    (except ``label`` and ``category``, which the reading loop maps to codes)."""

    refuse_gold: list[bool] = field(default_factory=list)
    category_codes: list[int] = field(default_factory=list)
    p_refuse: list[Any] = field(default_factory=list)
    decisions: list[Any] = field(default_factory=list)
    decision_cats: list[Any] = field(default_factory=list)
    consistent: list[Any] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    #: p_cat[slug of the row's own category], None where absent (read only for category scores)
    own_p_cat: list[Any] = field(default_factory=list)
    #: slug of each category code
    slugs: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.refuse_gold)


def _diagnose(record: dict[str, Any], name: str, line: int, exc: Exception) -> RecordError:
    """Explain why the reading loop failed on this record."""
    label = record.get("label")
    if label is None:
        return RecordError(
            'missing "label" (expected "refuse" or "respond")',
            path=name,
            line=line,
            hint="rt-metrics compares decisions with gold labels",
        )
    if not isinstance(label, str) or label not in LABEL_CODES:
        return RecordError(
            f'invalid label {_show(label)}: expected "refuse" or "respond"', path=name, line=line
        )
    category = record.get("category")
    if category is not None and not isinstance(category, str):
        return RecordError(f"invalid category {_show(category)}: expected a string", path=name, line=line)
    return RecordError(f"unexpected record: {exc}", path=name, line=line)


def _read_columns(records: Iterable[tuple[int, dict[str, Any]]], name: str, with_p_cat: bool) -> _Columns:
    """One pass over the records (the hot loop: bound methods in locals, one ``get`` per field)."""
    codes = LABEL_CODES
    category_index = _SlugIndex()
    slugs = category_index.slugs
    columns = _Columns(slugs=slugs)
    add_refuse_gold = columns.refuse_gold.append
    add_category = columns.category_codes.append
    add_p_refuse = columns.p_refuse.append
    add_decision = columns.decisions.append
    add_decision_cat = columns.decision_cats.append
    add_consistent = columns.consistent.append
    add_line = columns.lines.append
    add_own_p_cat = columns.own_p_cat.append
    record: dict[str, Any] = {}
    line = 0
    try:
        for line, record in records:  # noqa: B007 (record and line are used by the error path)
            get = record.get
            add_refuse_gold(codes[get("label")])
            code = category_index[get("category")]
            add_category(code)
            add_p_refuse(get("p_refuse"))
            add_decision(get("decision"))
            add_decision_cat(get("decision_cat"))
            add_consistent(get("consistent"))
            add_line(line)
            if with_p_cat:
                p_cat = get("p_cat")
                if type(p_cat) is dict:
                    add_own_p_cat(p_cat.get(slugs[code]) if code >= 0 else None)
                elif p_cat is None:
                    add_own_p_cat(None)
                else:
                    raise RecordError(
                        f"invalid p_cat {_show(p_cat)}: expected an object {{slug: probability}}",
                        path=name,
                        line=line,
                    )
    except (KeyError, TypeError, ValueError) as e:
        raise _diagnose(record, name, line, e) from None
    return columns


def _probabilities(
    values: list[Any], what: str, name: str, lines: Sequence[int]
) -> tuple[np.ndarray | None, int | None]:
    """Check a column of probabilities: (the array, or None when some are missing; the index of the
    first missing one). A value that is not a number in [0, 1] raises RecordError."""
    types = set(map(type, values))
    if types <= {float, int}:
        array = np.array(values, dtype=np.float64)
        first_missing = None
    else:
        if types - {float, int, type(None)}:
            i = next(i for i, v in enumerate(values) if v is not None and not _is_number(v))
            raise RecordError(
                f"invalid {what} {_show(values[i])}: expected a number in [0, 1]",
                path=name,
                line=int(lines[i]),
            )
        first_missing = values.index(None)
        array = None
    checked = array if array is not None else np.array([v for v in values if v is not None], dtype=np.float64)
    if checked.size and not ((checked >= 0.0) & (checked <= 1.0)).all():
        i = next(i for i, v in enumerate(values) if v is not None and not 0.0 <= v <= 1.0)
        raise RecordError(
            f"invalid {what} {_show(values[i])}: expected a number in [0, 1]", path=name, line=int(lines[i])
        )
    return array, first_missing


def _decisions(
    columns: _Columns, name: str, score: np.ndarray | None, threshold: float | None, need_decision: bool
) -> np.ndarray | None:
    """Refuse decisions: ``score >= threshold`` with a threshold, else the ``decision`` field (None
    when no decision is needed)."""
    if threshold is not None:
        return score >= threshold if score is not None else np.zeros(0, dtype=bool)
    if not need_decision:
        return None
    decisions = np.fromiter(columns.decisions, dtype=object, count=columns.n)
    refuse = np.asarray(decisions == "refuse", dtype=bool)
    known = refuse | np.asarray(decisions == "respond", dtype=bool)
    if not known.all():
        i = int(np.argmin(known))
        value = columns.decisions[i]
        if value is None:
            raise RecordError(
                'missing "decision"',
                path=name,
                line=columns.lines[i],
                hint="run rt-threshold first, or give --threshold T to decide on p_refuse",
            )
        raise RecordError(
            f'invalid decision {_show(value)}: expected "refuse" or "respond"',
            path=name,
            line=columns.lines[i],
        )
    return refuse


def _category_match(columns: _Columns, category: np.ndarray, name: str) -> np.ndarray | None:
    """1 where the slug of ``decision_cat`` is the gold category (None when no row has one)."""
    values = columns.decision_cats
    if values.count(None) == len(values):
        return None
    index = _SlugIndex(columns.slugs)  # the gold categories' codes, plus codes for other slugs
    try:
        decided = np.array([index[v] for v in values], dtype=np.int32)
    except (TypeError, ValueError):
        i = next(i for i, v in enumerate(values) if v is not None and not isinstance(v, str))
        raise RecordError(
            f"invalid decision_cat {_show(values[i])}: expected a category slug or null",
            path=name,
            line=columns.lines[i],
        ) from None
    return ((decided == category) & (category >= 0)).astype(np.int8)


def _consistency(columns: _Columns, name: str) -> np.ndarray | None:
    """1 consistent, 0 not, -1 absent (None when no row has the field)."""
    values = columns.consistent
    if values.count(None) == len(values):
        return None
    if set(map(type, values)) - {bool, type(None)}:
        i = next(i for i, v in enumerate(values) if v is not None and type(v) is not bool)
        raise RecordError(
            f"invalid consistent {_show(values[i])}: expected true or false", path=name, line=columns.lines[i]
        )
    return np.array([-1 if v is None else int(v) for v in values], dtype=np.int8)


def _own_category_scores(
    columns: _Columns, category: np.ndarray, score: np.ndarray, name: str
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Each category's scores, its rows in input order: p_cat[slug] where every row of the category
    has one, else p_refuse; and which field each came from. A p_cat[slug] that is not a number in
    [0, 1] is an error, never a reason to fall back."""
    values = columns.own_p_cat
    types = set(map(type, values))
    if types - {float, int, type(None)}:
        i = next(i for i, v in enumerate(values) if v is not None and not _is_number(v))
        slug = columns.slugs[category[i]]
        raise RecordError(
            f"invalid p_cat.{slug} {_show(values[i])}: expected a number in [0, 1]",
            path=name,
            line=columns.lines[i],
        )
    own = np.array(values, dtype=np.float64)  # None -> NaN
    out_of_range = (own < 0.0) | (own > 1.0)
    if out_of_range.any():
        i = int(np.argmax(out_of_range))
        raise RecordError(
            f"invalid p_cat.{columns.slugs[category[i]]} {_show(values[i])}: expected a number in [0, 1]",
            path=name,
            line=columns.lines[i],
        )
    scores: dict[str, np.ndarray] = {}
    sources: dict[str, str] = {}
    for code, slug in enumerate(columns.slugs):
        rows = np.flatnonzero(category == code)
        mine = own[rows]
        if not np.isnan(mine).any():
            scores[slug], sources[slug] = mine, f"p_cat.{slug}"
        else:
            scores[slug], sources[slug] = score[rows], SCORE_FIELD
    return scores, sources


def collect(
    records: Iterable[tuple[int, dict[str, Any]]],
    name: str = "<stdin>",
    *,
    threshold: float | None = None,
    need_decision: bool = True,
    need_scores: bool = False,
    category_scores: bool = False,
    need_hint: str = "",
) -> EvalData:
    """Read every record into arrays.

    ``threshold``: decide ``p_refuse >= threshold`` (ignoring any ``decision`` field).
    ``need_decision``: every row needs a decision (or ``threshold``).
    ``need_scores``: every row needs ``p_refuse`` (``need_hint`` names the option that needs it).
    ``category_scores``: also read ``p_cat[slug]`` for each row's own category (for calibration per
    category, sweeps and plots).
    """
    columns = _read_columns(records, name, category_scores)
    n = columns.n
    category = np.array(columns.category_codes, dtype=np.int32)

    score, first_missing = _probabilities(columns.p_refuse, SCORE_FIELD, name, columns.lines)
    missing_line = None if first_missing is None else columns.lines[first_missing]
    if missing_line is not None and (need_scores or threshold is not None):
        why = f"--threshold {threshold:g} decides on it" if threshold is not None else need_hint
        raise RecordError(
            f'missing "{SCORE_FIELD}"' + (f" ({why})" if why else ""),
            path=name,
            line=missing_line,
            hint="run rt-score first",
        )
    pred = _decisions(columns, name, score, threshold, need_decision)
    cat_match = _category_match(columns, category, name)
    consistent = _consistency(columns, name)
    cat_scores: dict[str, np.ndarray] = {}
    cat_score_source: dict[str, str] = {}
    if category_scores and score is not None:
        cat_scores, cat_score_source = _own_category_scores(columns, category, score, name)

    return EvalData(
        y=np.array(columns.refuse_gold, dtype=bool),
        pred=pred,
        score=score,
        cat=category,
        categories=list(columns.slugs),
        lines=np.array(columns.lines, dtype=np.int64),
        cat_match=cat_match,
        consistent=consistent,
        cat_scores=cat_scores,
        cat_score_source=cat_score_source,
        missing_score_line=missing_line,
        scored=n - columns.p_refuse.count(None),
    )
