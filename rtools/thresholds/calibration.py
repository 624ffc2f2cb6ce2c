"""Calibrating scores on a labelled dev split, so that p_refuse means what it says.

A :class:`Calibration` maps each score field to a calibrated probability: ``p_refuse`` (labels:
``label == "refuse"``) and, for category-mode scores, each ``p_cat.SLUG`` (one against the rest: a
refusal of category SLUG; refuse records without a known category are left out of these fits).
Three methods, each fitted by minimising the log loss on the dev records:

* ``temperature``: ``sigmoid(logit(p) / T)``, one temperature per field (T > 1 softens, T < 1
  sharpens; the order of the scores is kept);
* ``platt``: ``sigmoid(a * logit(p) + b)``, a scale and a bias per field;
* ``isotonic``: the non-decreasing step function closest to the labels (pool adjacent violators),
  stored as its breakpoints and interpolated linearly between them, as scikit-learn's
  IsotonicRegression predicts; constant beyond the first and last breakpoint.

Scores are clipped to [1e-12, 1 - 1e-12] before the logit. The calibration is saved in the
thresholds file under ``"calibration"`` (JSON, ``"version": 1``; numbers only, never a pickle) and
read back strictly: an unknown key, a number out of range or breakpoints out of order are errors.
Applying it rewrites ``p_refuse`` and ``p_cat`` to the calibrated values and keeps the raw ones as
``p_refuse_raw`` and ``p_cat_raw``; a record that already has a raw field is calibrated from it, so
applying a calibration twice changes nothing. Fitting imports numpy lazily; applying needs only the
standard library.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..records import RecordError, json_type
from ..tokens import slugify
from .rules import REFUSE, RESPOND, check_probability

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

VERSION = 1
METHODS = ("temperature", "platt", "isotonic")
EPS = 1e-12
RAW = {"p_refuse": "p_refuse_raw", "p_cat": "p_cat_raw"}
#: Newton's method stops when a step moves every parameter by less than this.
TOLERANCE = 1e-12
#: ... and gives up (the labels separate the scores: the log loss has no minimum) past this scale.
MAX_SCALE = 1e4


def logit(p: float) -> float:
    p = min(max(p, EPS), 1.0 - EPS)
    return math.log(p / (1.0 - p))


def sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


@dataclass(frozen=True)
class Scaling:
    """``sigmoid(scale * logit(p) + bias)``: temperature scaling (bias 0, scale 1/T) or Platt scaling."""

    scale: float
    bias: float = 0.0

    def __call__(self, p: float) -> float:
        return sigmoid(self.scale * logit(p) + self.bias)


@dataclass(frozen=True)
class Isotonic:
    """A non-decreasing piecewise-linear map through the breakpoints ``(x[i], y[i])``."""

    x: tuple[float, ...]
    y: tuple[float, ...]

    def __call__(self, p: float) -> float:
        x, y = self.x, self.y
        i = bisect.bisect_right(x, p)
        if i == 0:
            return y[0]
        if i == len(x):
            return y[-1]
        x0, x1, y0, y1 = x[i - 1], x[i], y[i - 1], y[i]
        return y0 + (y1 - y0) * (p - x0) / (x1 - x0)


Map = Scaling | Isotonic


@dataclass(frozen=True)
class Calibration:
    """Calibrated maps by field (``p_refuse``, ``p_cat.SLUG``), the method that fitted them, and
    what they were fitted on (``n`` records of ``fitted_on``)."""

    method: str
    maps: dict[str, Map]
    n: int | None = None
    fitted_on: str | None = None
    #: per field, the log loss on the fitting records before and after; not saved
    log_loss: dict[str, tuple[float, float]] = field(default_factory=dict, compare=False, repr=False)
    #: what the fit could not do (a category left as it is), for stderr; not saved
    notes: tuple[str, ...] = field(default=(), compare=False, repr=False)

    @property
    def p_cat_slugs(self) -> list[str]:
        return [f.removeprefix("p_cat.") for f in self.maps if f.startswith("p_cat.")]

    # -- applying -----------------------------------------------------------------------

    def apply(self, record: dict[str, Any]) -> None:
        """Rewrite the record's calibrated fields in place, keeping the raw values (RecordError for
        a bad field, without the position)."""
        m = self.maps.get("p_refuse")
        raw_key = RAW["p_refuse"]
        source = raw_key if raw_key in record else "p_refuse"
        if m is not None and source in record:
            raw = record[source]
            record["p_refuse"] = m(check_probability(raw, source))
            record[raw_key] = raw
        slugs = self.p_cat_slugs
        source = RAW["p_cat"] if RAW["p_cat"] in record else "p_cat"
        if slugs and source in record:
            raw_pc = record[source]
            if not isinstance(raw_pc, dict) or not raw_pc:
                raise RecordError(
                    f"{source} must be a non-empty object {{slug: probability}}, got {json_type(raw_pc)}"
                )
            calibrated = {}
            for slug, p in raw_pc.items():
                m = self.maps.get(f"p_cat.{slug}")
                if m is None:
                    raise RecordError(
                        f"{source} has {slug!r}, which the calibration has no map for (it has: {', '.join(slugs)})",
                        hint="calibrate on records scored with the same token map",
                    )
                calibrated[slug] = m(check_probability(p, f"{source}.{slug}"))
            record["p_cat"] = calibrated
            record[RAW["p_cat"]] = raw_pc

    def applied(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """A calibrated copy of ``record``."""
        r = dict(record)
        self.apply(r)
        return r

    # -- the file format ------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        for name, m in self.maps.items():
            if isinstance(m, Isotonic):
                fields[name] = {"x": list(m.x), "y": list(m.y)}
            elif self.method == "temperature":
                fields[name] = {"temperature": 1.0 / m.scale}
            else:
                fields[name] = {"scale": m.scale, "bias": m.bias}
        d: dict[str, Any] = {"version": VERSION, "method": self.method, "fields": fields}
        if self.n is not None:
            d["n"] = self.n
        if self.fitted_on is not None:
            d["fitted_on"] = self.fitted_on
        return d

    @classmethod
    def from_dict(cls, d: Any) -> Calibration:
        """Parse a ``"calibration"`` object strictly; ValueError naming what is wrong."""
        _keys(d, "calibration", required=("version", "method", "fields"), optional=("n", "fitted_on"))
        if d["version"] != VERSION or d["version"].__class__ is not int:
            raise ValueError(f"calibration.version must be {VERSION}, got {d['version']!r}")
        method = d["method"]
        if method not in METHODS:
            raise ValueError(f"calibration.method must be one of {', '.join(METHODS)}, got {method!r}")
        n, fitted_on = d.get("n"), d.get("fitted_on")
        if n is not None and (n.__class__ is not int or n < 1):
            raise ValueError(f"calibration.n must be a positive integer, got {n!r}")
        if fitted_on is not None and not isinstance(fitted_on, str):
            raise ValueError(f"calibration.fitted_on must be a string, got {json_type(fitted_on)}")
        fields = d["fields"]
        if not isinstance(fields, dict) or not fields:
            raise ValueError(f"calibration.fields must be a non-empty object, got {json_type(fields)}")
        maps: dict[str, Map] = {}
        for name, spec in fields.items():
            if name != "p_refuse" and not (name.startswith("p_cat.") and len(name) > len("p_cat.")):
                raise ValueError(f"calibration.fields.{name}: expected p_refuse or p_cat.SLUG")
            maps[name] = _map_from_dict(spec, method, f"calibration.fields.{name}")
        return cls(method=method, maps=maps, n=n, fitted_on=fitted_on)


def raw_view(record: Mapping[str, Any]) -> Mapping[str, Any]:
    """``record`` with the raw scores of an earlier calibration (p_refuse_raw, p_cat_raw) in their places."""
    if RAW["p_refuse"] not in record and RAW["p_cat"] not in record:
        return record
    view = dict(record)
    for name, raw in RAW.items():
        if raw in record:
            view[name] = record[raw]
    return view


def _keys(d: Any, what: str, required: Iterable[str], optional: Iterable[str] = ()) -> None:
    if not isinstance(d, dict):
        raise ValueError(f"{what} must be an object, got {json_type(d)}")
    required = tuple(required)
    unknown = [k for k in d if k not in required and k not in optional]
    if unknown:
        raise ValueError(
            f"{what} has unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}"
        )
    missing = [k for k in required if k not in d]
    if missing:
        raise ValueError(f"{what} lacks {', '.join(map(repr, missing))}")


def _number(value: Any, what: str, low: float = -math.inf, high: float = math.inf) -> float:
    if value.__class__ is bool or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(
            f"{what} must be a finite number, got {json_type(value) if not isinstance(value, float) else value}"
        )
    if not low <= value <= high:
        raise ValueError(f"{what} must be in [{low:g}, {high:g}], got {value}")
    return float(value)


def _map_from_dict(spec: Any, method: str, what: str) -> Map:
    if method == "temperature":
        _keys(spec, what, required=("temperature",))
        t = _number(spec["temperature"], f"{what}.temperature")
        if t <= 0:
            raise ValueError(f"{what}.temperature must be positive, got {t}")
        return Scaling(1.0 / t)
    if method == "platt":
        _keys(spec, what, required=("scale", "bias"))
        return Scaling(_number(spec["scale"], f"{what}.scale"), _number(spec["bias"], f"{what}.bias"))
    _keys(spec, what, required=("x", "y"))
    xs, ys = spec["x"], spec["y"]
    if not isinstance(xs, list) or not isinstance(ys, list) or not xs or len(xs) != len(ys):
        raise ValueError(f"{what}: x and y must be lists of breakpoints of one length, at least one")
    x = tuple(_number(v, f"{what}.x[{i}]", 0.0, 1.0) for i, v in enumerate(xs))
    y = tuple(_number(v, f"{what}.y[{i}]", 0.0, 1.0) for i, v in enumerate(ys))
    for i in range(1, len(x)):
        if not x[i - 1] < x[i]:
            raise ValueError(
                f"{what}.x must be strictly increasing: x[{i - 1}] = {x[i - 1]}, x[{i}] = {x[i]}"
            )
        if not y[i - 1] <= y[i]:
            raise ValueError(f"{what}.y must be non-decreasing: y[{i - 1}] = {y[i - 1]}, y[{i}] = {y[i]}")
    return Isotonic(x, y)


# ---------------------------------------------------------------------------
# Fitting.


def fit_calibration(
    records: Iterable[tuple[int, dict[str, Any]]], method: str, fitted_on: str | None = None
) -> Calibration:
    """Fit a calibration of ``p_refuse`` (when every record has it) and of each ``p_cat`` slug (when
    every record has ``p_cat``) on ``(line, record)`` pairs with a gold ``label``; RecordError with
    the file and line for a bad record, and naming the field for one that cannot be calibrated."""
    import numpy as np

    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}: expected {', '.join(METHODS)}")
    columns, n = _columns(records, fitted_on)
    maps: dict[str, Map] = {}
    losses: dict[str, tuple[float, float]] = {}
    notes: list[str] = []
    for field_name, (s, t) in columns.items():
        if t.all() or not t.any():
            kind = "refused" if field_name == "p_refuse" else f"a refusal of category {field_name[6:]}"
            why = f"{'every' if t.all() else 'no'} record is {kind}"
            if field_name == "p_refuse":  # nothing to calibrate against: the whole fit is void
                raise RecordError(
                    f"cannot calibrate {field_name}: {why}",
                    path=fitted_on,
                    hint="calibrate on records of both kinds",
                )
            # one category missing from a small dev split: the others are still worth calibrating;
            # this one is kept as it is, saved as an explicit identity map, and said on stderr
            maps[field_name] = _identity(method)
            notes.append(
                f"{field_name} left uncalibrated (an identity map): {why} in "
                f"{fitted_on or '<input>'}; add records of both kinds to calibrate it"
            )
            continue
        try:
            maps[field_name] = _FITTERS[method](s, t)
        except ValueError as e:
            raise RecordError(f"cannot calibrate {field_name} by {method}: {e}", path=fitted_on) from None
        m = maps[field_name]
        losses[field_name] = (log_loss(s, t), log_loss(np.array([m(float(p)) for p in s]), t))
    return Calibration(
        method=method, maps=maps, n=n, fitted_on=fitted_on, log_loss=losses, notes=tuple(notes)
    )


def _identity(method: str) -> Map:
    """The map that leaves a score as it is, in ``method``'s form (so the file stays one method)."""
    return Isotonic((0.0, 1.0), (0.0, 1.0)) if method == "isotonic" else Scaling(1.0)


