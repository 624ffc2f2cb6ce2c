"""What a threshold fit optimises (``rt-threshold --fit OBJECTIVE``): its kinds, names and parsing.

Apart from the fitting itself (rtools.thresholds.fitting) so that a saved fit's summary
(rtools.thresholds.spec) can name its objective without importing the fitting code.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Objective:
    """What a fit optimises; ``kind`` is one of :data:`OBJECTIVES`, ``target`` its number.

    ``f1``: maximise F1. ``rate``: refusal rate closest to the target. ``fpr``: maximise recall
    with false_refusal_rate <= target. ``missed``: the highest threshold (fewest refusals, so the
    lowest false-refusal rate) with missed_refusal_rate <= target. ``budget``: the lowest threshold
    with refusal_rate <= target, needing no labels. ``spelled`` is how the objective is written
    (``recall=0.95`` is ``missed`` with target 0.05); it does not take part in comparisons.
    """

    kind: str
    target: float | None = None
    spelled: str | None = field(default=None, compare=False)

    def __str__(self) -> str:
        if self.spelled is not None:
            return self.spelled
        name = OBJECTIVE_NAMES[self.kind]
        return name if self.target is None else f"{name}={self.target:g}"

    @property
    def needs_labels(self) -> bool:
        return self.kind != "budget"

    @classmethod
    def parse(cls, text: str) -> Objective:
        """``f1``, ``false_refusal_rate=R`` (alias ``fpr=R``), ``missed_refusal_rate=R`` (``missed=R``),
        ``recall=R``, ``refusal_rate=R`` (``rate=R``) or ``budget=B``; ValueError otherwise."""
        name, sep, value = text.strip().partition("=")
        name = name.strip().lower()
        kind = OBJECTIVE_ALIASES.get(name)
        if kind == "f1" and not sep:
            return cls("f1")
        if kind is not None and kind != "f1":
            if not sep:
                raise ValueError(f"{name} needs a target, e.g. {name}={0.95 if name == 'recall' else 0.05}")
            try:
                target = float(value)
            except ValueError:
                raise ValueError(f"{name} target is not a number: {value!r}") from None
            if not 0.0 <= target <= 1.0:  # also rejects NaN
                raise ValueError(f"{name} target must be in [0, 1], got {value.strip()}")
            if name == "recall":  # recall=R is missed_refusal_rate=1-R
                return cls("missed", 1.0 - target, spelled=f"recall={target:g}")
            return cls(kind, target)
        raise ValueError(
            f"unknown objective {text!r}: expected f1, false_refusal_rate=R (fpr=R), "
            "missed_refusal_rate=R (missed=R), recall=R, refusal_rate=R (rate=R) or budget=B"
        )


#: Each objective kind's name in the thresholds file and the summary: rt-metrics' keys.
OBJECTIVE_NAMES = {
    "f1": "f1",
    "rate": "refusal_rate",
    "fpr": "false_refusal_rate",
    "missed": "missed_refusal_rate",
    "budget": "budget",
}
#: Every accepted spelling -> kind (the short names are aliases of rt-metrics' keys).
OBJECTIVE_ALIASES = {
    "f1": "f1",
    "refusal_rate": "rate",
    "rate": "rate",
    "false_refusal_rate": "fpr",
    "fpr": "fpr",
    "missed_refusal_rate": "missed",
    "missed": "missed",
    "recall": "missed",
    "budget": "budget",
}
