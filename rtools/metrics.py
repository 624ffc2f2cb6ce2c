"""The metrics core: records -> arrays -> confusion counts, rates, ranking metrics, sweeps, bootstrap.

Pure functions over numpy arrays, plus :func:`collect`, which turns an iterator of
``(line_number, record)`` pairs (from :func:`rtools.records.read_records`) into an
:class:`EvalData` and raises :class:`~rtools.records.RecordError` with the file and line of
the first bad record.

Conventions:

* the positive class is *refuse*: ``y`` is True where the gold ``label`` is ``"refuse"`` and
  ``pred`` is True where the decision is ``"refuse"``;
* a ratio whose denominator is 0 is ``None`` (JSON ``null``), never NaN;
* AUROC and AUPRC come from scikit-learn (imported lazily); they are ``None`` unless both
  classes occur. The vectorised weighted versions used by the bootstrap
  (:func:`weighted_auroc`, :func:`weighted_auprc`) agree with scikit-learn's
  ``sample_weight`` results.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from .config import ConfigError, parse_number, parse_pair
from .rates import Counts, counts_and_rates, rates, ratio  # noqa: F401 (re-exported)
from .records import RecordError, numbered
from .tokens import slugify

#: Keys of every summary (overall and per category), in documentation order.
COUNT_KEYS: tuple[str, ...] = ("n", "tp", "fp", "tn", "fn")
RATE_KEYS: tuple[str, ...] = (
    "precision",
    "recall",
    "f1",
    "accuracy",
    "refusal_rate",
    "false_refusal_rate",
    "missed_refusal_rate",
)
#: Present when every row has p_refuse (value null unless both classes occur).
SCORE_KEYS: tuple[str, ...] = ("auroc", "auprc")
#: Present when some record has a non-null ``decision_cat`` / ``consistent``.
OPTIONAL_KEYS: tuple[str, ...] = ("category_accuracy", "agreement_rate")
#: Every numeric summary key: the metrics a gate (--fail-under/--fail-over) may name.
METRICS: tuple[str, ...] = COUNT_KEYS + RATE_KEYS + SCORE_KEYS + OPTIONAL_KEYS
#: Metrics that get a bootstrap confidence interval.
CI_METRICS: tuple[str, ...] = (
    "f1",
    "precision",
    "recall",
    "false_refusal_rate",
    "missed_refusal_rate",
    "refusal_rate",
    "accuracy",
    "auroc",
    "auprc",
)
#: Columns of a --sweep row.
SWEEP_KEYS: tuple[str, ...] = (
    "category",
    "score",
    "threshold",
    "n",
    "tp",
    "fp",
    "tn",
    "fn",
    "refusal_rate",
    "tpr",
    "fpr",
    "precision",
    "f1",
)

LABEL_CODES: dict[str, bool] = {"refuse": True, "respond": False}
SCORE_FIELD = "p_refuse"


# ---------------------------------------------------------------------------
# Records -> arrays.


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
    #: per category slug: the scores to sweep/plot that category on (p_cat[slug] or p_refuse)
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

    def __init__(self) -> None:
        super().__init__()
        self.slugs: list[str] = []
        self._codes: dict[str, int] = {}
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


def _diagnose(rec: dict[str, Any], name: str, lineno: int, exc: Exception) -> RecordError:
    """Explain why the fast loop failed on this record."""
    label = rec.get("label")
    if label is None:
        return RecordError(
            'missing "label" (expected "refuse" or "respond")',
            path=name,
            line=lineno,
            hint="rt-metrics compares decisions with gold labels",
        )
    if not isinstance(label, str) or label not in LABEL_CODES:
        return RecordError(
            f'invalid label {_show(label)}: expected "refuse" or "respond"', path=name, line=lineno
        )
    category = rec.get("category")
    if category is not None and not isinstance(category, str):
        return RecordError(f"invalid category {_show(category)}: expected a string", path=name, line=lineno)
    return RecordError(f"unexpected record: {exc}", path=name, line=lineno)


def _is_number(v: Any) -> bool:
    t = type(v)
    return t is float or t is int


def _scores(
    values: list[Any], what: str, name: str, lines: Sequence[int]
) -> tuple[np.ndarray | None, int | None]:
    """Validate a column of probabilities. Returns (array or None when some are missing, first missing index)."""
    types = set(map(type, values))
    if types <= {float, int}:
        arr = np.array(values, dtype=np.float64)
        first_missing = None
    else:
        bad = types - {float, int, type(None)}
        if bad:
            i = next(i for i, v in enumerate(values) if v is not None and not _is_number(v))
            raise RecordError(
                f"invalid {what} {_show(values[i])}: expected a number in [0, 1]",
                path=name,
                line=int(lines[i]),
            )
        first_missing = next(i for i, v in enumerate(values) if v is None)
        arr = None
    checked = arr if arr is not None else np.array([v for v in values if v is not None], dtype=np.float64)
    if checked.size and not ((checked >= 0.0) & (checked <= 1.0)).all():
        i = next(i for i, v in enumerate(values) if v is not None and not 0.0 <= v <= 1.0)
        raise RecordError(
            f"invalid {what} {_show(values[i])}: expected a number in [0, 1]", path=name, line=int(lines[i])
        )
    return arr, first_missing


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
    ``category_scores``: also collect ``p_cat[slug]`` for each row's own category (for sweeps and plots).
    """
    labels = LABEL_CODES
    slug_ix = _SlugIndex()
    slugs = slug_ix.slugs
    y_l: list[bool] = []
    c_l: list[int] = []
    s_l: list[Any] = []
    d_l: list[Any] = []
    dc_l: list[Any] = []
    co_l: list[Any] = []
    ln_l: list[int] = []
    pc_l: list[Any] = []
    y_add, c_add, s_add, d_add = y_l.append, c_l.append, s_l.append, d_l.append
    dc_add, co_add, ln_add, pc_add = dc_l.append, co_l.append, ln_l.append, pc_l.append
    rec: dict[str, Any] = {}
    lineno = 0
    try:
        for lineno, rec in records:  # noqa: B007 (rec and lineno are used by the error path)
            g = rec.get
            y_add(labels[g("label")])
            code = slug_ix[g("category")]
            c_add(code)
            s_add(g("p_refuse"))
            d_add(g("decision"))
            dc_add(g("decision_cat"))
            co_add(g("consistent"))
            ln_add(lineno)
            if category_scores:
                pc = g("p_cat")
                if type(pc) is dict:
                    pc_add(pc.get(slugs[code]) if code >= 0 else None)
                elif pc is None:
                    pc_add(None)
                else:
                    raise RecordError(
                        f"invalid p_cat {_show(pc)}: expected an object {{slug: probability}}",
                        path=name,
                        line=lineno,
                    )
    except (KeyError, TypeError, ValueError) as e:
        raise _diagnose(rec, name, lineno, e) from None

    n = len(y_l)
    lines = np.array(ln_l, dtype=np.int64)
    y = np.array(y_l, dtype=bool)
    cat = np.array(c_l, dtype=np.int32)

    score, first_missing = _scores(s_l, SCORE_FIELD, name, ln_l)
    missing_line = None if first_missing is None else ln_l[first_missing]
    if missing_line is not None and (need_scores or threshold is not None):
        why = f"--threshold {threshold:g} decides on it" if threshold is not None else need_hint
        raise RecordError(
            f'missing "{SCORE_FIELD}"' + (f" ({why})" if why else ""),
            path=name,
            line=missing_line,
            hint="run rt-score first",
        )

    pred: np.ndarray | None = None
    if threshold is not None:
        assert score is not None or n == 0
        pred = score >= threshold if score is not None else np.zeros(0, dtype=bool)
    elif need_decision:
        dec = np.fromiter(d_l, dtype=object, count=n)
        pred = np.asarray(dec == "refuse", dtype=bool)
        ok = pred | np.asarray(dec == "respond", dtype=bool)
        if not ok.all():
            i = int(np.argmin(ok))
            if d_l[i] is None:
                raise RecordError(
                    'missing "decision"',
                    path=name,
                    line=ln_l[i],
                    hint="run rt-threshold first, or give --threshold T to decide on p_refuse",
                )
            raise RecordError(
                f'invalid decision {_show(d_l[i])}: expected "refuse" or "respond"', path=name, line=ln_l[i]
            )

    cat_match = None
    if dc_l.count(None) != n:
        dc_ix = _SlugIndex()
        dc_ix.slugs = list(slugs)
        dc_ix._codes = {s: i for i, s in enumerate(slugs)}
        try:
            dc_codes = [dc_ix[v] for v in dc_l]
        except (TypeError, ValueError):
            i = next(i for i, v in enumerate(dc_l) if v is not None and not isinstance(v, str))
            raise RecordError(
                f"invalid decision_cat {_show(dc_l[i])}: expected a category slug or null",
                path=name,
                line=ln_l[i],
            ) from None
        dc = np.array(dc_codes, dtype=np.int32)
        cat_match = ((dc == cat) & (cat >= 0)).astype(np.int8)

    consistent = None
    if co_l.count(None) != n:
        kinds = set(map(type, co_l)) - {bool, type(None)}
        if kinds:
            i = next(i for i, v in enumerate(co_l) if v is not None and type(v) is not bool)
            raise RecordError(
                f"invalid consistent {_show(co_l[i])}: expected true or false", path=name, line=ln_l[i]
            )
        consistent = np.array([-1 if v is None else int(v) for v in co_l], dtype=np.int8)

    cat_scores: dict[str, np.ndarray] = {}
    cat_score_source: dict[str, str] = {}
    if category_scores and score is not None:
        for code, slug in enumerate(slugs):
            rows = np.flatnonzero(cat == code)
            own = [pc_l[i] for i in rows]
            for i, v in zip(rows, own, strict=True):
                if v is not None and not _is_number(v):  # a bad value is an error, never a fallback
                    raise RecordError(
                        f"invalid p_cat.{slug} {_show(v)}: expected a number in [0, 1]",
                        path=name,
                        line=int(ln_l[i]),
                    )
            if own and all(_is_number(v) for v in own):
                arr, _ = _scores(own, f"p_cat.{slug}", name, [ln_l[i] for i in rows])
                assert arr is not None
                cat_scores[slug] = arr
                cat_score_source[slug] = f"p_cat.{slug}"
            else:
                cat_scores[slug] = score[rows]
                cat_score_source[slug] = SCORE_FIELD

    return EvalData(
        y=y,
        pred=pred,
        score=score,
        cat=cat,
        categories=list(slugs),
        lines=lines,
        cat_match=cat_match,
        consistent=consistent,
        cat_scores=cat_scores,
        cat_score_source=cat_score_source,
        missing_score_line=missing_line,
        scored=n - s_l.count(None),
    )


