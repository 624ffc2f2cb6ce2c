"""issue 14 item 4: rt-threshold --fit for a missed-refusal target and a label-free refusal budget.

Every fitted threshold is checked against brute force: each threshold that can change a decision
(0, 1, every score and every midpoint) is tried, the admissible ones are kept, and the fitted
threshold must decide exactly as the best admissible one does (ties: ``p >= t`` refuses).
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtools.records import RecordError
from rtools.thresholds import FitData, Objective, fit, fit_threshold
from rtools.thresholds.fitting import UnmetObjective

# a coarse grid makes ties common: many rows at one score
grid_prob = st.integers(0, 10).map(lambda i: i / 10)
labelled = st.lists(st.tuples(grid_prob, st.booleans()), min_size=1, max_size=40)
unlabelled = st.lists(grid_prob, min_size=1, max_size=40)
target = st.integers(0, 20).map(lambda i: i / 20)
SLUGS = ("safety", "humanizing")
cat_rows = st.lists(
    st.tuples(
        st.booleans(),
        st.sampled_from([*SLUGS, None]),
        st.fixed_dictionaries({s: grid_prob for s in SLUGS}),
    ),
    min_size=1,
    max_size=30,
)


def every_threshold(scores) -> list[float]:
    """0, 1, each distinct score and each midpoint: every threshold that decides differently."""
    u = sorted(set(scores))
    return sorted({0.0, 1.0, *u, *((a + b) / 2 for a, b in zip(u, u[1:], strict=False))})


def refused(scores, t) -> tuple[bool, ...]:
    return tuple(s >= t for s in scores)


def missed_rate(scores, labels, t) -> float:
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    return sum(s < t for s in pos) / len(pos) if pos else 0.0


def share_refused(scores, t) -> float:
    return sum(s >= t for s in scores) / len(scores)


# ---------------------------------------------------------------------------
# the objectives and their names


def test_fit_target_names_match_rt_metrics_keys_and_old_names_are_aliases():
    assert Objective.parse("missed_refusal_rate=0.05") == Objective("missed", 0.05)
    assert Objective.parse("missed=0.05") == Objective("missed", 0.05)
    assert Objective.parse("false_refusal_rate=0.1") == Objective.parse("fpr=0.1") == Objective("fpr", 0.1)
    assert Objective.parse("refusal_rate=0.3") == Objective.parse("rate=0.3") == Objective("rate", 0.3)
    assert Objective.parse("budget=0.02") == Objective("budget", 0.02)
    recall = Objective.parse("recall=0.95")
    assert recall.kind == "missed" and recall.target == pytest.approx(0.05)
    # the file and the summary name each objective by rt-metrics' key
    assert str(Objective.parse("fpr=0.05")) == "false_refusal_rate=0.05"
    assert str(Objective.parse("missed=0.05")) == "missed_refusal_rate=0.05"
    assert str(Objective.parse("rate=0.5")) == "refusal_rate=0.5"
    assert str(recall) == "recall=0.95"
    assert str(Objective.parse("Budget=0.02")) == "budget=0.02"
    assert not Objective.parse("budget=0.02").needs_labels and Objective("missed", 0.1).needs_labels
    for bad in ("missed", "budget", "recall=x", "budget=1.5", "missed=-0.1", "budget=nan", "recal=0.9"):
        with pytest.raises(ValueError):
            Objective.parse(bad)


# ---------------------------------------------------------------------------
# brute force, global threshold


@settings(max_examples=200, deadline=None)
@given(labelled, target)
def test_fit_missed_is_the_highest_threshold_within_the_target(rows, r):
    scores = [s for s, _ in rows]
    labels = [y for _, y in rows]
    pos = [s for s, y in rows if y]
    neg = [s for s, y in rows if not y]
    t = fit_threshold(pos, neg, Objective("missed", r))
    assert missed_rate(scores, labels, t) <= r + 1e-12
    admissible = [u for u in every_threshold(scores) if missed_rate(scores, labels, u) <= r + 1e-12]
    best = max(admissible)  # the fewest refusals, so the fewest false refusals
    assert refused(scores, t) == refused(scores, best)
    # and no threshold with the target met refuses fewer respond rows
    fp = sum(s >= t for s in neg)
    assert fp == min(sum(s >= u for s in neg) for u in admissible)


@settings(max_examples=200, deadline=None)
@given(labelled, target)
def test_fit_recall_is_missed_one_minus_r(rows, r):
    pos = [s for s, y in rows if y]
    neg = [s for s, y in rows if not y]
    t = fit_threshold(pos, neg, Objective.parse(f"recall={r}"))
    assert t == fit_threshold(pos, neg, Objective("missed", 1.0 - r))
    if pos:
        assert sum(s >= t for s in pos) / len(pos) >= r - 1e-9


@settings(max_examples=200, deadline=None)
@given(unlabelled, target)
def test_fit_budget_is_the_lowest_threshold_within_the_budget(scores, b):
    admissible = [u for u in every_threshold(scores) if share_refused(scores, u) <= b + 1e-12]
    if not admissible:  # rows at p = 1 alone exceed the budget: no threshold in [0, 1] meets it
        with pytest.raises(UnmetObjective):
            fit_threshold(scores, [], Objective("budget", b))
        return
    t = fit_threshold(scores, [], Objective("budget", b))
    assert share_refused(scores, t) <= b + 1e-12
    assert refused(scores, t) == refused(scores, min(admissible))  # the most refusals within budget


def test_fit_recall_target_met_exactly_despite_rounding():
    # recall=0.9 is missed <= 1 - 0.9 = 0.09999999999999998: 1 of 10 missed (0.1) must still count
    pos = [i / 10 for i in range(1, 11)]
    assert fit_threshold(pos, [], Objective.parse("recall=0.9")) == pytest.approx(0.15)
    assert fit_threshold(pos, [], Objective.parse("recall=0.8")) == pytest.approx(0.25)


def test_fit_budget_tie_straddling_the_budget_is_answered_whole():
    # 10 rows tie at 0.5; a budget of 30% has room for 3 of them: the whole tie stays answered
    scores = [0.9] + [0.5] * 10 + [0.1] * 9
    t = fit_threshold(scores, [], Objective("budget", 0.3))
    assert t == pytest.approx(0.7)
    assert share_refused(scores, t) == pytest.approx(0.05)
    assert fit_threshold(scores, [], Objective("budget", 0.55)) == pytest.approx(0.3)  # 11 of 20 fit


def test_fit_budget_below_the_rows_at_one_is_an_error():
    # issue 20 item 6: this used to fall back to threshold 1, refusing 2 of 3 on a budget of 10%
    with pytest.raises(UnmetObjective, match=r"budget=0.1 cannot be met: 2 of 3 records \(66.7%\) score 1"):
        fit_threshold([1.0, 1.0, 0.2], [], Objective("budget", 0.1))
    assert fit_threshold([1.0, 0.2, 0.2], [], Objective("budget", 0.4)) == 1.0  # 1 of 3 fits


def test_fit_missed_concrete():
    pos, neg = [0.9, 0.8, 0.4], [0.7, 0.3, 0.1]
    assert fit_threshold(pos, neg, Objective("missed", 0.34)) == pytest.approx(0.75)  # misses 0.4 only
    assert fit_threshold(pos, neg, Objective("missed", 0.0)) == pytest.approx(0.35)  # keeps 0.4
    assert fit_threshold(pos, neg, Objective("missed", 1.0)) == 1.0
    assert fit_threshold([], neg, Objective("missed", 0.0)) == 1.0  # no refuse rows: nothing to keep


# ---------------------------------------------------------------------------
# brute force, per category


def cat_data(rows, labels=True) -> FitData:
    return FitData(
        labels=[y if labels else None for y, _, _ in rows],
        categories=[c for _, c, _ in rows],
        slugs=list(SLUGS),
        p_cat=[[pc[s] for s in SLUGS] for _, _, pc in rows],
    )


@settings(max_examples=100, deadline=None)
@given(cat_rows, target)
def test_fit_missed_per_category_brute_force(rows, r):
    result = fit(cat_data(rows), Objective("missed", r), per_category=True)
    for slug in SLUGS:
        own = [(pc[slug], y) for y, c, pc in rows if c == slug]
        if not any(y for _, y in own):  # no refuse rows of its own: all refuse rows
            own = [(pc[slug], y) for y, _, pc in rows]
        scores, labels = [s for s, _ in own], [y for _, y in own]
        column = [pc[slug] for _, _, pc in rows]
        t = result.categories[slug]
        admissible = [u for u in every_threshold(column) if missed_rate(scores, labels, u) <= r + 1e-12]
        assert t in admissible or missed_rate(scores, labels, t) <= r + 1e-12
        assert refused(column, t) == refused(column, max(admissible))
    # every category's refuse rows meet the target under the any-category-fires rule
    for slug in SLUGS:
        own_pos = [pc for y, c, pc in rows if c == slug and y]
        if own_pos:
            missed = sum(not any(pc[s] >= result.categories[s] for s in SLUGS) for pc in own_pos)
            assert missed / len(own_pos) <= r + 1e-12


@settings(max_examples=100, deadline=None)
@given(cat_rows, target)
def test_fit_budget_per_category_brute_force_without_labels(rows, b):
    feasible = all(
        any(
            share_refused([pc[slug] for _, c, pc in rows if c == slug] or [pc[slug] for _, _, pc in rows], u)
            <= b + 1e-12
            for u in every_threshold([pc[slug] for _, _, pc in rows])
        )
        for slug in SLUGS
    )
    if not feasible:  # some category's rows at p = 1 exceed the budget: an error naming it
        with pytest.raises(RecordError, match=f"budget={b:g} cannot be met for category"):
            fit(cat_data(rows, labels=False), Objective("budget", b), per_category=True)
        return
    result = fit(cat_data(rows, labels=False), Objective("budget", b), per_category=True)
    assert set(result.meta["metrics"]) == {"n", "refusal_rate"}
    for slug in SLUGS:
        column = [pc[slug] for _, _, pc in rows]
        own = [pc[slug] for _, c, pc in rows if c == slug] or column
        t = result.categories[slug]
        admissible = [u for u in every_threshold(column) if share_refused(own, u) <= b + 1e-12]
        assert share_refused(own, t) <= b + 1e-12
        assert refused(own, t) == refused(own, min(admissible))


# ---------------------------------------------------------------------------
# the command


def jsonl(*records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


ROWS = [
    {"id": 1, "p_refuse": 0.9, "label": "refuse", "category": "safety"},
    {"id": 2, "p_refuse": 0.8, "label": "refuse", "category": "safety"},
    {"id": 3, "p_refuse": 0.4, "label": "refuse", "category": "humanizing"},
    {"id": 4, "p_refuse": 0.7, "label": "respond", "category": "safety"},
    {"id": 5, "p_refuse": 0.3, "label": "respond", "category": "humanizing"},
    {"id": 6, "p_refuse": 0.1, "label": "respond", "category": "humanizing"},
]


@pytest.mark.parametrize("spelled", ["missed_refusal_rate=0.34", "missed=0.34", "recall=0.66"])
def test_fit_missed_cli(spelled, invoke):
    r = invoke("rt-threshold", ["--fit", spelled], input=jsonl(*ROWS))
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["threshold"] == pytest.approx(0.75)
    assert out["objective"] == str(Objective.parse(spelled))
    assert out["metrics"]["missed_refusal_rate"] == pytest.approx(1 / 3)
    assert out["objective_value"] == out["metrics"]["false_refusal_rate"] == 0.0
    assert "missed_refusal_rate=0.3333 false_refusal_rate=0.0000" in r.stderr


def test_fit_missed_still_needs_labels(invoke):
    r = invoke("rt-threshold", ["--fit", "missed=0.1"], input=jsonl({"p_refuse": 0.5}))
    assert r.exit_code == 1
    assert "<stdin>:1: missing label" in r.stderr


def test_fit_budget_cli_needs_no_labels(tmp_path, invoke):
    rows = [{"id": i, "p_refuse": p} for i, p in enumerate([0.9, 0.5, 0.5, 0.1])]
    r = invoke("rt-threshold", ["--fit", "budget=0.3"], input=jsonl(*rows))
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["threshold"] == pytest.approx(0.7)  # the tie at 0.5 would make 75%: answered whole
    assert out["objective"] == "budget=0.3"
    assert out["metrics"] == {"n": 4, "refusal_rate": 0.25}
    assert r.stderr == "rt-threshold: fit budget=0.3: threshold=0.7 refusal_rate=0.2500 (n=4)\n"
    # --save writes the decided records, labels or not
    saved = tmp_path / "budget.json"
    r = invoke("rt-threshold", ["--fit", "budget=0.3", "--save", str(saved), "-q"], input=jsonl(*rows))
    assert r.exit_code == 0, r.stderr
    assert [json.loads(x)["decision"] for x in r.stdout.splitlines()] == ["refuse"] + ["respond"] * 3
    assert json.loads(saved.read_text())["threshold"] == pytest.approx(0.7)
    # labels, when every record has one, give the full metrics; a bad label is still an error
    r = invoke("rt-threshold", ["--fit", "budget=0.5", "-q"], input=jsonl(*ROWS))
    assert json.loads(r.stdout)["metrics"]["tp"] == 2
    r = invoke("rt-threshold", ["--fit", "budget=0.5"], input=jsonl({"p_refuse": 0.5, "label": "maybe"}))
    assert r.exit_code == 1 and "label must be 'refuse' or 'respond'" in r.stderr


def test_fit_missed_and_budget_per_category_cli(tmp_path, invoke):
    rows = [
        {"p_cat": {"safety": 0.9, "humanizing": 0.1}, "label": "refuse", "category": "safety"},
        {"p_cat": {"safety": 0.6, "humanizing": 0.2}, "label": "refuse", "category": "safety"},
        {"p_cat": {"safety": 0.5, "humanizing": 0.1}, "label": "respond", "category": "safety"},
        {"p_cat": {"safety": 0.1, "humanizing": 0.8}, "label": "refuse", "category": "humanizing"},
        {"p_cat": {"safety": 0.2, "humanizing": 0.7}, "label": "respond", "category": "humanizing"},
    ]
    for row in rows:
        row["p_refuse"] = max(row["p_cat"].values())
    r = invoke("rt-threshold", ["--fit", "missed=0", "--per-category", "-q"], input=jsonl(*rows))
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["categories"] == pytest.approx({"safety": 0.55, "humanizing": 0.75})
    unlabelled = [{"p_cat": row["p_cat"]} for row in rows]
    r = invoke("rt-threshold", ["--fit", "budget=0.2", "--per-category", "-q"], input=jsonl(*unlabelled))
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["categories"] == pytest.approx({"safety": 0.75, "humanizing": 0.75})


def test_fit_help_names_the_new_targets(invoke):
    r = invoke("rt-threshold", ["--help"])
    text = " ".join(r.stdout.split())
    for name in ("missed_refusal_rate=R", "recall=R", "budget=B", "false_refusal_rate=R", "p >= t"):
        assert name in text


# ---------------------------------------------------------------------------
# issue 24: a degenerate answer is said on stderr


def test_degenerate_fit_is_reported_on_stderr(invoke):
    # a weak model: refuse and respond rows score alike, mostly refuse rows: F1 is best refusing everything
    rows = [{"p_refuse": 0.5 + 0.01 * (i % 7), "label": "refuse" if i % 5 else "respond"} for i in range(100)]
    r = invoke("rt-threshold", ["--fit", "f1"], input=jsonl(*rows))
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["threshold"] == 0.0
    warning, summary = r.stderr.splitlines()
    assert warning.startswith(
        "rt-threshold: warning: fit f1: threshold 0 refuses 100.0% of the 100 records it was fitted on, "
        "at or below the lowest score (0.5)"
    )
    assert summary.startswith("rt-threshold: fit f1: threshold=0 ")
    # -q keeps the warning (it is not a summary), and the exit status
    r = invoke("rt-threshold", ["-q", "--fit", "f1"], input=jsonl(*rows))
    assert r.exit_code == 0 and r.stderr.splitlines() == [warning]


def test_degenerate_fit_names_each_degenerate_category(invoke):
    rows = []
    for i in range(40):  # safety separates; humanizing does not (its refuse rows score low)
        refuse = i % 2 == 0
        rows.append(
            {
                "p_cat": {"safety": 0.8 if refuse else 0.2, "humanizing": 0.05},
                "label": "refuse" if refuse else "respond",
                "category": "safety",
            }
        )
        rows.append(
            {"p_cat": {"safety": 0.01, "humanizing": 0.3}, "label": "respond", "category": "humanizing"}
        )
    r = invoke("rt-threshold", ["-q", "--fit", "fpr=0", "--per-category"], input=jsonl(*rows))
    assert r.exit_code == 0, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        "rt-threshold: warning: fit false_refusal_rate=0: category humanizing: threshold 1 refuses 0.0% of the "
        "40 records of category humanizing it was fitted on, above the highest score (0.3)"
    )


@pytest.mark.parametrize(
    "objective, rows, warned",
    [
        ("f1", [(0.9, "refuse"), (0.8, "refuse"), (0.2, "respond"), (0.1, "respond")], False),
        ("budget=0.02", [(i / 100, "respond") for i in range(100)], False),  # a low rate asked for
        ("rate=0.5", [(0.5, "refuse")] * 30 + [(0.4, "respond")] * 2, False),  # the closest rate is 94%
        ("rate=0.5", [(0.5, "refuse")] * 40 + [(0.4, "respond")] * 1, True),  # the closest rate is 98%
        ("missed=0", [(0.01, "refuse")] + [(0.5, "respond")] * 40, True),  # keeping one refusal refuses all
    ],
)
def test_degenerate_fit_only_when_degenerate(objective, rows, warned, invoke):
    records = [{"p_refuse": p, "label": y} for p, y in rows]
    r = invoke("rt-threshold", ["-q", "--fit", objective], input=jsonl(*records))
    assert r.exit_code == 0, r.stderr
    assert ("warning:" in r.stderr) is warned, r.stderr
