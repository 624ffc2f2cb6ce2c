"""When does a scored record become a refusal: decision rules, thresholds files, fitting, calibration.

* :mod:`.rules` -- the rules on plain numbers (own choice, a global threshold, per-category
  thresholds) and the checks of the fields they read;
* :mod:`.spec` -- :class:`Thresholds`, a configured rule: the flags that set it and the thresholds
  file it is saved as;
* :mod:`.apply` -- applying a rule to a stream of records (rt-threshold) or an iterable (:func:`decide`);
* :mod:`.fitting` -- choosing thresholds for an objective (rt-threshold --fit).

Applying rules needs nothing but the standard library and orjson; fitting imports numpy lazily.
"""

from __future__ import annotations

from .apply import apply_stream, check_slug_set, decide
from .fitting import (
    OBJECTIVE_METRIC,
    FitData,
    best_index,
    candidate_thresholds,
    collect_fit_data,
    confusion,
    count_at_least,
    fit,
    fit_threshold,
    objective_scores,
)
from .objectives import OBJECTIVE_ALIASES, OBJECTIVE_NAMES, Objective
from .rules import (
    DEFAULT_KEY,
    REFUSE,
    RESPOND,
    TIE_TOLERANCE,
    Decision,
    argmax_slug,
    category_rule,
    check_probability,
    check_threshold,
    get_p_cat,
    get_probability,
    global_rule,
    own_choice,
    own_choice_category,
    own_rule,
)
from .spec import Thresholds, parse_cat_option, parse_cats, same_category

__all__ = [
    "DEFAULT_KEY",
    "OBJECTIVE_ALIASES",
    "OBJECTIVE_METRIC",
    "OBJECTIVE_NAMES",
    "REFUSE",
    "RESPOND",
    "TIE_TOLERANCE",
    "Decision",
    "FitData",
    "Objective",
    "Thresholds",
    "apply_stream",
    "argmax_slug",
    "best_index",
    "candidate_thresholds",
    "category_rule",
    "check_probability",
    "check_slug_set",
    "check_threshold",
    "collect_fit_data",
    "confusion",
    "count_at_least",
    "decide",
    "fit",
    "fit_threshold",
    "get_p_cat",
    "get_probability",
    "global_rule",
    "objective_scores",
    "own_choice",
    "own_choice_category",
    "own_rule",
    "parse_cat_option",
    "parse_cats",
    "same_category",
]