# ---------------------------------------------------------------------------
# What to measure: the options, checked once.


@dataclass(frozen=True)
class MetricsOptions:
    """What rt-metrics computes (frozen; checked when built: a bad value or a combination that would
    ignore an option raises ConfigError naming the option).

    ``threshold``: decide ``p_refuse >= T`` instead of reading ``decision``. ``sweep``: rows per
    threshold instead of a summary (``sweep_points``: N evenly spaced, or ``"all"``). ``plot``: a PNG
    path. ``bootstrap``: N resamples for ``ci`` intervals at level ``ci``, seeded by ``seed``.
    ``gates``: :class:`Gate` checks of the summary.
    """

    threshold: float | None = None
    sweep: bool = False
    sweep_points: int | str = 101
    plot: str | None = None
    bootstrap: int = 0
    seed: int = 0
    ci: float = 0.95
    gates: tuple[Gate, ...] = ()

    def __post_init__(self) -> None:
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:  # also NaN
            raise ConfigError(f"{self.threshold} is not in [0, 1]", option="--threshold")
        if self.sweep_points != "all" and (not isinstance(self.sweep_points, int) or self.sweep_points < 2):
            raise ConfigError(
                f"a sweep needs at least 2 points, got {self.sweep_points}", option="--sweep-points"
            )
        if self.bootstrap < 0:
            raise ConfigError(f"{self.bootstrap} is negative", option="--bootstrap")
        if not 0.0 < self.ci < 1.0:
            raise ConfigError(f"{self.ci} is not in (0, 1)", option="--ci")
        if self.sweep:
            if self.gates:
                raise ConfigError(
                    "--fail-under/--fail-over check the summary; they do not combine with --sweep"
                )
            if self.bootstrap:
                raise ConfigError(
                    "--bootstrap adds intervals to the summary; it does not combine with --sweep"
                )
            if self.threshold is not None:
                raise ConfigError(
                    "--threshold decides at one threshold and --sweep tries them all: give one of them"
                )


