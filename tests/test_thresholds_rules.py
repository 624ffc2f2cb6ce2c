"""rtools.thresholds: the decision rules, the threshold file format and fitting."""

from __future__ import annotations

import io
import json

import numpy as np
import orjson
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from rtools.records import RecordError, dumps, may_hold_big_int, parse_line, read_chunk
from rtools.thresholds import (
    FitData,
    Objective,
    Thresholds,
    apply_stream,
    argmax_slug,
    candidate_thresholds,
    category_rule,
    check_slug_set,
    collect_fit_data,
    confusion,
    decide,
    fit,
    fit_threshold,
    get_p_cat,
    global_rule,
    own_choice,
    own_choice_category,
    parse_cat_option,
)

SLUGS = ("safety", "humanizing", "incomplete")
prob = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
# a coarse grid makes ties (equal scores, equal objective values) common
grid_prob = st.integers(0, 20).map(lambda i: i / 20)
p_cats = st.fixed_dictionaries({s: grid_prob for s in SLUGS})
cat_thresholds = st.dictionaries(st.sampled_from(SLUGS), grid_prob)


# ---------------------------------------------------------------------------
# the rules


def test_own_choice_ties_go_to_respond():
    assert own_choice(0.6, 0.4) == ("refuse", None)
    assert own_choice(0.4, 0.6) == ("respond", None)
    assert own_choice(0.5, 0.5) == ("respond", None)


def test_own_choice_category():
    assert own_choice_category({"a": 0.3, "b": 0.4}, 0.35) == ("refuse", "b")
    assert own_choice_category({"a": 0.3, "b": 0.3}, 0.2) == ("refuse", "a")  # first of tied categories
    assert own_choice_category({"a": 0.3, "b": 0.3}, 0.3) == ("respond", None)
    assert own_choice_category({"a": 0.3, "b": 0.3}, 0.4) == ("respond", None)


def test_global_rule():
    assert global_rule(0.5, 0.5) == ("refuse", None)
    assert global_rule(0.49, 0.5) == ("respond", None)
    assert global_rule(0.6, 0.5, {"a": 0.1, "b": 0.5}) == ("refuse", "b")
    assert global_rule(0.4, 0.5, {"a": 0.1, "b": 0.5}) == ("respond", None)


def test_category_rule():
    pc = {"a": 0.3, "b": 0.35, "c": 0.05}
    assert category_rule(pc, {"a": 0.3}, p_respond=0.3) == ("refuse", "b")  # b fires as own choice, higher p
    assert category_rule(pc, {"a": 0.3, "b": 0.5}, p_respond=0.3) == ("refuse", "a")
    assert category_rule(pc, {"a": 0.31, "b": 0.5}, p_respond=0.3) == ("respond", None)
    assert category_rule(pc, {}, default=0.05) == ("refuse", "b")
    assert category_rule(pc, {"b": 0.9}, default=0.3) == ("refuse", "a")
    assert category_rule(pc, {"c": 0.0, "a": 0.9}, default=0.9) == ("refuse", "c")
    with pytest.raises(ValueError, match="p_respond"):
        category_rule(pc, {"a": 0.3})


def test_argmax_slug():
    assert argmax_slug({}) is None
    assert argmax_slug({"a": 0.0}) == "a"
    assert argmax_slug({"a": 0.2, "b": 0.7, "c": 0.7}) == "b"


@given(p_cats, grid_prob)
def test_own_choice_category_is_the_argmax_over_all_control_tokens(pc, p_respond):
    decision, slug = own_choice_category(pc, p_respond)
    tokens = [*pc.values(), p_respond]
    if decision == "refuse":
        assert pc[slug] == max(tokens) and pc[slug] > p_respond
    else:
        assert p_respond == max(tokens) and slug is None


@given(prob, prob, prob)
def test_global_rule_is_monotone(p, t1, t2):
    low, high = sorted((t1, t2))
    if global_rule(p, high)[0] == "refuse":
        assert global_rule(p, low)[0] == "refuse"


@given(p_cats, grid_prob, cat_thresholds, st.one_of(st.none(), grid_prob), st.sampled_from(SLUGS), grid_prob)
def test_raising_a_category_threshold_never_turns_respond_into_refuse(
    pc, p_respond, ts, default, slug, raise_by
):
    before = category_rule(pc, ts, default, p_respond)
    current = ts.get(slug, default)
    assume(current is not None)
    after = category_rule(pc, {**ts, slug: min(1.0, current + raise_by)}, default, p_respond)
    if before[0] == "respond":
        assert after[0] == "respond"


