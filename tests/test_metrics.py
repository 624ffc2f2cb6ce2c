"""The metrics core (rtools.metrics): every number against scikit-learn, on random data."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    precision_recall_fscore_support,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from rtools import metrics as M
from rtools.records import RecordError

TOL = 1e-9
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def close(ours, theirs) -> bool:
    """None on our side means NaN (undefined) on scikit-learn's."""
    theirs = float(theirs)
    if ours is None:
        return math.isnan(theirs)
    return not math.isnan(theirs) and abs(ours - theirs) <= TOL


# Scores from a coarse grid produce ties; free floats produce none; both include 0 and 1.
scores_st = st.one_of(
    st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.5, 0.75, 1.0]),
    st.floats(min_value=0.0, max_value=1.0, allow_nan=False),
)


@st.composite
def rows(draw, min_size=0, max_size=60):
    n = draw(st.integers(min_size, max_size))
    y = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    # sometimes a single class (all refuse / all respond)
    mode = draw(st.sampled_from(["mixed", "mixed", "mixed", "all_refuse", "all_respond"]))
    if mode == "all_refuse":
        y[:] = True
    elif mode == "all_respond":
        y[:] = False
    pred = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    score = np.array(draw(st.lists(scores_st, min_size=n, max_size=n)), dtype=np.float64)
    return y, pred, score


def sk_reference(y, pred):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tn, fp, fn, tp = confusion_matrix(y, pred, labels=[False, True]).ravel()
        p, r, f, _ = precision_recall_fscore_support(
            y, pred, labels=[False, True], pos_label=True, average="binary", zero_division=np.nan
        )
        acc = accuracy_score(y, pred) if len(y) else np.nan
        # false refusal rate = 1 - recall of the respond class; missed refusal rate = 1 - recall
        spec = recall_score(
            y, pred, pos_label=False, labels=[False, True], average="binary", zero_division=np.nan
        )
    return {
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "precision": p,
        "recall": r,
        "f1": f,
        "accuracy": acc,
        "false_refusal_rate": 1 - spec,
        "missed_refusal_rate": 1 - r,
        "refusal_rate": np.mean(pred) if len(pred) else np.nan,
    }


@SETTINGS
@given(rows(min_size=1))
def test_counts_and_rates_agree_with_sklearn(data):
    y, pred, _ = data
    ours = M.summarize_rows(y, pred)
    ref = sk_reference(y, pred)
    assert ours["n"] == len(y)
    for k in ("tp", "fp", "tn", "fn"):
        assert ours[k] == ref[k], k
    for k in M.RATE_KEYS:
        assert close(ours[k], ref[k]), (k, ours[k], ref[k])
    assert "auroc" not in ours  # no scores given


@SETTINGS
@given(rows())
def test_auroc_auprc_agree_with_sklearn(data):
    y, pred, score = data
    ours = M.summarize_rows(y, pred, score)
    if len(y) == 0:
        assert "auroc" not in ours
        return
    if y.all() or not y.any():
        assert ours["auroc"] is None and ours["auprc"] is None
        return
    assert abs(ours["auroc"] - roc_auc_score(y, score)) <= TOL
    assert abs(ours["auprc"] - average_precision_score(y, score)) <= TOL


