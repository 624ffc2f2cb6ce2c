"""The names of rt-metrics' numbers: the summary's keys, the metrics a gate may name, the metrics
that get bootstrap intervals, the columns of a sweep row, and the two input fields it scores.

One place, so that the summary, the table, the gates and the man page agree.
"""

from __future__ import annotations

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
#: Calibration of p_refuse against the gold label (rtools.metrics.calibration); present when every
#: row has p_refuse, never null then (one class is enough).
CALIBRATION_KEYS: tuple[str, ...] = ("brier", "ece", "mce")
#: Calibration of p_cat[SLUG] on the rows of gold category SLUG: by_category entries only, where
#: every row of the category has p_cat[SLUG] (and p_refuse).
P_CAT_CALIBRATION_KEYS: tuple[str, ...] = ("p_cat_brier", "p_cat_ece", "p_cat_mce")
#: Present when some record has a non-null ``decision_cat`` / ``consistent``.
OPTIONAL_KEYS: tuple[str, ...] = ("category_accuracy", "agreement_rate")
#: Every numeric summary key: the metrics a gate (--fail-under/--fail-over) may name.
METRICS: tuple[str, ...] = (
    COUNT_KEYS + RATE_KEYS + SCORE_KEYS + OPTIONAL_KEYS + CALIBRATION_KEYS + P_CAT_CALIBRATION_KEYS
)
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

#: Gold label -> positive class (refuse).
LABEL_CODES: dict[str, bool] = {"refuse": True, "respond": False}
#: The score every ranking and calibration number is of, unless a category's own p_cat[SLUG] is used.
SCORE_FIELD = "p_refuse"
