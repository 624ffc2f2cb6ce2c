"""The decision rules on plain numbers, and the fields of a scored record they read.

A scored record carries ``p_refuse`` and ``p_respond`` and, in category mode, ``p_cat``
(``{slug: probability}``). Three rules turn it into ``decision`` (``"refuse"``/``"respond"``)
and ``decision_cat`` (a slug or None):

* **own choice** (no threshold), the paper's default: single mode refuses iff
  ``p_refuse > p_respond``; category mode takes the argmax over all control tokens (each
  ``p_cat[slug]`` and ``p_respond``) and refuses iff a category wins. Ties go to respond;
  among tied categories the first in ``p_cat`` order wins.
* **global threshold** ``T``: refuse iff ``p_refuse >= T``; ``decision_cat`` is the argmax
  slug of ``p_cat`` when refused and ``p_cat`` is present.
* **per-category thresholds** ``{slug: T}`` (``default`` for the rest): category ``c`` fires
  iff ``p_cat[c] >= T_c``; a category with no threshold fires by the model's own choice (it
  is the argmax over all control tokens). Refuse iff any fires; ``decision_cat`` is the
  firing slug with the highest ``p_cat`` (first in ``p_cat`` order on ties). Categories are
  independent: one category's threshold never changes whether another one fires.

Nothing here imports more than the standard library.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ..records import RecordError, json_type

REFUSE = "refuse"
RESPOND = "respond"
DEFAULT_KEY = "*"
#: Objective values closer than this count as a tie (then the higher threshold wins).
TIE_TOLERANCE = 1e-12

Decision = tuple[str, str | None]


def argmax_slug(p_cat: Mapping[str, float]) -> str | None:
    """The slug with the highest probability (first in order on ties); None when empty."""
    best: str | None = None
    best_p = -math.inf
    for slug, p in p_cat.items():
        if p > best_p:
            best, best_p = slug, p
    return best


def own_choice(p_refuse: float, p_respond: float) -> Decision:
    """Single mode, no threshold: refuse iff p_refuse > p_respond."""
    return (REFUSE, None) if p_refuse > p_respond else (RESPOND, None)


def own_choice_category(p_cat: Mapping[str, float], p_respond: float) -> Decision:
    """Category mode, no threshold: the argmax over every category token and the respond token."""
    slug = argmax_slug(p_cat)
    if slug is not None and p_cat[slug] > p_respond:
        return REFUSE, slug
    return RESPOND, None


def own_rule(p_refuse: float | None, p_respond: float, p_cat: Mapping[str, float] | None = None) -> Decision:
    """The model's own choice in either mode: :func:`own_choice_category` when ``p_cat`` is given,
    else :func:`own_choice` (the rule with no threshold; rt-generate's default choice)."""
    if p_cat is not None:
        return own_choice_category(p_cat, p_respond)
    assert p_refuse is not None
    return own_choice(p_refuse, p_respond)


def global_rule(p_refuse: float, threshold: float, p_cat: Mapping[str, float] | None = None) -> Decision:
    """Refuse iff p_refuse >= threshold; decision_cat is p_cat's argmax when refused."""
    if p_refuse >= threshold:
        return REFUSE, (argmax_slug(p_cat) if p_cat else None)
    return RESPOND, None


def category_rule(
    p_cat: Mapping[str, float],
    thresholds: Mapping[str, float],
    default: float | None = None,
    p_respond: float | None = None,
) -> Decision:
    """Per-category thresholds: each category fires on its own threshold.

    A category with no threshold (not in ``thresholds`` and no ``default``) fires when it is the
    model's own choice, which needs ``p_respond``.
    """
    own: str | None = None
    if default is None and any(slug not in thresholds for slug in p_cat):
        if p_respond is None:
            raise ValueError("p_respond is needed for categories without a threshold")
        own = own_choice_category(p_cat, p_respond)[1]
    best: str | None = None
    best_p = -math.inf
    for slug, p in p_cat.items():
        t = thresholds.get(slug, default)
        fires = slug == own if t is None else p >= t
        if fires and p > best_p:
            best, best_p = slug, p
    return (REFUSE, best) if best is not None else (RESPOND, None)


# ---------------------------------------------------------------------------
# Reading the fields a rule needs, with messages that say what is wrong.


def check_probability(value: Any, what: str) -> float:
    """A probability in [0, 1] (int 0/1 allowed, bool not); RecordError otherwise."""
    if value is None:
        raise RecordError(f"{what} is null, expected a probability")
    if value.__class__ is bool or not isinstance(value, int | float):
        raise RecordError(f"{what} must be a number, got {json_type(value)}")
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise RecordError(f"{what} is {value}, outside [0, 1]")
    return float(value)


def get_probability(record: Mapping[str, Any], key: str) -> float:
    if key not in record:
        raise RecordError(f"missing {key}", hint="score the records with rt-score first")
    return check_probability(record[key], key)


def get_p_cat(record: Mapping[str, Any], required: bool = True) -> dict[str, float] | None:
    """``p_cat`` checked: an object of probabilities; None when absent and not required."""
    pc = record.get("p_cat")
    if pc is None:
        if required:
            raise RecordError(
                "missing p_cat: per-category thresholds need category-mode scores",
                hint="score with a category-mode adapter, or use --threshold",
            )
        return None
    if not isinstance(pc, dict):
        raise RecordError(f"p_cat must be an object {{slug: probability}}, got {json_type(pc)}")
    if not pc:
        raise RecordError("p_cat is empty")
    for slug, p in pc.items():
        check_probability(p, f"p_cat.{slug}")
    return pc


def check_threshold(value: Any, what: str = "threshold") -> float:
    """A threshold: a number in [0, 1]; ValueError otherwise."""
    if value.__class__ is bool or not isinstance(value, int | float):
        raise ValueError(f"{what} must be a number in [0, 1], got {json_type(value)}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{what} must be in [0, 1], got {value}")
    return float(value)