def _columns(
    records: Iterable[tuple[int, dict[str, Any]]], fitted_on: str | None
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], int]:
    """The scores and 0/1 targets of each field to calibrate, read from ``(line, record)`` pairs, and
    the number of records."""
    import numpy as np

    name = fitted_on or "<input>"
    labels: list[bool] = []
    cats: list[str | None] = []
    p_refuse: list[float] = []
    p_cat: list[list[float]] = []
    every_p_refuse = every_p_cat = True  # a field is calibrated when every record has it
    slugs: list[str] = []
    for lineno, r in records:
        try:
            label = r.get("label")
            if label not in (REFUSE, RESPOND):
                raise RecordError(
                    "missing label: calibration needs a gold label on every record"
                    if label is None
                    else f"label must be 'refuse' or 'respond', got {label!r}"
                )
            try:
                cats.append(slugify(r.get("category")))
            except ValueError as e:
                raise RecordError(str(e)) from None
            labels.append(label == REFUSE)
            every_p_refuse = every_p_refuse and "p_refuse" in r
            if every_p_refuse:
                p_refuse.append(check_probability(r["p_refuse"], "p_refuse"))
            every_p_cat = every_p_cat and r.get("p_cat") is not None
            if every_p_cat:
                slugs = slugs or _slugs(r["p_cat"])
                p_cat.append(_p_cat_row(r["p_cat"], slugs))
        except RecordError as e:
            raise RecordError(e.message, path=name, line=lineno, hint=e.hint) from None
    if not labels:
        raise RecordError("no records to calibrate on", path=fitted_on)
    y = np.array(labels, dtype=bool)
    columns: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if every_p_refuse:
        columns["p_refuse"] = (np.array(p_refuse), y)
    if every_p_cat:
        scores = np.array(p_cat).reshape(len(labels), len(slugs))
        keep = ~y | np.array([c in slugs for c in cats])  # an unknown category's refusal says nothing
        for j, slug in enumerate(slugs):
            target = y & np.array([c == slug for c in cats])
            columns[f"p_cat.{slug}"] = (scores[keep, j], target[keep])
    if not columns:
        raise RecordError("nothing to calibrate: no p_refuse or p_cat on every record", path=fitted_on)
    return columns, len(labels)