def load(records: Iterable[Any], options: MetricsOptions, name: str = "<input>") -> EvalData:
    """Read every record (or ``(line, record)`` pair) into the arrays ``options`` needs."""
    needs = "--sweep needs it" if options.sweep else "--plot needs it" if options.plot else ""
    return collect(
        numbered(records),
        name,
        threshold=options.threshold,
        need_decision=not options.sweep,
        need_scores=bool(needs),
        category_scores=bool(options.sweep or options.plot),
        need_hint=needs,
    )


def threshold_sweep(
    records: EvalData | Iterable[Any], points: int | str = 101, name: str = "<input>"
) -> list[dict[str, Any]]:
    """The ``rt-metrics --sweep`` rows: per threshold on p_refuse for all rows (category None), then on
    each category's own rows (p_cat[slug] when every row of it has one, else p_refuse)."""
    data = records if isinstance(records, EvalData) else load(records, MetricsOptions(sweep=True), name)
    groups: list[tuple[str | None, str, Any, Any]] = []
    if data.n:
        groups.append((None, SCORE_FIELD, data.y, data.score))
    for code, slug in sorted(enumerate(data.categories), key=lambda t: t[1]):
        groups.append((slug, data.cat_score_source[slug], data.y[data.cat == code], data.cat_scores[slug]))
    rows: list[dict[str, Any]] = []
    for category, score_name, y, score in groups:
        rows.extend(sweep_rows(sweep(y, score, threshold_grid(points, score)), category, score_name))
    return rows


def plot(path: str, data: EvalData, title: str) -> None:
    """The ``--plot`` PNG: ROC curves and refusal rates by threshold, overall and per category."""
    from .plots import Curve, plot_curves

    curves = [Curve("all", data.y, data.score if data.score is not None else data.y[:0])]
    for slug in sorted(data.cat_scores):
        rows_of = data.cat == data.categories.index(slug)
        curves.append(
            Curve(f"{slug} ({data.cat_score_source[slug]})", data.y[rows_of], data.cat_scores[slug])
        )
    plot_curves(path, curves, title=title)


# ---------------------------------------------------------------------------
# Point metrics.


def confusion(y: np.ndarray, pred: np.ndarray) -> Counts:
    """Confusion counts with refuse as the positive class."""
    y = np.asarray(y, dtype=bool)
    pred = np.asarray(pred, dtype=bool)
    n = int(y.shape[0])
    pos = int(np.count_nonzero(y))
    called = int(np.count_nonzero(pred))
    tp = int(np.count_nonzero(y & pred))
    fp = called - tp
    fn = pos - tp
    return Counts(tp=tp, fp=fp, tn=n - tp - fp - fn, fn=fn)


def _both_classes(y: np.ndarray) -> bool:
    pos = int(np.count_nonzero(y))
    return 0 < pos < y.shape[0]