gap = st.integers(1, 20).map(lambda i: i / 20)


@given(p_cats, grid_prob, cat_thresholds, st.one_of(st.none(), grid_prob), st.sampled_from(SLUGS), gap, gap)
def test_moving_one_category_threshold_leaves_rows_it_does_not_fire_on(
    pc, p_respond, ts, default, slug, d1, d2
):
    """Independence: if `slug` fires neither before nor after, nothing about the decision changes."""
    before = category_rule(pc, {**ts, slug: pc[slug] + d1}, default, p_respond)
    after = category_rule(pc, {**ts, slug: pc[slug] + d2}, default, p_respond)
    assert before == after
    # and the rows where another category fires stay refused, with the same category
    others = {s: t for s, t in ts.items() if s != slug}
    lowered = category_rule(pc, {**others, slug: 0.0}, default, p_respond)
    if before[0] == "refuse":
        assert lowered[0] == "refuse"
        assert pc[lowered[1]] >= pc[before[1]]


@given(p_cats, grid_prob, cat_thresholds, st.one_of(st.none(), grid_prob))
def test_category_decision_cat_is_the_highest_firing_category(pc, p_respond, ts, default):
    decision, slug = category_rule(pc, ts, default, p_respond)
    own = own_choice_category(pc, p_respond)[1]
    firing = [s for s in pc if (pc[s] >= t if (t := ts.get(s, default)) is not None else s == own)]
    assert (decision == "refuse") == bool(firing)
    if firing:
        assert pc[slug] == max(pc[s] for s in firing)


# ---------------------------------------------------------------------------
# the file format and option parsing


def test_thresholds_dict_round_trip():
    for t in (
        Thresholds(threshold=0.25, meta={"objective": "f1", "n": 3}),
        Thresholds(categories={"safety": 0.3, "humanizing": 1.0}, default=0.5, meta={"fitted_on": "x"}),
        Thresholds(categories={"safety": 0.0}),
    ):
        assert Thresholds.from_dict(orjson.loads(t.to_json())) == t


def test_thresholds_from_dict_star_inside_categories_is_the_default():
    t = Thresholds.from_dict({"categories": {"*": 0.4, "safety": 0.2}})
    assert t.categories == {"safety": 0.2} and t.default == 0.4


def test_thresholds_save_and_load(tmp_path):
    t = Thresholds(categories={"safety": 0.3}, meta={"n": 1})
    t.save(str(tmp_path / "t.json"))
    assert Thresholds.load(str(tmp_path / "t.json")) == t


def test_resolve_maps_names_to_slugs():
    t = Thresholds(categories={"Requests with safety concerns": 0.3, "Humanizing": 0.2})
    assert t.resolve(["safety", "humanizing"]).categories == {"safety": 0.3, "humanizing": 0.2}
    with pytest.raises(RecordError, match=r"unknown categories 'x', 'y' \(p_cat has: safety\)"):
        Thresholds(categories={"x": 0.1, "y": 0.2}).resolve(["safety"])
    with pytest.raises(RecordError, match="more than one threshold"):
        Thresholds(categories={"safety": 0.1, "Safety": 0.2}).resolve(["safety"])


def test_parse_cat_option():
    assert parse_cat_option("safety=0.3") == ("safety", 0.3)
    assert parse_cat_option("*=1") == ("*", 1.0)
    assert parse_cat_option("Requests with safety concerns=0") == ("Requests with safety concerns", 0.0)
    for bad in ("safety", "=0.3", "safety=", "safety=x", "safety=1.01", "safety=nan"):
        with pytest.raises(ValueError):
            parse_cat_option(bad)


def test_objective_parse():
    assert Objective.parse("f1") == Objective("f1")
    assert Objective.parse("rate=0.25") == Objective("rate", 0.25)
    assert str(Objective.parse("FPR=0.05")) == "false_refusal_rate=0.05"  # named by rt-metrics' key
    for bad in ("f2", "rate", "fpr=x", "rate=-0.1", "f1=0.5"):
        with pytest.raises(ValueError):
            Objective.parse(bad)


