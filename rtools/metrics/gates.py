"""Gates (rt-metrics --fail-under / --fail-over): bounds on summary keys that make a run fail, for
make and cron. A gate names any numeric summary key (:data:`~rtools.metrics.keys.METRICS`),
optionally within a category (``safety.recall``); a null or absent value fails."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..config import parse_number, parse_pair
from .keys import METRICS, P_CAT_CALIBRATION_KEYS


@dataclass(frozen=True)
class Gate:
    """``metric`` (optionally ``category.metric``) must be >= (``under``) or <= (``over``) ``value``."""

    metric: str
    value: float
    kind: str  #: "under" (--fail-under) or "over" (--fail-over)
    category: str | None = None

    @property
    def name(self) -> str:
        return self.metric if self.category is None else f"{self.category}.{self.metric}"

    @classmethod
    def parse(cls, text: str, kind: str) -> Gate:
        """``METRIC=V`` or ``CATEGORY.METRIC=V``; ValueError with a usable message otherwise."""
        name, value = parse_pair(text, "METRIC=VALUE")
        assert name is not None
        category, dot, metric = name.rpartition(".")
        if not dot:
            category, metric = "", name
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; valid metrics: {', '.join(METRICS)}")
        if metric in P_CAT_CALIBRATION_KEYS and not category:
            raise ValueError(f"{metric} is a per-category metric: name the category, e.g. safety.{metric}")
        v = parse_number(value, f"the bound of {name}")
        return cls(metric=metric, value=v, kind=kind, category=category or None)

    def check(self, summary: dict[str, Any]) -> str | None:
        """None when the gate passes, else the failure message (without the program name)."""
        scope = summary if self.category is None else summary.get("by_category", {}).get(self.category)
        if scope is None:
            return f"gate failed: no category {self.category!r} in the input"
        actual = scope.get(self.metric)
        op = ">=" if self.kind == "under" else "<="
        if actual is None:
            return (
                f"gate failed: {self.name} is null (undefined for this input), required {op} {self.value:g}"
            )
        if self.kind == "under" and actual < self.value:
            return f"gate failed: {self.name}={actual:.6g} < {self.value:g}"
        if self.kind == "over" and actual > self.value:
            return f"gate failed: {self.name}={actual:.6g} > {self.value:g}"
        return None


def check_gates(summary: dict[str, Any], gates: Iterable[Gate]) -> list[str]:
    """The failure messages of every gate that fails (empty: all pass)."""
    return [msg for g in gates if (msg := g.check(summary)) is not None]