def auroc(y: Sequence[Any] | np.ndarray, score: Sequence[float] | np.ndarray) -> float | None:
    """Area under the ROC curve (scikit-learn), None unless both classes occur: the one AUROC of
    rtools (rt-metrics, rt-lora's evaluation). ``y``: True/1 = gold refuse."""
    y = np.asarray(y, dtype=bool)
    if not _both_classes(y):
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.asarray(y, dtype=np.int8), score))


def auprc(y: Sequence[Any] | np.ndarray, score: Sequence[float] | np.ndarray) -> float | None:
    """Average precision (scikit-learn's area under the precision-recall curve), None unless both classes occur."""
    y = np.asarray(y, dtype=bool)
    if not _both_classes(y):
        return None
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(np.asarray(y, dtype=np.int8), score))


def summarize_rows(
    y: np.ndarray,
    pred: np.ndarray,
    score: np.ndarray | None = None,
    cat_match: np.ndarray | None = None,
    consistent: np.ndarray | None = None,
) -> dict[str, Any]:
    """One summary (no ``by_category``) for the given rows."""
    out = counts_and_rates(confusion(y, pred))
    if score is not None and out["n"]:
        out["auroc"] = auroc(y, score)
        out["auprc"] = auprc(y, score)
    if cat_match is not None:
        hits = np.asarray(y, dtype=bool) & np.asarray(pred, dtype=bool)
        out["category_accuracy"] = ratio(int(np.count_nonzero(cat_match[hits])), int(np.count_nonzero(hits)))
    if consistent is not None:
        known = consistent >= 0
        out["agreement_rate"] = ratio(int(np.count_nonzero(consistent == 1)), int(np.count_nonzero(known)))
    return out


def _rows_summary(data: EvalData, rows: np.ndarray | None) -> dict[str, Any]:
    """:func:`summarize_rows` of some rows of ``data`` (None: all)."""
    assert data.pred is not None

    def take(a: np.ndarray | None) -> np.ndarray | None:
        return a if a is None or rows is None else a[rows]

    return summarize_rows(
        take(data.y), take(data.pred), take(data.score), take(data.cat_match), take(data.consistent)
    )  # type: ignore[arg-type]


def _rows_ci(data: EvalData, rows: np.ndarray | None, options: MetricsOptions) -> dict[str, Any]:
    """:func:`bootstrap_ci` of some rows of ``data`` (None: all), resampled from those rows alone."""
    assert data.pred is not None
    pick = (lambda a: a) if rows is None else (lambda a: a[rows])
    return bootstrap_ci(
        pick(data.y),
        pick(data.pred),
        None if data.score is None else pick(data.score),
        options.bootstrap,
        seed=options.seed,
        ci=options.ci,
    )


def summarize(
    records: EvalData | Iterable[Any],
    options: MetricsOptions | None = None,
    *,
    name: str = "<input>",
    **fields: Any,
) -> dict[str, Any]:
    """The rt-metrics summary: overall keys plus ``by_category`` {slug: same keys}.

    ``records``: labelled records with decisions (or ``(line, record)`` pairs from
    :func:`rtools.records.read_records`), or an :class:`EvalData`. ``options`` (or its fields as
    keywords: ``threshold=T``, ``bootstrap=N``, ``seed``, ``ci``): a :class:`MetricsOptions`.
    Reads every record first. A bad record raises RecordError naming ``name`` and its line.
    """
    options = options if options is not None else MetricsOptions(**fields)
    data = records if isinstance(records, EvalData) else load(records, options, name)
    if data.pred is None:
        raise ValueError("summarize needs decisions")
    out = _rows_summary(data, None)
    out["by_category"] = {slug: _rows_summary(data, rows) for slug, rows in category_rows(data).items()}
    if options.threshold is not None:
        out["threshold"] = options.threshold
    if options.bootstrap:
        out["ci"] = _rows_ci(data, None, options)
        for slug, rows in category_rows(data).items():  # each category resampled on its own rows
            out["by_category"][slug]["ci"] = _rows_ci(data, rows, options)
    return out


def no_category_summary(data: EvalData, options: MetricsOptions) -> dict[str, Any] | None:
    """The summary of the rows without a category, when others have one (the table's last row)."""
    rows = np.flatnonzero(data.cat < 0)
    if not data.categories or not rows.size:  # without any category the row would repeat "all"
        return None
    out = _rows_summary(data, rows)
    if options.bootstrap:
        out["ci"] = _rows_ci(data, rows, options)
    return out


def category_rows(data: EvalData) -> dict[str, np.ndarray]:
    """{slug: indices of the rows of that gold category}, in input order within each category."""
    if not data.categories:
        return {}
    order = np.argsort(data.cat, kind="stable")
    bounds = np.searchsorted(data.cat[order], np.arange(len(data.categories) + 1))
    return {slug: order[bounds[code] : bounds[code + 1]] for code, slug in enumerate(data.categories)}


# ---------------------------------------------------------------------------
# Threshold sweeps.


