"""Confusion counts and the rates made from them: the one definition rt-metrics and fitting share.

Positive class = refuse. A rate whose denominator is 0 is None (JSON null), as RECORDS.md says:
no refuse rows means recall is undefined, not 0. Plain Python, so that rt-threshold applies and
fits rules without numpy's rates.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


def ratio(num: float, den: float) -> float | None:
    """``num / den``, or None when ``den`` is 0."""
    return float(num) / float(den) if den else None


@dataclass(frozen=True)
class Counts:
    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    @classmethod
    def of(cls, refused: Iterable[bool], labels: Iterable[bool]) -> Counts:
        """Count decisions (True = refuse) against gold labels (True = refuse)."""
        tp = fp = tn = fn = 0
        for d, y in zip(refused, labels, strict=True):
            if d and y:
                tp += 1
            elif d:
                fp += 1
            elif y:
                fn += 1
            else:
                tn += 1
        return cls(tp=tp, fp=fp, tn=tn, fn=fn)


def rates(c: Counts) -> dict[str, float | None]:
    """Precision, recall, F1, accuracy and the refusal rates from confusion counts."""
    return {
        "precision": ratio(c.tp, c.tp + c.fp),
        "recall": ratio(c.tp, c.tp + c.fn),
        "f1": ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn),
        "accuracy": ratio(c.tp + c.tn, c.n),
        "refusal_rate": ratio(c.tp + c.fp, c.n),
        "false_refusal_rate": ratio(c.fp, c.fp + c.tn),
        "missed_refusal_rate": ratio(c.fn, c.fn + c.tp),
    }


def counts_and_rates(c: Counts) -> dict[str, Any]:
    """``n``, ``tp``, ``fp``, ``tn``, ``fn`` and :func:`rates`: the point metrics of a summary."""
    return {"n": c.n, "tp": c.tp, "fp": c.fp, "tn": c.tn, "fn": c.fn, **rates(c)}


def confusion_summary(refused: Iterable[bool], labels: Iterable[bool]) -> dict[str, Any]:
    """:func:`counts_and_rates` of decisions against gold labels."""
    return counts_and_rates(Counts.of(refused, labels))
