"""Threshold sweeps (rt-metrics --sweep): counts and rates at each threshold on a score, for all
rows and for each category's own rows; decision: score >= threshold, NaN (JSON null) for 0/0."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from .keys import SCORE_FIELD, SWEEP_KEYS
from .options import MetricsOptions, load
from .ranking import vdiv
from .reading import EvalData


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
        "refusal_rate": vdiv(tp + fp, n),
        "tpr": vdiv(tp, tp + fn),
        "fpr": vdiv(fp, fp + tn),
        "precision": vdiv(tp, tp + fp),
        "f1": vdiv(2 * tp, 2 * tp + fp + fn),
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
