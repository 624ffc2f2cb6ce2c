"""Point metrics of decisions and scores: confusion counts, AUROC and AUPRC (scikit-learn's, exact),
and their weighted forms over the distinct scores, vectorised over many resamples at once (the
bootstrap's), with the largest TPR - FPR gap.

Positive class = refuse. scikit-learn is imported only by the functions that use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..rates import Counts


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


def both_classes(y: np.ndarray) -> bool:
    """Whether ``y`` holds both a refuse and a respond row."""
    pos = int(np.count_nonzero(y))
    return 0 < pos < y.shape[0]


def auroc(y: Sequence[Any] | np.ndarray, score: Sequence[float] | np.ndarray) -> float | None:
    """Area under the ROC curve (scikit-learn), None unless both classes occur: the one AUROC of
    rtools (rt-metrics, rt-lora's evaluation). ``y``: True/1 = gold refuse."""
    y = np.asarray(y, dtype=bool)
    if not both_classes(y):
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.asarray(y, dtype=np.int8), score))


def auprc(y: Sequence[Any] | np.ndarray, score: Sequence[float] | np.ndarray) -> float | None:
    """Average precision (scikit-learn's area under the precision-recall curve), None unless both classes occur."""
    y = np.asarray(y, dtype=bool)
    if not both_classes(y):
        return None
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(np.asarray(y, dtype=np.int8), score))


def vdiv(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Elementwise ``num / den`` with NaN where ``den`` is 0."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def groups(score: np.ndarray) -> np.ndarray:
    """Start index of each run of equal values in a sorted array."""
    if score.size == 0:
        return np.zeros(0, dtype=np.intp)
    return np.flatnonzero(np.r_[True, score[1:] != score[:-1]])


def weighted_auroc(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUROC from weights per distinct score, in ascending score order; one row per resample.

    ``pos[b, u]``/``neg[b, u]``: total weight of positive/negative rows with the u-th smallest
    distinct score. Ties count one half (as scikit-learn's trapezoids do). NaN where a class is absent.
    """
    pos = np.atleast_2d(np.asarray(pos, dtype=np.float64))
    neg = np.atleast_2d(np.asarray(neg, dtype=np.float64))
    below = np.cumsum(neg, axis=1) - neg
    num = np.einsum("bu,bu->b", pos, below + 0.5 * neg)
    return vdiv(num, pos.sum(axis=1) * neg.sum(axis=1))


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
    ap = vdiv(np.einsum("bu,bu->b", pos, precision), total_pos)
    ap[total_neg == 0] = np.nan
    return ap


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
    gap = vdiv(tp, tp[:, :1]) - vdiv(fp, fp[:, :1])
    return np.maximum(gap.max(axis=1), 0.0)  # NaN stays NaN
