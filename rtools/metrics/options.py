"""What rt-metrics measures: :class:`MetricsOptions` (checked once, when built) and :func:`load`,
which reads the records into the arrays those options need."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..config import BadValue, ConfigError
from ..records import numbered
from .reading import EvalData, collect

if TYPE_CHECKING:
    from .gates import Gate


@dataclass(frozen=True)
class MetricsOptions:
    """What rt-metrics computes (frozen; checked when built: a bad value or a combination that would
    ignore an option raises a ConfigError; a bad value, a BadValue naming its field).

    ``threshold``: decide ``p_refuse >= T`` instead of reading ``decision``. ``sweep``: rows per
    threshold instead of a summary (``sweep_points``: N evenly spaced, or ``"all"``). ``plot``: a PNG
    path. ``bootstrap``: N resamples for ``ci`` intervals at level ``ci``, seeded by ``seed``.
    ``gates``: :class:`Gate` checks of the summary.
    """

    threshold: float | None = None
    sweep: bool = False
    sweep_points: int | str = 101
    plot: str | None = None
    bootstrap: int = 0
    seed: int = 0
    ci: float = 0.95
    gates: tuple[Gate, ...] = ()

    def __post_init__(self) -> None:
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:  # also NaN
            raise BadValue(f"{self.threshold} is not in [0, 1]", "threshold")
        if self.sweep_points != "all" and (not isinstance(self.sweep_points, int) or self.sweep_points < 2):
            raise BadValue(f"a sweep needs at least 2 points, got {self.sweep_points}", "sweep_points")
        if self.bootstrap < 0:
            raise BadValue(f"{self.bootstrap} is negative", "bootstrap")
        if not 0.0 < self.ci < 1.0:
            raise BadValue(f"{self.ci} is not in (0, 1)", "ci")
        if self.sweep:
            if self.gates:
                raise ConfigError(
                    "--fail-under/--fail-over check the summary; they do not combine with --sweep"
                )
            if self.bootstrap:
                raise ConfigError(
                    "--bootstrap adds intervals to the summary; it does not combine with --sweep"
                )
            if self.threshold is not None:
                raise ConfigError(
                    "--threshold decides at one threshold and --sweep tries them all: give one of them"
                )


def load(records: Iterable[Any], options: MetricsOptions, name: str = "<input>") -> EvalData:
    """Read every record (or ``(line, record)`` pair) into the arrays ``options`` needs.

    ``p_cat[slug]`` of each row's own category is always read (when every row has p_refuse): the
    summary's per-category calibration, the sweeps and the plot use it.
    """
    needs = "--sweep needs it" if options.sweep else "--plot needs it" if options.plot else ""
    return collect(
        numbered(records),
        name,
        threshold=options.threshold,
        need_decision=not options.sweep,
        need_scores=bool(needs),
        category_scores=True,
        need_hint=needs,
    )