# ---------------------------------------------------------------------------
# the streaming fast path agrees with the checked rule


value = st.one_of(
    prob,
    st.sampled_from([0, 1, 2, -1, 1.5, -0.0, True, False, None, "0.5", [0.5], {}]),
)
records = st.fixed_dictionaries(
    {"id": st.integers(0, 10)},
    optional={
        "p_refuse": value,
        "p_respond": value,
        "p_cat": st.one_of(st.dictionaries(st.sampled_from(SLUGS), value, max_size=3), st.none(), value),
        "decision": st.just("old"),
    },
)


rules = st.one_of(
    st.just(Thresholds()),
    grid_prob.map(lambda t: Thresholds(threshold=t)),
    st.builds(
        Thresholds,
        categories=st.dictionaries(st.sampled_from(SLUGS), grid_prob, min_size=1),
        default=st.one_of(st.none(), grid_prob),
    ),
    grid_prob.map(lambda t: Thresholds(default=t)),
)


def apply_all(lines: bytes, rule: Thresholds, unbuffered: bool):
    out = io.BytesIO()
    try:
        apply_stream(io.BytesIO(lines), "in.jsonl", out, rule, unbuffered=unbuffered)
    except RecordError as e:
        return out.getvalue(), e.format()
    return out.getvalue(), None


def reference(recs, rule: Thresholds):
    """What apply_stream must write: Thresholds.decide on each record, up to the first error."""
    out = b""
    first = None  # the first p_cat's slugs fix every later record's (issue 10 item 12)
    for lineno, record in enumerate(recs, 1):
        r = dict(record)
        try:
            if rule.mode == "category" and lineno == 1:
                rule = rule.resolve(get_p_cat(r) or {})
            r["decision"], r["decision_cat"] = rule.decide(r)
            pc = r.get("p_cat")
            if isinstance(pc, dict) and pc:
                if first is None:
                    first = list(pc)
                elif set(pc) != set(first):
                    check_slug_set(first, pc)
                    raise AssertionError("check_slug_set accepted another slug set")
        except RecordError as e:
            return out, f"in.jsonl:{lineno}: {e.format()}"
        out += orjson.dumps(r) + b"\n"
    return out, None


@settings(max_examples=400)
@given(st.lists(records, min_size=1, max_size=4), rules, st.booleans())
def test_fast_paths_match_the_checked_rule(recs, rule, unbuffered):
    lines = b"".join(orjson.dumps(r) + b"\n" for r in recs)
    assert apply_all(lines, rule, unbuffered) == reference(recs, rule)


@given(
    st.lists(st.fixed_dictionaries({"p_refuse": prob, "p_respond": prob, "p_cat": p_cats}), max_size=5), rules
)
def test_decisions_follow_the_pure_rules(recs, rule):
    out, err = apply_all(b"".join(orjson.dumps(r) + b"\n" for r in recs), rule, False)
    assert err is None
    for r, o in zip(recs, (orjson.loads(x) for x in out.splitlines()), strict=True):
        if rule.mode == "global":
            expected = global_rule(r["p_refuse"], rule.threshold, r["p_cat"])
        elif rule.mode == "own":
            expected = own_choice_category(r["p_cat"], r["p_respond"])
        else:
            expected = category_rule(r["p_cat"], rule.categories, rule.default, r["p_respond"])
        assert (o["decision"], o["decision_cat"]) == expected
        assert list(o) == [*r, "decision", "decision_cat"]


# ---------------------------------------------------------------------------
# fitting: hand-checked cases


POS = [0.9, 0.8, 0.4]
NEG = [0.7, 0.3, 0.1]


def test_candidate_thresholds():
    assert candidate_thresholds(np.array([0.4, 0.2, 0.2, 1.0])).tolist() == [
        0.0,
        0.30000000000000004,
        0.7,
        1.0,
    ]
    assert candidate_thresholds(np.array([])).tolist() == [0.0, 1.0]


def test_fit_f1():
    assert fit_threshold(POS, NEG, Objective("f1")) == pytest.approx(0.35)  # tp 3, fp 1: F1 6/7


