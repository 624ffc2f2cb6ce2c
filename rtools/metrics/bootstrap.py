"""Resampling: percentile bootstrap intervals of the summary's metrics (:func:`bootstrap_ci`), and
:func:`separation`, how far a threshold moves the two classes' refusal rates apart, with a criterion
that a score unrelated to the label fails (a label-shuffling null, :func:`null_max_gap`).

Vectorised: each chunk of resamples is a (resamples x rows) matrix of draw counts, so confusion
counts are matrix-vector products and AUROC/AUPRC/max gap are cumulative sums over the distinct
scores (:mod:`rtools.metrics.ranking`). Deterministic for a given seed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..rates import rates
from .keys import CI_METRICS, SCORE_KEYS
from .ranking import both_classes, confusion, groups, vdiv, weighted_auprc, weighted_auroc, weighted_max_gap


def _resampled_counts(
    rng: np.random.Generator, n: int, n_boot: int, max_cells: int
) -> Iterator[tuple[slice, np.ndarray]]:
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


def _resampled_rates(counts: np.ndarray, tp_v: np.ndarray, fp_v: np.ndarray, fn_v: np.ndarray, n: int):
    """The point metrics of each resample (rows of ``counts``); NaN where undefined."""
    tp, fp, fn = counts @ tp_v, counts @ fp_v, counts @ fn_v
    tn = n - tp - fp - fn
    return {
        "precision": vdiv(tp, tp + fp),
        "recall": vdiv(tp, tp + fn),
        "f1": vdiv(2 * tp, 2 * tp + fp + fn),
        "accuracy": (tp + tn) / n,
        "refusal_rate": (tp + fp) / n,
        "false_refusal_rate": vdiv(fp, fp + tn),
        "missed_refusal_rate": vdiv(fn, fn + tp),
    }


#: The ranking metrics a resample can give, from weights per distinct score.
_RANKED = {"auroc": weighted_auroc, "auprc": weighted_auprc, "max_gap": weighted_max_gap}


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
    ranked = [m for m in metrics if m in _RANKED] if score is not None else []
    if ranked:
        order = np.argsort(score, kind="stable")
        y, pred, score = y[order], pred[order], np.asarray(score, dtype=np.float64)[order]
        starts = groups(score)
    yf = y.astype(np.float64)
    tp_v = (y & pred).astype(np.float64)
    fp_v = (~y & pred).astype(np.float64)
    fn_v = (y & ~pred).astype(np.float64)
    values = {m: np.empty(n_boot) for m in metrics}
    for sl, counts in _resampled_counts(np.random.default_rng(seed), n, n_boot, max_cells):
        for m, v in _resampled_rates(counts, tp_v, fp_v, fn_v, n).items():
            if m in values:
                values[m][sl] = v
        if ranked:
            pos_w = np.add.reduceat(counts * yf, starts, axis=1)
            neg_w = np.add.reduceat(counts, starts, axis=1) - pos_w
            for m in ranked:
                values[m][sl] = _RANKED[m](pos_w, neg_w)
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
    if not both_classes(y) or n_perm <= 0:
        return None
    order = np.argsort(np.asarray(score, dtype=np.float64), kind="stable")
    starts = groups(np.asarray(score, dtype=np.float64)[order])
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
    if not both_classes(y):
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