def threshold_grid(points: int | str, score: np.ndarray | None = None) -> np.ndarray:
    """``points`` evenly spaced thresholds in [0, 1] (i/(points-1)), or the distinct scores for ``"all"``."""
    if points == "all":
        if score is None:
            raise ValueError('threshold_grid("all") needs scores')
        return np.unique(score)
    k = int(points)
    if k < 2:
        raise ValueError("a sweep needs at least 2 points")
    return np.arange(k, dtype=np.float64) / (k - 1)


def _vdiv(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Elementwise ``num / den`` with NaN where ``den`` is 0."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def sweep(y: np.ndarray, score: np.ndarray, thresholds: np.ndarray) -> dict[str, np.ndarray]:
    """Counts and rates at each threshold (decision: score >= threshold). NaN marks 0/0."""
    y = np.asarray(y, dtype=bool)
    score = np.asarray(score, dtype=np.float64)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    pos = np.sort(score[y])
    neg = np.sort(score[~y])
    tp = pos.size - np.searchsorted(pos, thresholds, side="left")
    fp = neg.size - np.searchsorted(neg, thresholds, side="left")
    fn = pos.size - tp
    tn = neg.size - fp
    n = np.full(thresholds.shape, y.size)
    return {
        "threshold": thresholds,
        "n": n,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "refusal_rate": _vdiv(tp + fp, n),
        "tpr": _vdiv(tp, tp + fn),
        "fpr": _vdiv(fp, fp + tn),
        "precision": _vdiv(tp, tp + fp),
        "f1": _vdiv(2 * tp, 2 * tp + fp + fn),
    }


def sweep_rows(
    table: dict[str, np.ndarray], category: str | None = None, score_name: str = SCORE_FIELD
) -> list[dict[str, Any]]:
    """A sweep table as JSON-ready rows (NaN -> None).

    Each row starts with its ``category`` (None: all rows) and ``score`` (the field swept).
    """
    cols = {k: v.tolist() for k, v in table.items()}
    keys = [k for k in SWEEP_KEYS if k not in ("category", "score")]
    rows = []
    for i in range(len(cols["threshold"])):
        row: dict[str, Any] = {"category": category, "score": score_name}
        for k in keys:
            v = cols[k][i]
            row[k] = None if isinstance(v, float) and math.isnan(v) else v
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------
# Bootstrap.


def weighted_auroc(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUROC from weights per distinct score, in ascending score order; one row per resample.

    ``pos[b, u]``/``neg[b, u]``: total weight of positive/negative rows with the u-th smallest
    distinct score. Ties count one half (as scikit-learn's trapezoids do). NaN where a class is absent.
    """
    pos = np.atleast_2d(np.asarray(pos, dtype=np.float64))
    neg = np.atleast_2d(np.asarray(neg, dtype=np.float64))
    below = np.cumsum(neg, axis=1) - neg
    num = np.einsum("bu,bu->b", pos, below + 0.5 * neg)
    return _vdiv(num, pos.sum(axis=1) * neg.sum(axis=1))


def weighted_auprc(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Average precision from weights per distinct score (ascending), as scikit-learn computes it.

    NaN where a class is absent.
    """
    pos = np.atleast_2d(np.asarray(pos, dtype=np.float64))[:, ::-1]
    neg = np.atleast_2d(np.asarray(neg, dtype=np.float64))[:, ::-1]
    tps = np.cumsum(pos, axis=1)
    called = tps + np.cumsum(neg, axis=1)
    precision = np.zeros_like(tps)
    np.divide(tps, called, out=precision, where=called > 0)
    total_pos = tps[:, -1]
    total_neg = called[:, -1] - total_pos
    ap = _vdiv(np.einsum("bu,bu->b", pos, precision), total_pos)
    ap[total_neg == 0] = np.nan
    return ap


def _groups(score: np.ndarray) -> np.ndarray:
    """Start index of each run of equal values in a sorted array."""
    if score.size == 0:
        return np.zeros(0, dtype=np.intp)
    return np.flatnonzero(np.r_[True, score[1:] != score[:-1]])


def _resampled_counts(rng: np.random.Generator, n: int, n_boot: int, max_cells: int):
    """Yield ``(slice, counts)`` chunks of a row bootstrap: ``counts[b, i]`` is how often resample
    ``lo + b`` drew row ``i``. The draws do not depend on the chunk size."""
    chunk = max(1, min(n_boot, max_cells // n))
    for lo in range(0, n_boot, chunk):
        b = min(chunk, n_boot - lo)
        draws = rng.integers(0, n, size=(b, n))
        draws += (np.arange(b, dtype=draws.dtype) * n)[:, None]
        counts = np.bincount(draws.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)
        del draws
        yield slice(lo, lo + b), counts


def _bootstrap_values(
    y: np.ndarray,
    pred: np.ndarray,
    score: np.ndarray | None,
    n_boot: int,
    seed: int,
    max_cells: int,
    metrics: Sequence[str],
) -> dict[str, np.ndarray]:
    """The value of each of ``metrics`` in each resample (NaN where undefined): :data:`CI_METRICS`
    and ``max_gap`` (:func:`weighted_max_gap`, needs ``score``). ``n`` > 0, ``n_boot`` > 0."""
    y = np.asarray(y, dtype=bool)
    pred = np.asarray(pred, dtype=bool)
    n = int(y.shape[0])
    ranked = score is not None and any(m in SCORE_KEYS or m == "max_gap" for m in metrics)
    if ranked:
        order = np.argsort(score, kind="stable")
        y, pred, score = y[order], pred[order], np.asarray(score, dtype=np.float64)[order]
        starts = _groups(score)
    yf = y.astype(np.float64)
    tp_v = (y & pred).astype(np.float64)
    fp_v = (~y & pred).astype(np.float64)
    fn_v = (y & ~pred).astype(np.float64)
    values = {m: np.empty(n_boot) for m in metrics}
    for sl, counts in _resampled_counts(np.random.default_rng(seed), n, n_boot, max_cells):
        tp, fp, fn = counts @ tp_v, counts @ fp_v, counts @ fn_v
        tn = n - tp - fp - fn
        point = {
            "precision": _vdiv(tp, tp + fp),
            "recall": _vdiv(tp, tp + fn),
            "f1": _vdiv(2 * tp, 2 * tp + fp + fn),
            "accuracy": (tp + tn) / n,
            "refusal_rate": (tp + fp) / n,
            "false_refusal_rate": _vdiv(fp, fp + tn),
            "missed_refusal_rate": _vdiv(fn, fn + tp),
        }
        for m, v in point.items():
            if m in values:
                values[m][sl] = v
        if ranked:
            pos_w = np.add.reduceat(counts * yf, starts, axis=1)
            neg_w = np.add.reduceat(counts, starts, axis=1) - pos_w
            if "auroc" in values:
                values["auroc"][sl] = weighted_auroc(pos_w, neg_w)
            if "auprc" in values:
                values["auprc"][sl] = weighted_auprc(pos_w, neg_w)
            if "max_gap" in values:
                values["max_gap"][sl] = weighted_max_gap(pos_w, neg_w)
    return values


def _percentiles(v: np.ndarray, ci: float) -> list[float] | None:
    """The central ``ci`` percentile interval of the defined (non-NaN) values; None if there are none."""
    alpha = (1.0 - ci) / 2.0
    ok = v[~np.isnan(v)]
    return None if ok.size == 0 else [float(q) for q in np.quantile(ok, [alpha, 1.0 - alpha])]


def bootstrap_ci(
    y: np.ndarray,
    pred: np.ndarray,
    score: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    max_cells: int = 4_000_000,
) -> dict[str, list[float] | None]:
    """Percentile bootstrap intervals over rows for :data:`CI_METRICS`.

    Vectorised: each chunk of resamples is a (resamples x rows) matrix of draw counts, so
    confusion counts are matrix-vector products and AUROC/AUPRC are cumulative sums over
    the distinct scores. Resamples where a metric is undefined are left out of its interval;
    a metric undefined in every resample gets None. Deterministic for a given ``seed``.
    """
    n = int(np.asarray(y).shape[0])
    metrics = [m for m in CI_METRICS if score is not None or m not in SCORE_KEYS]
    if n == 0 or n_boot <= 0:
        return {m: None for m in metrics}
    values = _bootstrap_values(y, pred, score, n_boot, seed, max_cells, metrics)
    return {m: _percentiles(v, ci) for m, v in values.items()}


# ---------------------------------------------------------------------------
# Separation: how far apart the threshold moves the two classes' refusal rates.


def weighted_max_gap(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """The largest ``TPR(t) - FPR(t)`` over thresholds (Youden's J, the two-sample KS statistic of
    the scores), from weights per distinct score in ascending order; one value per resample.

    Decision: score >= t, t one of the distinct scores or above them all (gap 0), so J >= 0.
    NaN where a class is absent.
    """
    pos = np.atleast_2d(np.asarray(pos, dtype=np.float64))
    neg = np.atleast_2d(np.asarray(neg, dtype=np.float64))
    if pos.shape[1] == 0:
        return np.full(pos.shape[0], np.nan)
    tp = np.cumsum(pos[:, ::-1], axis=1)[:, ::-1]  # weight of positives with score >= the u-th
    fp = np.cumsum(neg[:, ::-1], axis=1)[:, ::-1]
    gap = _vdiv(tp, tp[:, :1]) - _vdiv(fp, fp[:, :1])
    return np.maximum(gap.max(axis=1), 0.0)  # NaN stays NaN


def null_max_gap(
    y: np.ndarray,
    score: np.ndarray,
    n_perm: int = 1000,
    seed: int = 0,
    q: float = 0.95,
    max_cells: int = 4_000_000,
) -> float | None:
    """The ``q`` quantile of the max gap (:func:`weighted_max_gap`) when the labels are shuffled over
    the same scores: what a score unrelated to the label reaches by chance on this many rows of
    each class, with these ties. Deterministic for a ``seed``; None unless both classes occur."""
    y = np.asarray(y, dtype=bool)
    if not _both_classes(y) or n_perm <= 0:
        return None
    order = np.argsort(np.asarray(score, dtype=np.float64), kind="stable")
    starts = _groups(np.asarray(score, dtype=np.float64)[order])
    sizes = np.diff(np.r_[starts, y.size]).astype(np.float64)
    yf = y.astype(np.float64)
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_perm, max_cells // y.size))
    values = np.empty(n_perm)
    for lo in range(0, n_perm, chunk):
        b = min(chunk, n_perm - lo)
        shuffled = rng.permuted(np.broadcast_to(yf, (b, y.size)), axis=1)
        pos_w = np.add.reduceat(shuffled, starts, axis=1)
        values[lo : lo + b] = weighted_max_gap(pos_w, sizes[None, :] - pos_w)
    return float(np.quantile(values, q))


def separation(
    y: Sequence[Any] | np.ndarray,
    score: Sequence[float] | np.ndarray,
    threshold: float | None = None,
    *,
    bar: float = 0.0,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    max_cells: int = 4_000_000,
) -> dict[str, Any]:
    """How far a threshold on ``score`` separates the refusal rates of the two classes, with a
    criterion that a score unrelated to the label fails.

    ``gap(t)`` = refusal rate of the gold-refuse rows minus that of the gold-respond rows at threshold
    ``t`` (TPR - FPR of :func:`sweep`; decision: score >= t). Returns:

    * ``max_gap``: the largest gap over thresholds (Youden's J, the KS statistic; from
      scikit-learn's ``roc_curve``), ``max_gap_threshold`` where it is reached (the highest such
      threshold; None when no threshold beats 0), ``max_gap_ci``: its percentile bootstrap interval
      over rows (``n_boot`` resamples, ``seed``);
    * ``null_max_gap``: the ``ci`` quantile of the max gap with the labels shuffled
      (:func:`null_max_gap`, same ``n_boot`` and ``seed``): a max over thresholds is above 0 by
      chance, the more so on few rows;
    * ``bar`` and ``passed``: whether the interval's lower bound is above both ``bar`` and
      ``null_max_gap``;
    * with ``threshold``: ``gap`` there (recall - false_refusal_rate of :mod:`rtools.rates`),
      ``gap_ci`` from the same resamples, and ``gap_passed``: the lower bound above ``bar`` (a
      fixed threshold is not a max, so needs no null correction; fix it without the rows measured);
    * ``n_refuse``, ``n_respond``.

    Every number is None where a class is absent. Deterministic for a given ``seed``.
    """
    y = np.asarray(y, dtype=bool)
    score = np.asarray(score, dtype=np.float64)
    if y.shape != score.shape or y.ndim != 1:
        raise ValueError("separation needs one score per label")
    if not 0.0 < ci < 1.0:
        raise ValueError("ci must be between 0 and 1")
    pos = int(np.count_nonzero(y))
    out: dict[str, Any] = {"n_refuse": pos, "n_respond": int(y.size) - pos, "bar": bar}
    keys = ["max_gap", "max_gap_threshold", "max_gap_ci", "null_max_gap", "passed"]
    if threshold is not None:
        keys += ["threshold", "gap", "gap_ci", "gap_passed"]
    if not _both_classes(y):
        out.update({k: None for k in keys})
        if threshold is not None:
            out["threshold"] = threshold
        return out
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(y.astype(np.int8), score, drop_intermediate=False)
    gap = tpr - fpr
    # roc_curve's thresholds fall, so the first (near-)maximum is the highest threshold reaching it
    best = int(np.flatnonzero(gap >= gap.max() - 1e-12)[0])
    out["max_gap"] = float(max(gap[best], 0.0))
    out["max_gap_threshold"] = float(thr[best]) if gap[best] > 0 else None
    metrics = ["max_gap"]
    pred = score >= threshold if threshold is not None else np.zeros_like(y)
    if threshold is not None:
        metrics += ["recall", "false_refusal_rate"]
    values = _bootstrap_values(y, pred, score, n_boot, seed, max_cells, metrics) if n_boot > 0 else {}
    out["max_gap_ci"] = _percentiles(values["max_gap"], ci) if values else None
    out["null_max_gap"] = null_max_gap(y, score, n_boot, seed, ci, max_cells)
    lo = out["max_gap_ci"][0] if out["max_gap_ci"] else None
    floor = max(bar, out["null_max_gap"] or 0.0)
    out["passed"] = None if lo is None else bool(lo > floor)
    if threshold is not None:
        r = rates(confusion(y, pred))
        out["threshold"] = threshold
        out["gap"] = r["recall"] - r["false_refusal_rate"]  # type: ignore[operator]
        out["gap_ci"] = _percentiles(values["recall"] - values["false_refusal_rate"], ci) if values else None
        out["gap_passed"] = None if out["gap_ci"] is None else bool(out["gap_ci"][0] > bar)
    return out


# ---------------------------------------------------------------------------
# Tables for people (--format table).


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def format_table(header: list[str], rows: list[list[Any]]) -> str:
    """An aligned text table: first column left-aligned, the others right-aligned; null shows as -."""
    cells = [header] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for r in cells:
        parts = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines) + "\n"


_TABLE_COLUMNS = [
    ("n", "n"),
    ("n_refuse", "n_refuse"),
    ("n_respond", "n_respond"),
    ("refusal", "refusal_rate"),
    ("prec", "precision"),
    ("recall", "recall"),
    ("f1", "f1"),
    ("acc", "accuracy"),
    ("FRR", "false_refusal_rate"),
    ("MRR", "missed_refusal_rate"),
    ("auroc", "auroc"),
    ("auprc", "auprc"),
    ("cat_acc", "category_accuracy"),
    ("agree", "agreement_rate"),
]


#: The table's row for records without a category.
NO_CATEGORY = "(no category)"


def _with_class_counts(scope: dict[str, Any]) -> dict[str, Any]:
    """The scope plus its gold-class counts: n_refuse = tp + fn, n_respond = fp + tn."""
    return {**scope, "n_refuse": scope["tp"] + scope["fn"], "n_respond": scope["fp"] + scope["tn"]}


def summary_table(
    summary: dict[str, Any], ci_level: float | None = None, no_category: dict[str, Any] | None = None
) -> str:
    """The summary as an aligned table: one row overall, one per category, one for ``no_category``.

    Each row has its gold-class counts (n_refuse, n_respond: the denominators of recall/MRR and of
    FRR). With bootstrap intervals a second table follows with the same rows, one column per
    metric, each cell ``[low, high]``.
    """
    scopes = [("all", summary)] + sorted(summary.get("by_category", {}).items())
    if no_category is not None:
        scopes.append((NO_CATEGORY, no_category))
    scopes = [(name, _with_class_counts(scope)) for name, scope in scopes]
    cols = [(h, k) for h, k in _TABLE_COLUMNS if k in scopes[0][1]]
    rows = [[name] + [s.get(k) for _, k in cols] for name, s in scopes]
    text = format_table(["category"] + [h for h, _ in cols], rows)
    text += (
        "n_refuse, n_respond = gold refuse / respond rows; - = undefined\n"
        "FRR = false_refusal_rate fp/(fp+tn), of the n_respond rows; "
        "MRR = missed_refusal_rate fn/(fn+tp), of the n_refuse rows\n"
    )
    if "ci" in summary and ci_level is not None:
        metrics = [(h, k) for h, k in _TABLE_COLUMNS if k in summary["ci"]]
        ci_rows = []
        for name, scope in scopes:
            ci = scope.get("ci") or {}
            ci_rows.append([name] + [_interval(ci.get(k)) for _, k in metrics])
        text += f"\n{ci_level:.0%} bootstrap intervals [low, high] (percentile; few rows give narrow, unreliable ones):\n"
        text += format_table(["category"] + [h for h, _ in metrics], ci_rows)
    return text


def sweep_table(rows: Iterable[dict[str, Any]]) -> str:
    """The :func:`threshold_sweep` rows as an aligned table (rt-metrics --sweep --format table)."""
    header = list(SWEEP_KEYS)
    return format_table(header, [[r[k] for k in header] for r in rows])


def report(
    summary: dict[str, Any], data: EvalData, options: MetricsOptions, fmt: str = "json", pretty: bool = False
) -> bytes:
    """The summary as rt-metrics prints it: one JSON object with sorted keys (``pretty``: indented), or
    (``fmt="table"``) :func:`summary_table` with the bootstrap intervals and the no-category row."""
    if fmt == "table":
        ci_level = options.ci if options.bootstrap else None
        return summary_table(summary, ci_level, no_category_summary(data, options)).encode()
    return orjson.dumps(summary, option=orjson.OPT_SORT_KEYS | (orjson.OPT_INDENT_2 if pretty else 0)) + b"\n"


def _interval(bounds: list[float] | None) -> str | None:
    return None if not bounds else f"[{_fmt(bounds[0])}, {_fmt(bounds[1])}]"


# ---------------------------------------------------------------------------
# Gates.


@dataclass(frozen=True)
class Gate:
    """``metric`` (optionally ``category.metric``) must be >= (``under``) or <= (``over``) ``value``."""

    metric: str
    value: float
    kind: str  #: "under" (--fail-under) or "over" (--fail-over)
    category: str | None = None

    @property
    def name(self) -> str:
        return self.metric if self.category is None else f"{self.category}.{self.metric}"

    @classmethod
    def parse(cls, text: str, kind: str) -> Gate:
        """``METRIC=V`` or ``CATEGORY.METRIC=V``; ValueError with a usable message otherwise."""
        name, value = parse_pair(text, "METRIC=VALUE")
        assert name is not None
        category, dot, metric = name.rpartition(".")
        if not dot:
            category, metric = "", name
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; valid metrics: {', '.join(METRICS)}")
        v = parse_number(value, f"the bound of {name}")
        return cls(metric=metric, value=v, kind=kind, category=category or None)

    def check(self, summary: dict[str, Any]) -> str | None:
        """None when the gate passes, else the failure message (without the program name)."""
        scope = summary if self.category is None else summary.get("by_category", {}).get(self.category)
        if scope is None:
            return f"gate failed: no category {self.category!r} in the input"
        actual = scope.get(self.metric)
        op = ">=" if self.kind == "under" else "<="
        if actual is None:
            return (
                f"gate failed: {self.name} is null (undefined for this input), required {op} {self.value:g}"
            )
        if self.kind == "under" and actual < self.value:
            return f"gate failed: {self.name}={actual:.6g} < {self.value:g}"
        if self.kind == "over" and actual > self.value:
            return f"gate failed: {self.name}={actual:.6g} > {self.value:g}"
        return None


def check_gates(summary: dict[str, Any], gates: Iterable[Gate]) -> list[str]:
    """The failure messages of every gate that fails (empty: all pass)."""
    return [msg for g in gates if (msg := g.check(summary)) is not None]