def test_fit_f1_ties_go_to_the_higher_threshold():
    # t=0: tp 2 fp 2 (F1 2/3); t=0.7: tp 1 fp 0 (F1 2/3): the higher one wins
    assert fit_threshold([0.9, 0.2], [0.5, 0.4], Objective("f1")) == pytest.approx(0.7)


def test_fit_rate():
    scores = [i / 10 for i in range(1, 11)]
    assert fit_threshold(scores, [], Objective("rate", 0.3)) == pytest.approx(0.75)
    assert fit_threshold(scores[:5], scores[5:], Objective("rate", 0.3)) == pytest.approx(0.75)
    # 2 or 3 of 10 are equally close to 25%: the higher threshold (2 refusals) wins
    assert fit_threshold(scores, [], Objective("rate", 0.25)) == pytest.approx(0.85)
    assert fit_threshold(scores, [], Objective("rate", 0.0)) == 1.0
    assert fit_threshold(scores, [], Objective("rate", 1.0)) == 0.0


def test_fit_fpr():
    assert fit_threshold(POS, NEG, Objective("fpr", 0.0)) == pytest.approx(0.75)
    assert fit_threshold(POS, NEG, Objective("fpr", 0.34)) == pytest.approx(0.35)
    assert fit_threshold(POS, NEG, Objective("fpr", 0.5)) == pytest.approx(0.35)
    # every threshold keeps the rate: full recall with the fewest refusals
    assert fit_threshold(POS, NEG, Objective("fpr", 1.0)) == pytest.approx(0.35)
    # no respond rows: every threshold keeps the rate, so maximal recall
    assert fit_threshold(POS, [], Objective("fpr", 0.0)) == 0.0
    # nothing meets the target (a respond row scores 1.0): the lowest false refusal rate
    assert fit_threshold([0.5], [1.0, 0.2], Objective("fpr", 0.0)) == 1.0


def fit_data(rows):
    """rows: (label, category, {slug: p})"""
    return FitData(
        labels=[y == "refuse" for y, _, _ in rows],
        categories=[c for _, c, _ in rows],
        slugs=list(rows[0][2]),
        p_cat=[list(pc.values()) for _, _, pc in rows],
    )


def test_fit_per_category_f1_improves_the_overall_f1():
    data = fit_data(
        [
            ("refuse", "a", {"a": 0.6, "b": 0.0}),
            ("respond", "a", {"a": 0.3, "b": 0.0}),
            ("respond", "b", {"a": 0.5, "b": 0.0}),  # a's own-rows threshold (0.45) refuses this row
            ("refuse", "b", {"a": 0.0, "b": 0.9}),
        ]
    )
    t = fit(data, Objective("f1"), per_category=True)
    # one shared threshold (0.55, on the highest category probability) already separates: it wins the tie
    assert t.categories == {"a": pytest.approx(0.55), "b": pytest.approx(0.55)}
    assert t.meta["objective_value"] == 1.0 and t.meta["n"] == 4
    assert t.meta["metrics"]["tp"] == 2 and t.meta["metrics"]["fp"] == 0


def test_fit_per_category_rate_uses_each_categorys_own_rows():
    data = fit_data(
        [
            ("refuse", "a", {"a": 0.9, "b": 0.1}),
            ("respond", "a", {"a": 0.5, "b": 0.1}),
            ("respond", "a", {"a": 0.3, "b": 0.1}),
            ("respond", "a", {"a": 0.1, "b": 0.1}),
            ("refuse", "b", {"a": 0.0, "b": 0.8}),
            ("respond", "b", {"a": 0.0, "b": 0.2}),
        ]
    )
    t = fit(data, Objective("rate", 0.5), per_category=True)
    assert t.categories == {"a": pytest.approx(0.4), "b": pytest.approx(0.5)}
    assert t.meta["objective_value"] == pytest.approx(3 / 6)  # overall refusal rate


def test_fit_per_category_fpr_falls_back_to_all_respond_rows():
    data = fit_data(
        [
            ("refuse", "a", {"a": 0.9, "b": 0.6}),
            ("respond", "a", {"a": 0.2, "b": 0.5}),
            ("refuse", "b", {"a": 0.1, "b": 0.7}),  # b has no respond rows of its own
            ("refuse", "b", {"a": 0.1, "b": 0.4}),
        ]
    )
    t = fit(data, Objective("fpr", 0.0), per_category=True)
    # a: its respond row scores 0.2, its refuse row 0.9 -> between them
    # b: judged on all respond rows (b score 0.5): the lowest candidate above it, between 0.5 and 0.7
    assert t.categories == {"a": pytest.approx(0.55), "b": pytest.approx(0.6)}
    assert t.meta["metrics"]["fp"] == 0