def group_weights(y, score, w):
    order = np.argsort(score, kind="stable")
    s, yy, ww = score[order], y[order], w[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    pos = np.add.reduceat(ww * yy, starts)
    neg = np.add.reduceat(ww * ~yy, starts)
    return pos, neg


@SETTINGS
@given(rows(min_size=1), st.data())
def test_weighted_auc_agrees_with_sklearn_sample_weight(data, draw):
    """The vectorised bootstrap versions equal scikit-learn with sample_weight (zeros included)."""
    y, _, score = data
    w = np.array(draw.draw(st.lists(st.integers(0, 4), min_size=len(y), max_size=len(y))), dtype=np.float64)
    pos, neg = group_weights(y, score, w)
    auc = M.weighted_auroc(pos, neg)[0]
    ap = M.weighted_auprc(pos, neg)[0]
    if pos.sum() == 0 or neg.sum() == 0:
        assert math.isnan(auc) and math.isnan(ap)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert abs(auc - roc_auc_score(y, score, sample_weight=w)) <= TOL
        assert abs(ap - average_precision_score(y, score, sample_weight=w)) <= TOL


@SETTINGS
@given(rows(min_size=1), st.sampled_from([2, 5, 11, 101, "all"]))
def test_sweep_matches_decisions_at_each_threshold(data, points):
    y, _, score = data
    grid = M.threshold_grid(points, score)
    table = M.sweep(y, score, grid)
    assert np.all(np.diff(table["refusal_rate"]) <= 0), "refusal rate must not rise with the threshold"
    names = {"tpr": "recall", "fpr": "false_refusal_rate"}
    for i, t in enumerate(grid):
        ref = M.summarize_rows(y, score >= t)  # itself checked against scikit-learn above
        for k in ("n", "tp", "fp", "tn", "fn"):
            assert table[k][i] == ref[k]
        for k in ("refusal_rate", "tpr", "fpr", "precision", "f1"):
            v = table[k][i]
            assert (
                (ref[names.get(k, k)] is None)
                if math.isnan(v)
                else v == pytest.approx(ref[names.get(k, k)], abs=TOL)
            )
    if points == "all" and 0 < y.sum() < len(y):
        fpr, tpr, thr = roc_curve(y, score, drop_intermediate=False)
        assert np.allclose(thr[1:][::-1], grid, rtol=0, atol=0)
        assert np.allclose(tpr[1:][::-1], table["tpr"], rtol=0, atol=TOL)
        assert np.allclose(fpr[1:][::-1], table["fpr"], rtol=0, atol=TOL)
    for row in M.sweep_rows(table, "safety"):
        assert row["category"] == "safety" and row["score"] == "p_refuse"
        assert all(not (isinstance(v, float) and math.isnan(v)) for v in row.values())


def test_threshold_grid():
    g = M.threshold_grid(101)
    assert g[0] == 0.0 and g[-1] == 1.0 and len(g) == 101
    assert g[3] == 0.03 and g[10] == 0.1  # i/(N-1): no 0.30000000000000004
    assert list(M.threshold_grid("all", np.array([0.5, 0.1, 0.5]))) == [0.1, 0.5]
    with pytest.raises(ValueError):
        M.threshold_grid(1)


def make_records(y, pred, score, cats):
    return [
        (
            i + 1,
            {
                "label": "refuse" if y[i] else "respond",
                "decision": "refuse" if pred[i] else "respond",
                "p_refuse": float(score[i]),
                **({"category": cats[i]} if cats[i] is not None else {}),
            },
        )
        for i in range(len(y))
    ]


@SETTINGS
@given(rows(), st.data())
def test_by_category_is_the_summary_of_each_category(data, draw):
    y, pred, score = data
    names = [None, "Requests with safety concerns", "safety", "Humanizing requests", "Mine"]
    cats = draw.draw(st.lists(st.sampled_from(names), min_size=len(y), max_size=len(y)))
    ev = M.collect(make_records(y, pred, score, cats), "t")
    out = M.summarize(ev)
    slugs = {
        None: None,
        "Requests with safety concerns": "safety",
        "safety": "safety",
        "Humanizing requests": "humanizing",
        "Mine": "mine",
    }
    want = sorted({slugs[c] for c in cats} - {None})
    assert sorted(out["by_category"]) == want
    for slug in want:
        mask = np.array([slugs[c] == slug for c in cats], dtype=bool)
        assert out["by_category"][slug] == M.summarize_rows(y[mask], pred[mask], score[mask])
    assert {k: v for k, v in out.items() if k != "by_category"} == M.summarize_rows(y, pred, score)


def test_empty_summary_is_all_null():
    ev = M.collect([], "t")
    out = M.summarize(ev)
    assert out["n"] == 0 and out["by_category"] == {}
    assert all(out[k] is None for k in M.RATE_KEYS)
    assert "auroc" not in out


def test_category_accuracy_and_agreement_rate():
    recs = [
        {
            "label": "refuse",
            "decision": "refuse",
            "category": "Requests with safety concerns",
            "decision_cat": "safety",
            "consistent": True,
        },
        {
            "label": "refuse",
            "decision": "refuse",
            "category": "safety",
            "decision_cat": "humanizing",
            "consistent": False,
        },
        {
            "label": "refuse",
            "decision": "refuse",
            "category": "humanizing",
            "decision_cat": None,
            "consistent": True,
        },
        {"label": "refuse", "decision": "respond", "category": "safety", "decision_cat": None},
        {"label": "respond", "decision": "refuse", "category": "safety", "decision_cat": "safety"},
    ]
    out = M.summarize(M.collect(enumerate(recs, 1), "t"))
    assert out["category_accuracy"] == pytest.approx(1 / 3)  # 3 true refusals, 1 names its category
    assert out["agreement_rate"] == pytest.approx(2 / 3)  # 3 rows carry the field, 2 are true
    assert out["by_category"]["safety"]["category_accuracy"] == 0.5
    assert out["by_category"]["humanizing"]["category_accuracy"] == 0.0
    plain = M.summarize(
        M.collect(enumerate([{"label": "refuse", "decision": "refuse", "decision_cat": None}], 1))
    )
    assert "category_accuracy" not in plain and "agreement_rate" not in plain


def test_threshold_overrides_decision():
    recs = [
        {"label": "refuse", "decision": "respond", "p_refuse": 0.5},
        {"label": "respond", "p_refuse": 0.49},
    ]
    ev = M.collect(enumerate(recs, 1), "t", threshold=0.5)
    assert ev.pred.tolist() == [True, False]


def test_category_scores_use_p_cat_only_when_every_row_has_it():
    recs = [
        {"label": "refuse", "p_refuse": 0.9, "category": "safety", "p_cat": {"safety": 0.8}},
        {"label": "respond", "p_refuse": 0.2, "category": "safety", "p_cat": {"safety": 0.1}},
        {"label": "refuse", "p_refuse": 0.7, "category": "humanizing", "p_cat": {"safety": 0.6}},
    ]
    ev = M.collect(enumerate(recs, 1), "t", need_decision=False, need_scores=True, category_scores=True)
    assert ev.cat_scores["safety"].tolist() == [0.8, 0.1]
    assert ev.cat_score_source["safety"] == "p_cat.safety"
    assert ev.cat_scores["humanizing"].tolist() == [0.7]
    assert ev.cat_score_source["humanizing"] == "p_refuse"


@pytest.mark.parametrize(
    ("rec", "message"),
    [
        ({"decision": "refuse"}, 'missing "label"'),
        ({"label": "yes", "decision": "refuse"}, 'invalid label "yes"'),
        ({"label": ["refuse"], "decision": "refuse"}, "invalid label"),
        ({"label": "refuse"}, 'missing "decision"'),
        ({"label": "refuse", "decision": "maybe"}, 'invalid decision "maybe"'),
        ({"label": "refuse", "decision": "refuse", "category": 3}, "invalid category 3"),
        ({"label": "refuse", "decision": "refuse", "category": ["a"]}, "invalid category"),
        ({"label": "refuse", "decision": "refuse", "p_refuse": "0.5"}, 'invalid p_refuse "0.5"'),
        ({"label": "refuse", "decision": "refuse", "p_refuse": 1.5}, "invalid p_refuse 1.5"),
        ({"label": "refuse", "decision": "refuse", "p_refuse": True}, "invalid p_refuse true"),
        ({"label": "refuse", "decision": "refuse", "decision_cat": 1}, "invalid decision_cat 1"),
        ({"label": "refuse", "decision": "refuse", "consistent": "yes"}, 'invalid consistent "yes"'),
    ],
)
def test_bad_records_name_their_line(rec, message):
    good = {"label": "respond", "decision": "respond", "p_refuse": 0.1}
    with pytest.raises(RecordError) as e:
        M.collect([(1, good), (3, rec), (4, good)], "in.jsonl")
    assert str(e.value).startswith("in.jsonl:3: "), str(e.value)
    assert message in str(e.value)


def test_missing_score_when_needed():
    recs = [(1, {"label": "refuse", "p_refuse": 0.5}), (2, {"label": "respond"})]
    with pytest.raises(RecordError, match=r"^t:2: missing \"p_refuse\" \(--threshold 0.5"):
        M.collect(recs, "t", threshold=0.5)
    ev = M.collect(
        [
            (1, {"label": "refuse", "decision": "refuse", "p_refuse": 0.5}),
            (2, {"label": "respond", "decision": "respond"}),
        ],
        "t",
    )
    assert ev.score is None and ev.missing_score_line == 2 and ev.scored == 1
    assert "auroc" not in M.summarize(ev)


# ---------------------------------------------------------------------------
# Bootstrap.


def ordinary_data(n=400, seed=3):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.4
    score = np.clip(rng.normal(np.where(y, 0.65, 0.35), 0.2), 0, 1)
    return y, score >= 0.5, score


def test_bootstrap_is_deterministic_and_brackets_the_point_estimate():
    y, pred, score = ordinary_data()
    a = M.bootstrap_ci(y, pred, score, n_boot=300, seed=7)
    b = M.bootstrap_ci(y, pred, score, n_boot=300, seed=7)
    c = M.bootstrap_ci(y, pred, score, n_boot=300, seed=8)
    assert a == b and a != c
    assert set(a) == set(M.CI_METRICS)
    point = M.summarize_rows(y, pred, score)
    for m, (lo, hi) in a.items():
        assert lo <= point[m] <= hi, (m, lo, point[m], hi)
    # chunking (memory bound) does not change the result
    assert M.bootstrap_ci(y, pred, score, n_boot=300, seed=7, max_cells=1000) == a
    narrow = M.bootstrap_ci(y, pred, score, n_boot=300, seed=7, ci=0.5)
    assert narrow["f1"][0] >= a["f1"][0] and narrow["f1"][1] <= a["f1"][1]


def test_bootstrap_resample_metrics_match_direct_computation():
    """With one resample the interval collapses to that resample's numbers (checks the vectorised path)."""
    y, pred, score = ordinary_data(n=50, seed=5)
    draws = np.random.default_rng(11).integers(0, len(y), size=(1, len(y)))[0]
    rows = np.argsort(score, kind="stable")[draws]  # the bootstrap resamples rows in score order
    direct = M.summarize_rows(y[rows], pred[rows], score[rows])
    single = M.bootstrap_ci(y, pred, score, n_boot=1, seed=11)
    for m, (lo, hi) in single.items():
        assert lo == pytest.approx(direct[m], abs=TOL) and hi == pytest.approx(direct[m], abs=TOL), m


def test_bootstrap_edge_cases():
    y = np.ones(20, dtype=bool)
    out = M.bootstrap_ci(y, y.copy(), np.linspace(0, 1, 20), n_boot=50)
    assert out["auroc"] is None and out["false_refusal_rate"] is None
    assert out["recall"] == [1.0, 1.0]
    assert set(M.bootstrap_ci(y, y, None, n_boot=5)) == set(M.CI_METRICS) - {"auroc", "auprc"}
    assert all(v is None for v in M.bootstrap_ci(y[:0], y[:0], None, n_boot=5).values())


def test_bootstrap_is_fast_enough():
    import time

    y, pred, score = ordinary_data(n=10_000)
    t = time.perf_counter()
    M.bootstrap_ci(y, pred, score, n_boot=1000, seed=0)
    assert time.perf_counter() - t < 20  # typically ~2 s on 2 shared cores


# ---------------------------------------------------------------------------
# Separation: the refusal-rate gap between the classes (the controllability criterion).


@SETTINGS
@given(rows(min_size=1))
def test_max_gap_is_the_largest_gap_of_the_sweep(data):
    """max_gap and its threshold agree with rt-metrics --sweep over every distinct score; the gap at a
    threshold is the sweep's tpr - fpr there."""
    y, _, score = data
    out = M.separation(y, score, threshold=0.5, n_boot=0)
    if not (0 < y.sum() < len(y)):
        assert out["max_gap"] is None and out["gap"] is None and out["passed"] is None
        return
    table = M.sweep(y, score, np.r_[np.unique(score), np.inf])
    gaps = table["tpr"] - table["fpr"]
    assert out["max_gap"] == pytest.approx(gaps.max(), abs=TOL)
    if out["max_gap_threshold"] is None:
        assert gaps.max() <= TOL
    else:
        best = np.flatnonzero(gaps >= gaps.max() - TOL)
        assert out["max_gap_threshold"] == pytest.approx(table["threshold"][best[-1]])
    at = M.sweep(y, score, np.array([0.5]))
    assert out["gap"] == pytest.approx(at["tpr"][0] - at["fpr"][0], abs=TOL)
    assert out["max_gap"] >= out["gap"] - TOL


def test_separation_resample_matches_direct_computation():
    """With one resample the intervals collapse to that resample's own max gap and gap."""
    y, _, score = ordinary_data(n=80, seed=4)
    draws = np.random.default_rng(5).integers(0, len(y), size=(1, len(y)))[0]
    rows_ = np.argsort(score, kind="stable")[draws]
    direct = M.separation(y[rows_], score[rows_], threshold=0.4, n_boot=0)
    one = M.separation(y, score, threshold=0.4, n_boot=1, seed=5)
    for key in ("max_gap", "gap"):
        lo, hi = one[key + "_ci"]
        assert lo == pytest.approx(direct[key], abs=TOL) and hi == pytest.approx(direct[key], abs=TOL)


def test_separation_is_deterministic_for_a_seed():
    y, _, score = ordinary_data()
    a = M.separation(y, score, threshold=0.5, bar=0.2, n_boot=300, seed=7)
    assert a == M.separation(y, score, threshold=0.5, bar=0.2, n_boot=300, seed=7)
    assert a == M.separation(y, score, threshold=0.5, bar=0.2, n_boot=300, seed=7, max_cells=500)
    b = M.separation(y, score, threshold=0.5, bar=0.2, n_boot=300, seed=8)
    assert a["max_gap_ci"] != b["max_gap_ci"] and a["null_max_gap"] != b["null_max_gap"]
    assert a["max_gap"] == b["max_gap"] and a["gap"] == b["gap"]  # the point values need no draws
    assert a["max_gap_ci"][0] <= a["max_gap"] <= a["max_gap_ci"][1]
    assert a["gap_ci"][0] <= a["gap"] <= a["gap_ci"][1]


def test_a_random_score_fails_the_separation_criterion():
    """A score unrelated to the label passes no more often than the 5% a 95% criterion allows, even
    with no bar at all (the max over thresholds is above 0 by chance; the permutation null guards it)."""
    passed = gap_passed = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        y = rng.random(120) < 0.5
        out = M.separation(y, rng.random(120), threshold=0.5, bar=0.0, n_boot=300, seed=seed)
        assert out["max_gap"] > 0  # chance alone makes a positive max gap...
        passed += out["passed"]
        gap_passed += out["gap_passed"]
    assert passed <= 2 and gap_passed <= 2, (passed, gap_passed)  # ...that the criterion rejects


def test_a_separating_score_passes_and_the_bar_can_fail_it():
    rng = np.random.default_rng(1)
    y = rng.random(200) < 0.5
    perfect = M.separation(y, np.where(y, 0.9, 0.1), threshold=0.5, bar=0.9, n_boot=300)
    assert perfect["max_gap"] == 1.0 and perfect["max_gap_ci"] == [1.0, 1.0] and perfect["passed"]
    assert perfect["gap"] == 1.0 and perfect["gap_passed"]
    assert perfect["max_gap_threshold"] == 0.9
    # a useful but imperfect score: passes a low bar, fails a high one
    score = np.clip(rng.normal(np.where(y, 0.65, 0.35), 0.2), 0, 1)
    out = M.separation(y, score, threshold=0.5, bar=0.3, n_boot=300)
    assert out["passed"] and out["gap_passed"] and 0.4 < out["max_gap"] < 0.8
    assert not M.separation(y, score, bar=0.8, n_boot=300)["passed"]
    # a weak signal: not enough evidence on 60 rows, enough on 3000
    rng = np.random.default_rng(2)
    for n, passes in ((60, False), (3000, True)):
        y = rng.random(n) < 0.5
        out = M.separation(y, rng.normal(np.where(y, 0.55, 0.45), 0.2), bar=0.1, n_boot=300)
        assert out["passed"] is passes, (n, out)


def test_separation_edge_cases():
    y = np.ones(10, dtype=bool)
    out = M.separation(y, np.linspace(0, 1, 10), threshold=0.5)
    assert out["max_gap"] is None and out["gap"] is None and out["threshold"] == 0.5
    assert out["n_refuse"] == 10 and out["n_respond"] == 0
    assert set(M.separation(y, np.linspace(0, 1, 10))) == {
        "n_refuse",
        "n_respond",
        "bar",
        "max_gap",
        "max_gap_threshold",
        "max_gap_ci",
        "null_max_gap",
        "passed",
    }
    # the scores rank the respond rows higher: no threshold has a positive gap
    y = np.array([True, True, False, False])
    out = M.separation(y, np.array([0.1, 0.2, 0.8, 0.9]), n_boot=50)
    assert out["max_gap"] == 0.0 and out["max_gap_threshold"] is None and not out["passed"]
    with pytest.raises(ValueError, match="one score per label"):
        M.separation(y, np.zeros(3))
    with pytest.raises(ValueError, match="ci"):
        M.separation(y, np.zeros(4), ci=1.5)


# ---------------------------------------------------------------------------
# Gates.


def test_gates():
    summary = {
        "f1": 0.712,
        "false_refusal_rate": 0.3,
        "auroc": None,
        "by_category": {"safety": {"recall": 0.9}},
    }
    assert M.Gate.parse("f1=0.8", "under").check(summary) == "gate failed: f1=0.712 < 0.8"
    assert M.Gate.parse("f1=0.7", "under").check(summary) is None
    assert (
        M.Gate.parse("false_refusal_rate=0.2", "over").check(summary)
        == "gate failed: false_refusal_rate=0.3 > 0.2"
    )
    assert "auroc is null" in M.Gate.parse("auroc=0.5", "under").check(summary)
    assert (
        M.Gate.parse("safety.recall=0.95", "under").check(summary) == "gate failed: safety.recall=0.9 < 0.95"
    )
    assert M.Gate.parse("safety.recall=0.85", "under").check(summary) is None
    assert "no category 'harm'" in M.Gate.parse("harm.recall=0.1", "under").check(summary)
    assert M.check_gates(summary, [M.Gate.parse("f1=0.8", "under"), M.Gate.parse("f1=0.1", "under")]) == [
        "gate failed: f1=0.712 < 0.8"
    ]
    for bad in ("f2=0.8", "f1", "f1=x", "=1", "f1=nan"):
        with pytest.raises(ValueError):
            M.Gate.parse(bad, "under")
    with pytest.raises(ValueError, match="valid metrics: n, tp"):
        M.Gate.parse("f2=0.8", "under")
