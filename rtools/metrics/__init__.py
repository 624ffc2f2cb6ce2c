"""The metrics core of rt-metrics: records -> arrays -> the summary, sweeps, intervals, gates.

Pure functions over numpy arrays, in modules that a reader can take one at a time:

* :mod:`~rtools.metrics.keys`: the summary's keys, the gate metrics, the sweep columns;
* :mod:`~rtools.metrics.reading`: :func:`collect`, an iterator of ``(line_number, record)`` pairs
  (:func:`rtools.records.read_records`) -> an :class:`EvalData`, raising
  :class:`~rtools.records.RecordError` with the file and line of the first bad record;
* :mod:`~rtools.metrics.options`: :class:`MetricsOptions` and :func:`load`;
* :mod:`~rtools.metrics.ranking`: confusion counts, AUROC/AUPRC, their weighted vectorised forms;
* :mod:`~rtools.metrics.calibration`: Brier score, ECE and MCE over equal-width bins;
* :mod:`~rtools.metrics.summary`: :func:`summarize`, overall and ``by_category``;
* :mod:`~rtools.metrics.sweeps`: :func:`threshold_sweep` (``--sweep``);
* :mod:`~rtools.metrics.bootstrap`: :func:`bootstrap_ci` and :func:`separation`;
* :mod:`~rtools.metrics.output`: the JSON and table output, the ``--plot`` figure;
* :mod:`~rtools.metrics.gates`: ``--fail-under`` / ``--fail-over``.

Conventions: the positive class is *refuse*; a ratio whose denominator is 0 is ``None`` (JSON
``null``), never NaN; AUROC and AUPRC come from scikit-learn, imported only when a score is ranked,
and are ``None`` unless both classes occur. Importing this package costs numpy and orjson, never
torch, scikit-learn or matplotlib. Every name below is importable from ``rtools.metrics``.
"""

from __future__ import annotations

from ..rates import Counts, counts_and_rates, rates, ratio
from .bootstrap import bootstrap_ci, null_max_gap, separation
from .calibration import BINS as CALIBRATION_BINS
from .calibration import brier_score, calibration_errors, calibration_metrics, reliability_bins
from .gates import Gate, check_gates
from .keys import (
    CALIBRATION_KEYS,
    CI_METRICS,
    COUNT_KEYS,
    LABEL_CODES,
    METRICS,
    OPTIONAL_KEYS,
    P_CAT_CALIBRATION_KEYS,
    RATE_KEYS,
    SCORE_FIELD,
    SCORE_KEYS,
    SWEEP_KEYS,
)
from .options import MetricsOptions, load
from .output import NO_CATEGORY, format_table, plot, report, summary_table, sweep_table
from .ranking import auprc, auroc, confusion, weighted_auprc, weighted_auroc, weighted_max_gap
from .reading import EvalData, collect
from .summary import category_rows, no_category_summary, summarize, summarize_rows
from .sweeps import sweep, sweep_rows, threshold_grid, threshold_sweep

__all__ = [
    "CALIBRATION_BINS",
    "CALIBRATION_KEYS",
    "CI_METRICS",
    "COUNT_KEYS",
    "LABEL_CODES",
    "METRICS",
    "NO_CATEGORY",
    "OPTIONAL_KEYS",
    "P_CAT_CALIBRATION_KEYS",
    "RATE_KEYS",
    "SCORE_FIELD",
    "SCORE_KEYS",
    "SWEEP_KEYS",
    "Counts",
    "EvalData",
    "Gate",
    "MetricsOptions",
    "auprc",
    "auroc",
    "bootstrap_ci",
    "brier_score",
    "calibration_metrics",
    "calibration_errors",
    "category_rows",
    "check_gates",
    "collect",
    "confusion",
    "counts_and_rates",
    "format_table",
    "load",
    "no_category_summary",
    "null_max_gap",
    "plot",
    "rates",
    "ratio",
    "reliability_bins",
    "report",
    "separation",
    "summarize",
    "summarize_rows",
    "summary_table",
    "sweep",
    "sweep_rows",
    "sweep_table",
    "threshold_grid",
    "threshold_sweep",
    "weighted_auprc",
    "weighted_auroc",
    "weighted_max_gap",
]