def test_fit_global_metadata():
    data = FitData(labels=[True, True, True, False, False, False], categories=[None] * 6, p_refuse=POS + NEG)
    t = fit(data, Objective("f1"), per_category=False, fitted_on="dev.jsonl")
    assert t.threshold == pytest.approx(0.35)
    assert t.meta == {
        "objective": "f1",
        "objective_value": pytest.approx(6 / 7),
        "n": 6,
        "fitted_on": "dev.jsonl",
        "metrics": confusion([True, True, True, True, False, False], data.labels),
    }


def test_collect_fit_data_checks_rows():
    rows = [(1, {"p_refuse": 0.5, "label": "refuse", "category": "Humanizing requests"})]
    data = collect_fit_data(rows, "x.jsonl", per_category=False)
    assert data.categories == ["humanizing"] and data.labels == [True] and data.p_refuse == [0.5]
    with pytest.raises(RecordError, match=r"^x.jsonl:7: missing label"):
        collect_fit_data([(7, {"p_refuse": 0.5})], "x.jsonl", per_category=False)
    with pytest.raises(RecordError, match=r"^x.jsonl:2: p_cat has no 'b'"):
        collect_fit_data(
            [
                (1, {"p_cat": {"a": 0.1, "b": 0.2}, "label": "refuse"}),
                (2, {"p_cat": {"a": 0.1}, "label": "refuse"}),
            ],
            "x.jsonl",
            per_category=True,
        )
    with pytest.raises(RecordError, match=r"^x.jsonl:3: category must be a string"):
        collect_fit_data(
            [(3, {"p_refuse": 0.5, "label": "refuse", "category": 5})], "x.jsonl", per_category=False
        )


# ---------------------------------------------------------------------------
# fitting: properties


labelled = st.lists(st.tuples(grid_prob, st.booleans()), min_size=1, max_size=40)


def split(rows):
    pos = [s for s, y in rows if y]
    neg = [s for s, y in rows if not y]
    return pos, neg


def counts(pos, neg, t):
    return sum(s >= t for s in pos), sum(s >= t for s in neg)


def f1_at(pos, neg, t):
    tp, fp = counts(pos, neg, t)
    return 2 * tp / (tp + fp + len(pos)) if tp + fp + len(pos) else 0.0


@given(labelled, st.lists(prob, max_size=10))
def test_fitted_f1_threshold_beats_every_other_threshold(rows, others):
    pos, neg = split(rows)
    t = fit_threshold(pos, neg, Objective("f1"))
    best = f1_at(pos, neg, t)
    for other in [*candidate_thresholds(np.array(pos + neg)).tolist(), *others]:
        assert best >= f1_at(pos, neg, other) - 1e-9


@given(labelled, prob)
def test_fitted_rate_is_the_closest_reachable(rows, target):
    pos, neg = split(rows)
    n = len(rows)
    t = fit_threshold(pos, neg, Objective("rate", target))
    gap = abs(sum(counts(pos, neg, t)) / n - target)
    for other in candidate_thresholds(np.array(pos + neg)).tolist():
        assert gap <= abs(sum(counts(pos, neg, other)) / n - target) + 1e-9
        if abs(sum(counts(pos, neg, other)) / n - target) <= gap + 1e-12:
            assert t >= other or sum(counts(pos, neg, other)) == sum(counts(pos, neg, t))


@given(labelled, prob)
def test_fitted_fpr_threshold_keeps_the_rate_and_maximises_recall(rows, target):
    pos, neg = split(rows)
    t = fit_threshold(pos, neg, Objective("fpr", target))
    tp, fp = counts(pos, neg, t)
    fpr = fp / len(neg) if neg else 0.0
    feasible = []
    for other in candidate_thresholds(np.array(pos + neg)).tolist():
        o_tp, o_fp = counts(pos, neg, other)
        if (o_fp / len(neg) if neg else 0.0) <= target + 1e-12:  # the fit's own tolerance
            feasible.append(o_tp)
    if feasible:
        assert fpr <= target + 1e-12
        assert tp == max(feasible)