def _slugs(pc: Any) -> list[str]:
    if not isinstance(pc, dict) or not pc:
        raise RecordError(f"p_cat must be a non-empty object {{slug: probability}}, got {json_type(pc)}")
    return list(pc)


def _p_cat_row(pc: Any, slugs: list[str]) -> list[float]:
    if _slugs(pc) and set(pc) != set(slugs):
        raise RecordError(f"p_cat has {', '.join(pc)} (earlier records have: {', '.join(slugs)})")
    return [check_probability(pc[s], f"p_cat.{s}") for s in slugs]


def log_loss(p: np.ndarray, y: np.ndarray) -> float:
    """The mean negative log likelihood of labels ``y`` under probabilities ``p`` (clipped to [EPS, 1-EPS])."""
    import numpy as np

    q = np.clip(p, EPS, 1.0 - EPS)
    return float(-np.mean(np.where(y, np.log(q), np.log1p(-q))))


def _logits(s: np.ndarray) -> np.ndarray:
    import numpy as np

    q = np.clip(np.asarray(s, dtype=np.float64), EPS, 1.0 - EPS)
    return np.log(q) - np.log1p(-q)


def _newton(z: np.ndarray, y: np.ndarray, with_bias: bool) -> tuple[float, float]:
    """The (scale, bias) minimising the log loss of ``sigmoid(scale * z + bias)`` against ``y``
    (bias fixed at 0 unless ``with_bias``): Newton's method with a backtracking line search on a
    convex loss. ValueError when the minimum is at infinity (the labels separate the scores)."""
    import numpy as np

    pos, neg = z[y], z[~y]
    if z.min() == z.max():
        raise ValueError("every score is the same, so there is no scale to fit: use isotonic")
    if with_bias:
        separated = pos.min() >= neg.max() or neg.min() >= pos.max()
    else:
        separated = pos.min() >= 0 >= neg.max() or neg.min() >= 0 >= pos.max()
    if separated:
        raise ValueError(
            "the scores separate refusals from answers, so the log loss has no minimum "
            "(the fitted scale would be infinite): use isotonic"
        )
    t = y.astype(np.float64)
    x = np.stack([z, np.ones_like(z)], axis=1) if with_bias else z[:, None]

    def loss(w: np.ndarray) -> float:
        u = x @ w
        return float(np.sum(np.logaddexp(0.0, u) - t * u))

    w = np.zeros(x.shape[1])
    w[0] = 1.0  # start from the identity map
    current = loss(w)
    for _ in range(200):
        u = x @ w
        p = np.exp(-np.logaddexp(0.0, -u))  # sigmoid(u), without overflow
        grad = x.T @ (p - t)
        hess = (x * (p * (1.0 - p))[:, None]).T @ x + 1e-12 * np.eye(x.shape[1])
        step = np.linalg.solve(hess, grad)
        alpha = 1.0
        while alpha > 1e-10:
            trial = w - alpha * step
            new = loss(trial)
            if new <= current + 1e-15 * abs(current):
                break
            alpha /= 2
        w, current = trial, new
        if abs(w[0]) > MAX_SCALE:
            raise ValueError("the labels separate the scores, so the log loss has no minimum (try isotonic)")
        if np.max(np.abs(alpha * step)) < TOLERANCE:
            break
    return float(w[0]), float(w[1]) if with_bias else 0.0


