"""Calibration: does a probability of refusing mean what it says?

A score ``p`` (p_refuse, or p_cat[SLUG] on the rows of category SLUG) against the gold label
``y`` (1 = refuse):

* ``brier``: the Brier score, the mean of ``(p - y)^2`` (0 is perfect; always answering 0.5 gives
  0.25);
* the rows go into :data:`BINS` equal-width bins over [0, 1]: row ``i`` into bin
  ``min(floor(BINS * p_i), BINS - 1)``, so bin ``k`` holds ``k/BINS <= p < (k+1)/BINS`` and the last
  bin also holds ``p = 1``. In each non-empty bin, the gap is ``|refuse fraction - mean p|``;
* ``ece``: the expected calibration error, the mean gap weighted by the bins' row counts
  (``sum_k n_k/n * gap_k``);
* ``mce``: the maximum calibration error, the largest gap of a non-empty bin.

All three are defined for any non-empty set of rows (one class is enough) and are None for none.
Plain numpy; the reliability diagram of ``rt-metrics --plot`` draws :func:`reliability_bins`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Equal-width bins over [0, 1] for ``ece``, ``mce`` and the reliability diagram.
BINS = 10


def bin_index(score: np.ndarray, bins: int = BINS) -> np.ndarray:
    """The bin of each score: ``min(floor(bins * p), bins - 1)``."""
    scaled = np.floor(np.asarray(score, dtype=np.float64) * bins).astype(np.intp)
    return np.minimum(scaled, bins - 1)


def reliability_bins(y: np.ndarray, score: np.ndarray, bins: int = BINS) -> dict[str, np.ndarray]:
    """Per bin: ``count`` (rows), ``mean_score`` and ``refuse_fraction`` (NaN in empty bins),
    ``lower`` and ``upper`` (the bin's edges)."""
    y = np.asarray(y, dtype=np.float64)
    score = np.asarray(score, dtype=np.float64)
    index = bin_index(score, bins)
    count = np.bincount(index, minlength=bins).astype(np.float64)
    refused = np.bincount(index, weights=y, minlength=bins)
    total = np.bincount(index, weights=score, minlength=bins)
    filled = count > 0
    mean_score = np.full(bins, np.nan)
    refuse_fraction = np.full(bins, np.nan)
    mean_score[filled] = total[filled] / count[filled]
    refuse_fraction[filled] = refused[filled] / count[filled]
    edges = np.arange(bins + 1, dtype=np.float64) / bins
    return {
        "count": count,
        "mean_score": mean_score,
        "refuse_fraction": refuse_fraction,
        "lower": edges[:-1],
        "upper": edges[1:],
    }


def brier_score(y: np.ndarray, score: np.ndarray) -> float | None:
    """The mean of ``(score - y)^2``; None for no rows."""
    y = np.asarray(y, dtype=np.float64)
    if y.size == 0:
        return None
    error = np.asarray(score, dtype=np.float64) - y
    return float(np.dot(error, error) / y.size)


def calibration_errors(
    y: np.ndarray, score: np.ndarray, bins: int = BINS
) -> tuple[float | None, float | None]:
    """``(ece, mce)`` over ``bins`` equal-width bins (see the module); (None, None) for no rows."""
    table = reliability_bins(y, score, bins)
    filled = table["count"] > 0
    if not filled.any():
        return None, None
    gap = np.abs(table["refuse_fraction"][filled] - table["mean_score"][filled])
    weights = table["count"][filled] / table["count"].sum()
    return float(np.dot(weights, gap)), float(gap.max())


def calibration_metrics(y: np.ndarray, score: np.ndarray, prefix: str = "") -> dict[str, Any]:
    """``{prefix + "brier": ..., prefix + "ece": ..., prefix + "mce": ...}`` of ``score`` against ``y``."""
    ece, mce = calibration_errors(y, score)
    return {f"{prefix}brier": brier_score(y, score), f"{prefix}ece": ece, f"{prefix}mce": mce}