#: labelled rows for the per-category fits: (refuse?, category or None, {slug: p})
labelled_cat_rows = st.lists(
    st.tuples(st.booleans(), st.sampled_from([*SLUGS, None]), p_cats), min_size=1, max_size=25
)


@settings(max_examples=60, deadline=None)
@given(labelled_cat_rows)
def test_per_category_f1_fit_is_a_local_optimum(rows):
    data = fit_data([("refuse" if y else "respond", c, pc) for y, c, pc in rows])
    t = fit(data, Objective("f1"), per_category=True)
    scores = np.array(data.p_cat)

    def overall_f1(ts):
        refused = (scores >= np.array([ts[s] for s in data.slugs])).any(axis=1).tolist()
        return confusion(refused, data.labels)["f1"] or 0.0  # None: no refuse rows and none refused

    best = overall_f1(t.categories)
    assert best == pytest.approx(t.meta["objective_value"] or 0.0)
    for j, slug in enumerate(data.slugs):
        for other in candidate_thresholds(scores[:, j]).tolist():
            assert best >= overall_f1({**t.categories, slug: other}) - 1e-9


@settings(max_examples=60, deadline=None)
@given(labelled_cat_rows)
def test_per_category_f1_fit_is_never_worse_than_one_shared_threshold(rows):
    data = fit_data([("refuse" if y else "respond", c, pc) for y, c, pc in rows])
    t = fit(data, Objective("f1"), per_category=True)
    top = np.array(data.p_cat).max(axis=1)
    for shared in candidate_thresholds(top).tolist():
        refused = (top >= shared).tolist()
        assert (t.meta["objective_value"] or 0.0) >= (confusion(refused, data.labels)["f1"] or 0.0) - 1e-9


def test_per_category_f1_fit_escapes_refuse_everything():
    # Within each category refusing everything is its best own-rows F1 (3 refuse rows, 1 respond row,
    # scores barely separated), so the own-rows fits are 0 and, with every category firing on every
    # row, no single threshold can move the decision. One shared threshold separates the classes.
    rows = []
    for c in ("a", "b"):
        other = "b" if c == "a" else "a"
        for p in (0.9, 0.8, 0.25):
            rows.append(("refuse", c, {c: p, other: 0.05}))
        rows.append(("respond", c, {c: 0.3, other: 0.2}))
    for _ in range(6):  # plain respond rows, no category, low everywhere
        rows.append(("respond", None, {"a": 0.1, "b": 0.1}))
    data = fit_data(rows)
    t = fit(data, Objective("f1"), per_category=True)
    refused = t.meta["metrics"]["tp"] + t.meta["metrics"]["fp"]
    assert refused < len(rows), t.categories
    assert t.meta["objective_value"] > confusion([True] * len(rows), data.labels)["f1"]


# ---------------------------------------------------------------------------
# the chunked fast path of apply_stream against the line-by-line reference


class Trickle:
    """A stream whose reads return the given pieces one at a time (a slow pipe, cut anywhere)."""

    def __init__(self, pieces: list[bytes]):
        self.pieces = list(pieces)

    def read1(self, size: int = -1) -> bytes:
        return self.pieces.pop(0) if self.pieces else b""

    read = read1


def line_reference(lines: list[bytes], rule: Thresholds):
    """What apply_stream must write for these lines: each line read by records.parse_line, decided
    by the checked rule (the reference path of rtools.thresholds.apply), written by records.dumps, up
    to the first error."""
    from rtools.thresholds.apply import _Applier

    checked = _Applier(rule, "in.jsonl")
    out = b""
    for lineno, line in enumerate(lines, 1):
        try:
            r = parse_line(line, "in.jsonl", lineno)
            if r is not None:
                out += dumps(checked.decide_record(r, lineno))
        except RecordError as e:
            return out, e.format()
    return out, None


@settings(max_examples=150, deadline=None)
@given(st.lists(records, min_size=1, max_size=6), rules)
def test_decide_matches_the_checked_path(recs, rule):
    """rtools.thresholds.decide tries the fast path record by record: the same records, or the same error."""
    lines = [orjson.dumps(r) + b"\n" for r in recs]
    expected = line_reference(lines, rule)
    out = b""
    try:
        for r in decide(recs, rule, "in.jsonl"):
            out += dumps(r)
        got = out, None
    except RecordError as e:
        got = out, e.format()
    assert got == expected


