"""The rt-metrics summary: counts, rates, AUROC/AUPRC and calibration of some rows
(:func:`summarize_rows`), and :func:`summarize`, overall plus ``by_category``, with bootstrap
intervals when asked.

Conventions: the positive class is *refuse* (``y`` is True where the gold ``label`` is
``"refuse"``, ``pred`` where the decision is); a ratio whose denominator is 0 is ``None`` (JSON
``null``), never NaN.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from ..rates import counts_and_rates, ratio
from .bootstrap import bootstrap_ci
from .calibration import calibration_metrics
from .options import MetricsOptions, load
from .ranking import auprc, auroc, confusion
from .reading import EvalData


def summarize_rows(
    y: np.ndarray,
    pred: np.ndarray,
    score: np.ndarray | None = None,
    cat_match: np.ndarray | None = None,
    consistent: np.ndarray | None = None,
) -> dict[str, Any]:
    """One summary (no ``by_category``) for the given rows: with ``score`` (p_refuse) also auroc,
    auprc and its calibration (brier, ece, mce: :mod:`rtools.metrics.calibration`)."""
    out = counts_and_rates(confusion(y, pred))
    if score is not None and out["n"]:
        out["auroc"] = auroc(y, score)
        out["auprc"] = auprc(y, score)
        out.update(calibration_metrics(y, score))
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


def _category_summary(data: EvalData, slug: str, rows: np.ndarray) -> dict[str, Any]:
    """:func:`_rows_summary` of a category's rows, plus the calibration of p_cat[slug] on them
    (``p_cat_brier``, ``p_cat_ece``, ``p_cat_mce``) when every one of them has it."""
    out = _rows_summary(data, rows)
    if data.cat_score_source.get(slug) == f"p_cat.{slug}":
        out.update(calibration_metrics(data.y[rows], data.cat_scores[slug], prefix="p_cat_"))
    return out


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
    categories = category_rows(data)
    out = _rows_summary(data, None)
    out["by_category"] = {slug: _category_summary(data, slug, rows) for slug, rows in categories.items()}
    if options.threshold is not None:
        out["threshold"] = options.threshold
    if options.bootstrap:
        out["ci"] = _rows_ci(data, None, options)
        for slug, rows in categories.items():  # each category resampled on its own rows
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
