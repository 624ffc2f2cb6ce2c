"""Plots for rt-metrics: ROC curves, refusal rate per gold class against threshold, and a
reliability diagram.

The middle panel is the controllability plot: for each group (all rows, then each category) the
refusal rate among its gold-refuse rows (solid; the recall) and among its gold-respond rows
(dashed; the false refusal rate) as the threshold moves, so the gap between the two lines is
what a threshold can buy. A group with one class has one line.

The right panel is the reliability diagram: for each group, one point per non-empty bin of the
score (the 10 equal-width bins of :mod:`rtools.metrics.calibration`, the bins of ``ece``) at the
mean score of its rows (x) and the fraction of them that are gold refuse (y). A calibrated score
lies on the diagonal; points below it are over-confident refusals, points above it under-confident.

matplotlib is imported only inside :func:`plot_curves`, through its object-oriented API with
the Agg canvas (no pyplot, no display, no global backend switch). The PNG is rendered in
memory and written with :func:`rtools.records.atomic_write_bytes` (temporary name in the
target directory, then renamed into place).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .records import atomic_write_bytes


@dataclass
class Curve:
    """One line on each panel: a name, gold labels (True = refuse) and scores."""

    name: str
    y: np.ndarray
    score: np.ndarray


def _refusal_rate(score: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    s = np.sort(score)
    if s.size == 0:
        return np.full(thresholds.shape, np.nan)
    return (s.size - np.searchsorted(s, thresholds, side="left")) / s.size


#: The gold classes of the right panel: (name, y value, line style).
CLASSES = (("refuse", True, "-"), ("respond", False, "--"))


def class_rates(curve: Curve, thresholds: np.ndarray) -> list[tuple[str, int, np.ndarray, str]]:
    """(gold class, rows, refusal rate at each threshold, line style) for each class the curve has."""
    y = np.asarray(curve.y, dtype=bool)
    score = np.asarray(curve.score, dtype=np.float64)
    out = []
    for name, value, style in CLASSES:
        rows = y == value
        if rows.any():
            out.append((name, int(rows.sum()), _refusal_rate(score[rows], thresholds), style))
    return out


def reliability_points(curve: Curve) -> tuple[np.ndarray, np.ndarray, float | None]:
    """(mean score, refuse fraction) of each non-empty bin of the curve's scores, and their ece."""
    from .metrics.calibration import calibration_errors, reliability_bins

    table = reliability_bins(curve.y, curve.score)
    filled = table["count"] > 0
    ece, _ = calibration_errors(curve.y, curve.score)
    return table["mean_score"][filled], table["refuse_fraction"][filled], ece


def plot_curves(
    path: str | os.PathLike, curves: Sequence[Curve], title: str | None = None, dpi: int = 100
) -> None:
    """Write one PNG with three panels: ROC curves, refusal rate per gold class against threshold,
    and the reliability diagram."""
    fig = build_figure(curves, title, dpi)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
    # the temporary file was created 0600; give the PNG the usual permissions
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def build_figure(curves: Sequence[Curve], title: str | None = None, dpi: int = 100):
    """The matplotlib Figure of :func:`plot_curves` (axes: ROC, refusal rate per gold class,
    reliability)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.metrics import roc_curve

    fig = Figure(figsize=(16.5, 4.8), dpi=dpi)
    FigureCanvasAgg(fig)
    roc_ax, rate_ax, reliability_ax = fig.subplots(1, 3)
    thresholds = np.linspace(0.0, 1.0, 201)
    for i, c in enumerate(curves):
        style = {"linewidth": 2.2 if i == 0 else 1.2, "color": "black" if i == 0 else f"C{(i - 1) % 10}"}
        y = np.asarray(c.y, dtype=bool)
        pos = int(np.count_nonzero(y))
        if 0 < pos < y.size:
            fpr, tpr, _ = roc_curve(y.astype(np.int8), c.score)
            roc_ax.plot(fpr, tpr, label=f"{c.name} (n={y.size})", **style)
        else:
            roc_ax.plot([], [], label=f"{c.name} (one class: no ROC)", linestyle=":", **style)
        for cls, rows, rate, linestyle in class_rates(c, thresholds):
            rate_ax.plot(
                thresholds, rate, label=f"{c.name}: {cls} rows (n={rows})", linestyle=linestyle, **style
            )
        mean_score, refuse_fraction, ece = reliability_points(c)
        label = c.name if ece is None else f"{c.name} (ece={ece:.3f})"
        reliability_ax.plot(mean_score, refuse_fraction, marker="o", markersize=3.5, label=label, **style)
    for ax in (roc_ax, reliability_ax):
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
    for ax, xlabel, ylabel, panel_title in (
        (roc_ax, "false refusal rate (FPR)", "refusal recall (TPR)", "ROC (positive class: refuse)"),
        (
            rate_ax,
            "threshold on score",
            "refusal rate",
            "refusal rate per gold class (solid: refuse rows, dashed: respond rows)",
        ),
        (
            reliability_ax,
            "mean score in bin",
            "fraction of gold refuse rows",
            "reliability (10 equal-width score bins; diagonal: calibrated)",
        ),
    ):
        ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel=xlabel, ylabel=ylabel, title=panel_title)
        ax.grid(True, alpha=0.3)
        if curves:
            ax.legend(fontsize="x-small", loc="best" if ax is rate_ax else "lower right")
    rate_ax.title.set_fontsize("medium")
    reliability_ax.title.set_fontsize("medium")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
