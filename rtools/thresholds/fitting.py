"""Fitting thresholds on labelled (or, for a budget, unlabelled) scores.

Objectives are named by rt-metrics' summary keys: ``f1`` (positive class = refuse),
``refusal_rate=R`` (alias ``rate=R``: the refusal rate closest to R), ``false_refusal_rate=R``
(alias ``fpr=R``: maximum recall with fp/(fp+tn) <= R), ``missed_refusal_rate=R`` (alias
``missed=R``; ``recall=R`` is ``missed=1-R``: the highest threshold, so the fewest refusals and the
lowest false-refusal rate, with fn/(fn+tp) <= R) and ``budget=B`` (the lowest threshold with refusal
rate <= B, a quantile of the scores; the only objective that needs no labels). Candidate thresholds
are 0, 1 and the midpoints between consecutive distinct scores, so fits are deterministic; among
equally good candidates the highest threshold (fewest refusals) wins.

Ties: ``p >= t`` refuses, so rows with the same score are always decided together and a rate counts
every tied row on the same side: when a tie straddles the target (say 10 rows at one score and room
for 3 within the budget), the whole tie stays below the threshold and the reached rate is below the
target. Nothing is split at random. When no candidate meets a false-refusal target (the respond rows
at p = 1 alone exceed it), the fit falls back to the lowest false-refusal rate; a budget that no
threshold in [0, 1] meets (the rows at p = 1 alone exceed it) is an error. Fitting imports numpy
lazily.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import RtoolsError
from ..rates import confusion_summary
from ..records import RecordError, numbered
from ..tokens import slugify
from .objectives import Objective
from .rules import REFUSE, RESPOND, TIE_TOLERANCE, get_p_cat, get_probability
from .spec import Thresholds

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np


@dataclass
class FitData:
    """Labelled scores for fitting: one row per record."""

    labels: list[bool | None]  # True = gold refuse; None = no label (only a budget fit allows it)
    categories: list[str | None]  # gold category slug, if any
    p_refuse: list[float] = field(default_factory=list)
    slugs: list[str] = field(default_factory=list)  # p_cat columns (per-category fits)
    p_cat: list[list[float]] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.labels)


def collect_fit_data(
    records: Iterable[tuple[int, dict[str, Any]]],
    name: str,
    per_category: bool,
    keep: list | None = None,
    need_labels: bool = True,
) -> FitData:
    """Read what a fit needs from ``(line, record)`` pairs; RecordError with file:line on bad rows.

    ``keep``, when given, receives the ``(line, record)`` pairs (to write them out after the fit).
    ``need_labels=False`` (a budget fit) lets records go without a ``label`` (stored as None).
    """
    data = FitData(labels=[], categories=[])
    for lineno, r in records:
        try:
            label = r.get("label")
            if label not in (REFUSE, RESPOND) and (need_labels or label is not None):
                if label is None:
                    raise RecordError(
                        "missing label: fitting needs a gold label on every record",
                        hint="--fit budget=B needs no labels",
                    )
                raise RecordError(f"label must be 'refuse' or 'respond', got {label!r}")
            try:
                cat = slugify(r.get("category"))
            except ValueError as e:
                raise RecordError(str(e)) from None
            if per_category:
                pc = get_p_cat(r, required=True)
                assert pc is not None
                if not data.slugs:
                    data.slugs = list(pc)
                try:
                    row = [pc[s] for s in data.slugs]
                except KeyError:
                    missing = [s for s in data.slugs if s not in pc]
                    raise RecordError(
                        f"p_cat has no {', '.join(map(repr, missing))} (earlier records have: {', '.join(data.slugs)})"
                    ) from None
                if len(pc) != len(data.slugs):
                    extra = [s for s in pc if s not in data.slugs]
                    raise RecordError(
                        f"p_cat has {', '.join(map(repr, extra))}, which earlier records have not"
                        f" (they have: {', '.join(data.slugs)})"
                    )
                data.p_cat.append([float(x) for x in row])
            else:
                data.p_refuse.append(get_probability(r, "p_refuse"))
        except RecordError as e:
            raise RecordError(e.message, path=name, line=lineno, hint=e.hint) from None
        data.labels.append(None if label is None else label == REFUSE)
        data.categories.append(cat)
        if keep is not None:
            keep.append((lineno, r))
    return data


def candidate_thresholds(scores: np.ndarray) -> np.ndarray:
    """0, 1 and the midpoints between consecutive distinct scores, ascending."""
    import numpy as np

    u = np.unique(np.asarray(scores, dtype=np.float64))
    mids = (u[:-1] + u[1:]) / 2.0
    return np.unique(np.concatenate([np.array([0.0, 1.0]), mids]))


def count_at_least(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """For each threshold t, how many scores are >= t."""
    import numpy as np

    s = np.sort(np.asarray(scores, dtype=np.float64))
    return len(s) - np.searchsorted(s, thresholds, side="left")


def objective_scores(
    tp: np.ndarray, fp: np.ndarray, n_pos: int, n_neg: int, objective: Objective
) -> np.ndarray:
    """A score to maximise for each (tp, fp) pair."""
    import numpy as np

    tp = np.asarray(tp, dtype=np.float64)
    fp = np.asarray(fp, dtype=np.float64)
    if objective.kind == "f1":
        denom = tp + fp + n_pos
        return np.divide(2.0 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    if objective.kind == "rate":
        n = n_pos + n_neg
        rate = (tp + fp) / n if n else np.zeros_like(tp)
        return -np.abs(rate - objective.target)
    if objective.kind == "fpr":
        fpr = fp / n_neg if n_neg else np.zeros_like(fp)
        recall = tp / n_pos if n_pos else np.zeros_like(tp)
        feasible = fpr <= objective.target + TIE_TOLERANCE
        if not feasible.any():  # nothing meets the target: the lowest false-refusal rate
            return -fpr
        return np.where(feasible, recall, -np.inf)
    if objective.kind == "missed":  # every candidate within the target ties: the highest wins
        missed = (n_pos - tp) / n_pos if n_pos else np.zeros_like(tp)
        return np.where(missed <= objective.target + TIE_TOLERANCE, 0.0, -np.inf)
    if objective.kind == "budget":  # the most refusals within the budget (labels are not read)
        n = n_pos + n_neg
        rate = (tp + fp) / n if n else np.zeros_like(tp)
        feasible = rate <= objective.target + TIE_TOLERANCE
        if not feasible.any():  # rows at p = 1 alone exceed the budget: no threshold in [0, 1] meets it
            raise UnmetObjective(objective, int(round(rate.min() * n)), n)
        return np.where(feasible, rate, -np.inf)
    raise ValueError(f"unknown objective {objective}")


class UnmetObjective(RtoolsError, ValueError):
    """No threshold in [0, 1] meets the objective: a budget smaller than the share of rows at p = 1,
    which every threshold refuses (``p >= t`` and ``t <= 1``)."""

    def __init__(self, objective: Objective, refused: int, n: int, where: str = ""):
        self.objective, self.refused, self.n, self.where = objective, refused, n, where
        super().__init__(
            f"{objective} cannot be met{where}: {refused} of {n} records ({refused / n:.1%}) score 1, "
            "and every threshold (at most 1) refuses them"
        )


def best_index(scores: np.ndarray) -> int:
    """Index of the best score; among (near-)ties the last one, i.e. the highest threshold."""
    import numpy as np

    best = scores.max()
    return int(np.flatnonzero(scores >= best - TIE_TOLERANCE)[-1])


def fit_threshold(
    pos: np.ndarray, neg: np.ndarray, objective: Objective, scores: np.ndarray | None = None
) -> float:
    """The best threshold for scores of gold-refuse rows ``pos`` and gold-respond rows ``neg``.

    Candidates come from ``scores`` (default: pos and neg together).
    """
    import numpy as np

    pos = np.asarray(pos, dtype=np.float64)
    neg = np.asarray(neg, dtype=np.float64)
    cand = candidate_thresholds(np.concatenate([pos, neg]) if scores is None else scores)
    tp = count_at_least(pos, cand)
    fp = count_at_least(neg, cand)
    return float(cand[best_index(objective_scores(tp, fp, len(pos), len(neg), objective))])


#: Counts and rates of decisions against labels, positive class = refuse (rt-metrics' keys; a 0/0
#: rate is None): the one confusion, from rtools.rates.
confusion = confusion_summary


#: The metric each objective reports as its value.
OBJECTIVE_METRIC = {
    "f1": "f1",
    "rate": "refusal_rate",
    "fpr": "recall",
    "missed": "false_refusal_rate",
    "budget": "refusal_rate",
}


def fit(
    records: FitData | Iterable[dict[str, Any] | tuple[int, dict[str, Any]]],
    objective: Objective | str,
    per_category: bool = False,
    fitted_on: str | None = None,
    keep: list | None = None,
) -> Thresholds:
    """Fit a global threshold on p_refuse, or one threshold per category on p_cat.

    ``records``: scored records, ``(line, record)`` pairs (:func:`rtools.records.read_records`) or a
    :class:`FitData`. ``objective``: an :class:`Objective` or its text (``"f1"``, ``"fpr=0.05"``...).
    ``fitted_on`` names the input in errors and in the metadata; ``keep`` receives the records read.
    The result carries metadata: objective, objective_value, n, fitted_on and the metrics at
    the fitted thresholds (a 0/0 rate is None).
    """
    import numpy as np

    if isinstance(objective, str):
        objective = Objective.parse(objective)
    if isinstance(records, FitData):
        data = records
    else:
        data = collect_fit_data(
            numbered(records),
            fitted_on or "<input>",
            per_category,
            keep=keep,
            need_labels=objective.needs_labels,
        )

    if data.n == 0:
        raise RecordError("no records to fit on", path=fitted_on)
    labelled = None not in data.labels
    if objective.needs_labels and not labelled:
        raise ValueError(f"{objective} needs a label on every record")
    # a budget fit reads no labels: every row counts as "positive", so tp + fp = refusals
    y = np.array(data.labels, dtype=bool) if objective.needs_labels else np.ones(data.n, dtype=bool)
    try:
        if per_category:
            scores = np.array(data.p_cat, dtype=np.float64).reshape(data.n, len(data.slugs))
            cats = np.array([data.slugs.index(c) if c in data.slugs else -1 for c in data.categories])
            values = _fit_categories(scores, y, cats, objective, data.slugs)
            rule: dict[str, Any] = {"categories": dict(zip(data.slugs, values, strict=True))}
            refused = (scores >= np.array(values)).any(axis=1)
            notes = []
            for c, slug in enumerate(data.slugs):
                own = cats == c  # a category is judged on its own rows, or all rows when it has none
                rows = f"records of category {slug}" if own.any() else "records"
                col = scores[:, c][own] if own.any() else scores[:, c]
                note = degenerate(col, values[c], objective, f"category {slug}: threshold", rows)
                notes += [note] if note else []
        else:
            s = np.array(data.p_refuse, dtype=np.float64)
            t = fit_threshold(s[y], s[~y], objective)
            rule = {"threshold": t}
            refused = s >= t
            note = degenerate(s, t, objective)
            notes = [note] if note else []
    except UnmetObjective as e:
        raise RecordError(
            str(e), path=fitted_on, hint="give a larger budget; a threshold can refuse no fewer"
        ) from None
    if labelled:
        metrics = confusion(refused.tolist(), data.labels)
    else:  # an unlabelled budget fit: only the refusal rate is known
        metrics = {"n": data.n, "refusal_rate": float(refused.mean())}
    meta = {
        "objective": str(objective),
        "objective_value": metrics[OBJECTIVE_METRIC[objective.kind]],
        "n": data.n,
        "metrics": metrics,
    }
    if fitted_on is not None:
        meta["fitted_on"] = fitted_on
    return Thresholds(**rule, meta=meta, notes=tuple(notes))


#: A fitted threshold that refuses at least DEGENERATE_HIGH, or at most DEGENERATE_LOW, of the rows
#: it was fitted on is reported (unless the objective asked for such a rate).
DEGENERATE_HIGH = 0.95
DEGENERATE_LOW = 0.05


def degenerate(
    scores: np.ndarray, t: float, objective: Objective, what: str = "threshold", rows: str = "records"
) -> str | None:
    """One line when threshold ``t`` is a degenerate answer on ``scores`` (the rows it was fitted
    on, called ``rows``): it refuses almost all of them or almost none (>= 95% or <= 5%), or it
    sits at the edge of the scores (at or below the lowest, above the highest); None otherwise, and
    None when the objective asked for such a rate (``refusal_rate=0.02``, ``budget=0.01``)."""
    n = len(scores)
    share = float((scores >= t).mean()) if n else 0.0
    lowest, highest = (float(scores.min()), float(scores.max())) if n else (0.0, 0.0)
    target = objective.target if objective.kind in ("rate", "budget") else None
    if target is not None and (target <= DEGENERATE_LOW or target >= DEGENERATE_HIGH):
        return None
    edge = ""
    if t <= lowest:
        edge = f", at or below the lowest score ({lowest:.6g})"
    elif t > highest:
        edge = f", above the highest score ({highest:.6g})"
    if not edge and DEGENERATE_LOW < share < DEGENERATE_HIGH:
        return None
    return (
        f"fit {objective}: {what} {t:.6g} refuses {share:.1%} of the {n} {rows} it was fitted on{edge}:"
        " a degenerate answer; the scores may not separate refuse from respond"
    )


def _fit_categories(
    scores: np.ndarray, y: np.ndarray, cats: np.ndarray, objective: Objective, slugs: list[str]
) -> list[float]:
    """One threshold per column of ``scores`` (named ``slugs``); see :func:`fit`."""
    import numpy as np

    n, k = scores.shape
    everyone = np.ones(n, dtype=bool)
    thresholds: list[float] = []
    for c in range(k):
        own = cats == c
        col = scores[:, c]
        if objective.kind == "f1":
            rows = own if (own & y).any() else everyone
            thresholds.append(fit_threshold(col[rows & y], col[rows & ~y], objective))
        elif objective.kind in ("rate", "budget"):
            rows = own if own.any() else everyone
            # the category's refusal rate among its own rows: every row counts as "positive"
            try:
                thresholds.append(fit_threshold(col[rows], col[:0], objective))
            except UnmetObjective as e:
                raise UnmetObjective(objective, e.refused, e.n, f" for category {slugs[c]!r}") from None
        elif objective.kind == "missed":  # the missed rate among the category's refuse rows
            pos_rows = own & y if (own & y).any() else y
            # candidates from the whole column, so the threshold sits just below the kept scores
            thresholds.append(fit_threshold(col[pos_rows], col[:0], objective, scores=col))
        else:  # fpr: recall on the category's refuse rows, FPR on its respond rows
            neg_rows = own & ~y if (own & ~y).any() else ~y
            pos_rows = own & y if (own & y).any() else y
            thresholds.append(
                fit_threshold(col[pos_rows], col[neg_rows], objective, scores=col[pos_rows | neg_rows])
            )
    if objective.kind == "f1" and k > 1:
        thresholds = _best_f1_start(scores, y, thresholds)
    return thresholds


def _best_f1_start(scores: np.ndarray, y: np.ndarray, own_fits: list[float]) -> list[float]:
    """Coordinate ascent from two starts; the one with the higher overall F1 wins.

    Start 1 is each category fitted on its own rows. Those fits are often near 0 (with mostly
    refuse rows, refusing everything is a good F1), and when every category fires on almost every
    row no single threshold can move the decision: a local optimum of "refuse everything". Start 2
    is one shared threshold, fitted on the highest category probability (which is exactly the
    any-category-fires rule with equal thresholds), so the per-category fit is never worse on the
    fitting data than one threshold for all categories. Ties go to start 2 (fewer free choices).
    """
    shared = fit_threshold(scores.max(axis=1)[y], scores.max(axis=1)[~y], Objective("f1"))
    best_f1, best = _coordinate_ascent_f1(scores, y, [shared] * scores.shape[1])
    f1, t = _coordinate_ascent_f1(scores, y, own_fits)
    return t if f1 > best_f1 + TIE_TOLERANCE else best


def _coordinate_ascent_f1(
    scores: np.ndarray, y: np.ndarray, thresholds: list[float], max_sweeps: int = 50
) -> tuple[float, list[float]]:
    """Improve the overall F1 of the any-category-fires rule one category at a time; (F1, thresholds).

    Each step moves one category's threshold to its best value given the others, and is taken
    only when it strictly improves F1, so the search ends; ties keep the current threshold.
    """
    import numpy as np

    n, k = scores.shape
    t = np.array(thresholds, dtype=np.float64)
    fires = scores >= t
    n_pos = int(y.sum())

    def overall_f1(refused: np.ndarray) -> float:
        tp = int((refused & y).sum())
        fp = int((refused & ~y).sum())
        return 2 * tp / (tp + fp + n_pos) if tp + fp + n_pos else 0.0

    current = overall_f1(fires.any(axis=1))
    for _ in range(max_sweeps):
        improved = False
        for c in range(k):
            other = np.delete(fires, c, axis=1).any(axis=1)
            col = scores[:, c]
            cand = candidate_thresholds(col)
            rest = ~other
            tp = int((other & y).sum()) + count_at_least(col[rest & y], cand)
            fp = int((other & ~y).sum()) + count_at_least(col[rest & ~y], cand)
            f1 = objective_scores(tp, fp, n_pos, n - n_pos, Objective("f1"))
            i = best_index(f1)
            if f1[i] > current + TIE_TOLERANCE:
                t[c] = cand[i]
                fires[:, c] = col >= t[c]
                current = float(f1[i])
                improved = True
        if not improved:
            break
    return current, [float(x) for x in t]
