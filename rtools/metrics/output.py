"""What rt-metrics shows people: the summary as JSON or an aligned table (:func:`report`,
:func:`summary_table`), the sweep as a table (:func:`sweep_table`), and the ``--plot`` figure
(:func:`plot`: ROC curves, refusal rates by threshold, reliability diagram; matplotlib is imported
only there, by :mod:`rtools.plots`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from .calibration import BINS
from .keys import SWEEP_KEYS
from .options import MetricsOptions
from .reading import EvalData
from .summary import no_category_summary


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
    ("brier", "brier"),
    ("ece", "ece"),
    ("mce", "mce"),
    ("p_cat_ece", "p_cat_ece"),
    ("cat_acc", "category_accuracy"),
    ("agree", "agreement_rate"),
]


#: The table's row for records without a category.
NO_CATEGORY = "(no category)"

#: What the table's abbreviations mean, printed under it when the column is there.
_LEGEND = (
    (
        "refusal_rate",
        "n_refuse, n_respond = gold refuse / respond rows; - = undefined\n"
        "FRR = false_refusal_rate fp/(fp+tn), of the n_respond rows; "
        "MRR = missed_refusal_rate fn/(fn+tp), of the n_refuse rows\n",
    ),
    (
        "ece",
        "brier = mean (p_refuse - y)^2, y = 1 for gold refuse; ece, mce = the row-weighted mean and the\n"
        f"largest |refuse fraction - mean p_refuse| over {BINS} equal-width bins of p_refuse\n",
    ),
    ("p_cat_ece", "p_cat_ece = ece of p_cat[SLUG] on the rows of category SLUG\n"),
)


def _with_class_counts(scope: dict[str, Any]) -> dict[str, Any]:
    """The scope plus its gold-class counts: n_refuse = tp + fn, n_respond = fp + tn."""
    return {**scope, "n_refuse": scope["tp"] + scope["fn"], "n_respond": scope["fp"] + scope["tn"]}


def summary_table(
    summary: dict[str, Any], ci_level: float | None = None, no_category: dict[str, Any] | None = None
) -> str:
    """The summary as an aligned table: one row overall, one per category, one for ``no_category``.

    Each row has its gold-class counts (n_refuse, n_respond: the denominators of recall/MRR and of
    FRR). A column is there when some row has its key. With bootstrap intervals a second table
    follows with the same rows, one column per metric, each cell ``[low, high]``.
    """
    scopes = [("all", summary)] + sorted(summary.get("by_category", {}).items())
    if no_category is not None:
        scopes.append((NO_CATEGORY, no_category))
    scopes = [(name, _with_class_counts(scope)) for name, scope in scopes]
    cols = [(h, k) for h, k in _TABLE_COLUMNS if any(k in scope for _, scope in scopes)]
    rows = [[name] + [s.get(k) for _, k in cols] for name, s in scopes]
    text = format_table(["category"] + [h for h, _ in cols], rows)
    shown = {k for _, k in cols}
    text += "".join(legend for key, legend in _LEGEND if key in shown)
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


def plot(path: str, data: EvalData, title: str) -> None:
    """The ``--plot`` PNG: ROC curves, refusal rates by threshold and a reliability diagram, overall
    and per category (each category on its own score: p_cat[slug] when every row has it)."""
    from ..plots import Curve, plot_curves

    curves = [Curve("all", data.y, data.score if data.score is not None else data.y[:0])]
    for slug in sorted(data.cat_scores):
        rows_of = data.cat == data.categories.index(slug)
        curves.append(
            Curve(f"{slug} ({data.cat_score_source[slug]})", data.y[rows_of], data.cat_scores[slug])
        )
    plot_curves(path, curves, title=title)