def _fit_temperature(s: np.ndarray, y: np.ndarray) -> Scaling:
    scale, _ = _newton(_logits(s), y, with_bias=False)
    if scale <= 0:
        raise ValueError(
            "the scores rank refusals below answers; a temperature cannot reverse them (try platt)"
        )
    return Scaling(scale)


def _fit_platt(s: np.ndarray, y: np.ndarray) -> Scaling:
    return Scaling(*_newton(_logits(s), y, with_bias=True))


def _fit_isotonic(s: np.ndarray, y: np.ndarray) -> Isotonic:
    """Pool adjacent violators on the labels sorted by score (ties pooled first); the breakpoints are
    the first and last score of each pooled block (scikit-learn's X_thresholds_ / y_thresholds_)."""
    import numpy as np

    order = np.argsort(s, kind="stable")
    xs, ys = np.asarray(s, dtype=np.float64)[order], y[order].astype(np.float64)
    ux, start = np.unique(xs, return_index=True)
    counts = np.diff(np.append(start, len(xs)))
    sums = np.add.reduceat(ys, start)
    # blocks: [first x, last x, sum of labels, weight]
    blocks: list[list[float]] = []
    for x, total, weight in zip(ux.tolist(), sums.tolist(), counts.tolist(), strict=True):
        blocks.append([x, x, total, weight])
        # pool a violator, and an equal neighbour too (the same function, fewer breakpoints)
        while len(blocks) > 1 and blocks[-2][2] / blocks[-2][3] >= blocks[-1][2] / blocks[-1][3]:
            last = blocks.pop()
            blocks[-1][1] = last[1]
            blocks[-1][2] += last[2]
            blocks[-1][3] += last[3]
    bx: list[float] = []
    by: list[float] = []
    for first, last, total, weight in blocks:
        value = total / weight
        bx.append(first)
        by.append(value)
        if last != first:
            bx.append(last)
            by.append(value)
    return Isotonic(tuple(bx), tuple(by))


_FITTERS = {"temperature": _fit_temperature, "platt": _fit_platt, "isotonic": _fit_isotonic}