SPELLINGS = st.sampled_from(["orjson", "spaced", "ascii", "crlf", "blank-before"])


def spell(record, how: str) -> bytes:
    if how == "orjson":
        return dumps(record)  # orjson's bytes; the standard library's for integers beyond 64 bits
    if how == "crlf":
        return dumps(record)[:-1] + b"\r\n"
    if how == "blank-before":
        return b"\n" + dumps(record)
    return json.dumps(record, ensure_ascii=how == "ascii").encode() + b"\n"


chunk_records = st.fixed_dictionaries(
    {"id": st.one_of(st.integers(0, 10), st.sampled_from([2**64, -(2**63) - 1, 10**400, 10**18]))},
    optional={
        "p_refuse": value,
        "p_respond": value,
        "p_cat": st.one_of(st.dictionaries(st.sampled_from(SLUGS), value, max_size=3), st.none(), value),
        "decision": st.just("old"),
        "note": st.sampled_from(["\x00\x00", "0000\\", "a\nb", "1.5e+300", 'x"}\n{"'] + [""]),
    },
)
common = st.fixed_dictionaries(
    {"id": st.integers(0, 10), "p_refuse": prob, "p_respond": prob, "p_cat": p_cats},
    optional={"x": st.floats(allow_nan=False, allow_infinity=False)},
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.one_of(common, common, chunk_records), SPELLINGS), min_size=1, max_size=12),
    rules,
    st.lists(st.integers(1, 200), min_size=1, max_size=8),
    st.booleans(),
)
def test_fast_chunks_match_the_line_by_line_path(recs, rule, cuts, unbuffered):
    data = b"".join(spell(r, how) for r, how in recs)
    pieces, i = [], 0
    while i < len(data):  # cut the stream anywhere, so chunks start and end everywhere
        n = cuts[len(pieces) % len(cuts)]
        pieces.append(data[i : i + n])
        i += n
    out = io.BytesIO()
    try:
        apply_stream(Trickle(pieces), "in.jsonl", out, rule, unbuffered=unbuffered)
        got = out.getvalue(), None
    except RecordError as e:
        got = out.getvalue(), e.format()
    assert got == line_reference(data.split(b"\n")[:-1] if data.endswith(b"\n") else data.split(b"\n"), rule)


@given(
    st.lists(
        st.sampled_from(
            [
                '{"a":1}',
                "{}",
                '{"b":[{}',
                "{}]}",
                '{"c":[1',
                "2]}",
                '"\\u0000\\u0000"',
                '{"a":1},"\\u0000\\u0000",{"b":2}',
                "",
                " ",
                "[]",
                '{"b":[[{}',
                "{}]]}",
                '{"d":"0000\\\\"}',
                "{},{}",
            ]
        ),
        min_size=1,
        max_size=6,
    )
)
def test_read_chunk_is_one_record_per_line_or_nothing(lines):
    chunk = "".join(line + "\n" for line in lines).encode()
    got = read_chunk(chunk)
    if got is None:
        return
    assert got == [orjson.loads(line) for line in lines]


def test_read_chunk_refuses_lines_that_only_parse_together():
    # each line alone is invalid JSON; joined by commas they make two objects
    assert read_chunk(b'{"a":1},{"b":[{}\n{}]}\n') is None
    assert read_chunk(b'{"a":1},"\\u0000\\u0000",{"b":2}\n{"c":3}\n') is None
    assert read_chunk(b'{"a":1}\n{"b":2}\n') == [{"a": 1}, {"b": 2}]


@pytest.mark.parametrize(
    "text, big",
    [
        (b'{"p": 0.0012345678901234567891}', False),  # the digits of a fraction
        (b'{"p": 1.0012345678901234567891e-5}', False),
        (b'{"id": 18446744073709551616}', True),
        (b'{"id": -9223372036854775809}', True),
        (b'{"id": [1, 12345678901234567890]}', True),
        (b'{"s": "1234567890123456789"}', True),  # a string: read exactly, which changes nothing
        (b'{"id": 123456789012345678}', False),
    ],
)
def test_may_hold_big_int_finds_integer_digit_runs_only(text, big):
    assert may_hold_big_int(text) is big
