"""Calibration (issue 21 item 4, the rt-threshold half): fitted maps against hand-computed answers,
the strict file format, applying a calibration before deciding, and the command."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtools.records import RecordError
from rtools.thresholds import Thresholds, decide
from rtools.thresholds.calibration import (
    Calibration,
    Isotonic,
    fit_calibration,
    logit,
    sigmoid,
)


def rows(pairs, **extra):
    """``(line, record)`` pairs of labelled p_refuse scores."""
    return [
        (i, {"p_refuse": p, "label": "refuse" if y else "respond", **extra})
        for i, (p, y) in enumerate(pairs, 1)
    ]


def jsonl(records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


# ---------------------------------------------------------------------------
# the fitted maps, by hand


def test_isotonic_is_pool_adjacent_violators():
    # labels 0 1 0 1 at scores .1 .2 .3 .4: the violating pair (.2: 1, .3: 0) pools to 0.5
    cal = fit_calibration(rows([(0.1, 0), (0.2, 1), (0.3, 0), (0.4, 1)]), "isotonic")
    m = cal.maps["p_refuse"]
    assert m == Isotonic((0.1, 0.2, 0.3, 0.4), (0.0, 0.5, 0.5, 1.0))
    assert [m(p) for p in (0.0, 0.1, 0.15, 0.25, 0.35, 0.4, 1.0)] == pytest.approx(
        [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    )


def test_isotonic_pools_tied_scores_first():
    # the tie at .5 is one block (1/2), then .7 (0) violates it: one block at 1/3 from .5 to .7
    cal = fit_calibration(rows([(0.5, 1), (0.5, 0), (0.7, 0), (0.9, 1)]), "isotonic")
    assert cal.maps["p_refuse"] == Isotonic((0.5, 0.7, 0.9), (1 / 3, 1 / 3, 1.0))


def test_isotonic_matches_a_brute_force_least_squares_fit():
    rng = np.random.default_rng(5)
    s = rng.integers(0, 8, 40) / 8
    y = rng.random(40) < s
    cal = fit_calibration(rows(zip(s.tolist(), y.tolist(), strict=True)), "isotonic")
    m = cal.maps["p_refuse"]
    fitted = np.array([m(float(p)) for p in s])
    assert np.all(np.diff(fitted[np.argsort(s)]) >= -1e-15)  # non-decreasing
    # among non-decreasing functions of the 8 score values, the fitted one has the least squared error:
    # check against every other non-decreasing step of the block values (a local perturbation test)
    err = np.sum((fitted - y) ** 2)
    ux = np.unique(s)
    vals = np.array([m(float(u)) for u in ux])
    for i in range(len(ux)):
        for d in (-0.01, 0.01):
            other = vals.copy()
            other[i] += d
            if np.all(np.diff(other) >= 0):
                alt = other[np.searchsorted(ux, s)]
                assert err <= np.sum((alt - y) ** 2) + 1e-12


def test_temperature_where_the_optimum_is_known():
    # scores sigmoid(+2) with 3 of 4 refusals and sigmoid(-2) with 1 of 4: sigmoid(2/T) = 3/4, so T = 2/ln 3
    pairs = [(sigmoid(2.0), y) for y in (1, 1, 1, 0)] + [(sigmoid(-2.0), y) for y in (0, 0, 0, 1)]
    cal = fit_calibration(rows(pairs), "temperature")
    assert 1.0 / cal.maps["p_refuse"].scale == pytest.approx(2 / math.log(3), rel=1e-9)
    assert cal.maps["p_refuse"](sigmoid(2.0)) == pytest.approx(0.75, rel=1e-9)
    assert cal.to_dict()["fields"]["p_refuse"] == {"temperature": pytest.approx(2 / math.log(3))}


def test_platt_where_the_optimum_is_known():
    # two scores, each with its own refusal rate: the fit reproduces both rates exactly
    z1, z2 = logit(0.8), logit(0.4)
    pairs = [(0.8, y) for y in (1, 1, 1, 0)] + [(0.4, y) for y in (1, 0, 0, 0)]
    cal = fit_calibration(rows(pairs), "platt")
    m = cal.maps["p_refuse"]
    a = (logit(0.75) - logit(0.25)) / (z1 - z2)
    assert m.scale == pytest.approx(a, rel=1e-9)
    assert m.bias == pytest.approx(logit(0.75) - a * z1, rel=1e-9)
    assert (m(0.8), m(0.4)) == (pytest.approx(0.75), pytest.approx(0.25))


def test_temperature_keeps_the_order_and_reduces_the_log_loss():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 3, 300)
    y = rng.random(300) < 1 / (1 + np.exp(-z / 3))  # the scores are three times too confident
    cal = fit_calibration(rows(zip((1 / (1 + np.exp(-z))).tolist(), y.tolist(), strict=True)), "temperature")
    assert 1 / cal.maps["p_refuse"].scale == pytest.approx(3, rel=0.3)
    before, after = cal.log_loss["p_refuse"]
    assert after < before


def test_each_category_is_calibrated_against_its_own_refusals():
    recs = [
        {"label": "refuse", "category": "safety", "p_cat": {"safety": 0.9, "humanizing": 0.1}},
        {"label": "refuse", "category": "humanizing", "p_cat": {"safety": 0.2, "humanizing": 0.8}},
        {"label": "refuse", "p_cat": {"safety": 0.7, "humanizing": 0.7}},  # unknown category: left out
        {"label": "respond", "p_cat": {"safety": 0.3, "humanizing": 0.6}},
        {"label": "respond", "p_cat": {"safety": 0.1, "humanizing": 0.2}},
    ]
    cal = fit_calibration(list(enumerate(recs, 1)), "isotonic")
    assert set(cal.maps) == {"p_cat.safety", "p_cat.humanizing"}  # no p_refuse on these records
    # safety: scores .9 (1), .2 (0), .3 (0), .1 (0): one block at 0 from .1 to .3, then 1
    assert cal.maps["p_cat.safety"] == Isotonic((0.1, 0.3, 0.9), (0.0, 0.0, 1.0))
    # humanizing: .1 (0), .8 (1), .6 (0), .2 (0)
    assert cal.maps["p_cat.humanizing"] == Isotonic((0.1, 0.6, 0.8), (0.0, 0.0, 1.0))


@pytest.mark.parametrize(
    "pairs, method, message",
    [
        ([(0.2, 1), (0.9, 1)], "isotonic", "cannot calibrate p_refuse: every record is refused"),
        ([(0.2, 0), (0.9, 0)], "platt", "cannot calibrate p_refuse: no record is refused"),
        ([(0.2, 0), (0.9, 1)], "platt", "the scores separate refusals from answers"),
        ([(0.2, 0), (0.9, 1)], "temperature", "the scores separate refusals from answers"),
        ([(0.9, 0), (0.8, 1), (0.9, 1), (0.8, 0), (0.1, 1)], "temperature", "a temperature cannot reverse"),
    ],
)
def test_what_cannot_be_calibrated_is_an_error(pairs, method, message):
    with pytest.raises(RecordError, match=message):
        fit_calibration(rows(pairs), method, fitted_on="dev.jsonl")


@pytest.mark.parametrize("method", ["temperature", "platt", "isotonic"])
def test_a_category_without_refusals_is_left_as_it_is_and_said(method, tmp_path, invoke):
    # a small dev split without one category's refusals: the other fields are calibrated, that
    # category gets an identity map (saved, so -T still knows the slug) and a warning on stderr
    recs = [
        {
            "label": "refuse",
            "category": "safety",
            "p_refuse": 0.9,
            "p_cat": {"safety": 0.8, "incomplete": 0.1},
        },
        {
            "label": "refuse",
            "category": "safety",
            "p_refuse": 0.4,
            "p_cat": {"safety": 0.3, "incomplete": 0.1},
        },
        {"label": "respond", "p_refuse": 0.6, "p_cat": {"safety": 0.5, "incomplete": 0.1}},
        {"label": "respond", "p_refuse": 0.2, "p_cat": {"safety": 0.1, "incomplete": 0.1}},
        {"label": "respond", "p_refuse": 0.3, "p_cat": {"safety": 0.1, "incomplete": 0.2}},
    ]
    cal = fit_calibration(list(enumerate(recs, 1)), method, fitted_on="dev.jsonl")
    assert cal.notes == (
        "p_cat.incomplete left uncalibrated (an identity map): no record is a refusal of category "
        "incomplete in dev.jsonl; add records of both kinds to calibrate it",
    )
    again = Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    for p in (0.0, 0.013, 0.5, 0.77, 1.0):
        assert again.maps["p_cat.incomplete"](p) == pytest.approx(p, abs=1e-11)  # the logit clips at 1e-12
    assert again.maps["p_cat.safety"](0.8) != pytest.approx(0.8)
    dev = tmp_path / "dev.jsonl"
    dev.write_text(jsonl([{**r, "p_respond": 1 - r["p_refuse"]} for r in recs]))
    r = invoke("rt-threshold", ["--calibrate", method, "-q", "--save", str(tmp_path / "c.json"), str(dev)])
    assert r.exit_code == 0, r.stderr
    assert "rt-threshold: warning: p_cat.incomplete left uncalibrated" in r.stderr


def test_records_without_a_label_are_an_error():
    with pytest.raises(RecordError, match=r"^dev.jsonl:2: missing label"):
        fit_calibration(
            [(1, {"p_refuse": 0.1, "label": "respond"}), (2, {"p_refuse": 0.2})], "isotonic", "dev.jsonl"
        )


# ---------------------------------------------------------------------------
# the file format: strict


def good_file() -> dict:
    return {
        "threshold": 0.5,
        "calibration": {
            "version": 1,
            "method": "isotonic",
            "fields": {"p_refuse": {"x": [0.1, 0.4], "y": [0.0, 1.0]}},
            "n": 4,
            "fitted_on": "dev.jsonl",
        },
    }


def test_calibration_round_trips_through_the_thresholds_file(tmp_path):
    for method, spec in (
        ("isotonic", {"x": [0.1, 0.4], "y": [0.0, 1.0]}),
        ("temperature", {"temperature": 2.0}),
        ("platt", {"scale": 1.5, "bias": -0.25}),
    ):
        d = good_file()
        d["calibration"]["method"] = method
        d["calibration"]["fields"]["p_refuse"] = spec
        t = Thresholds.from_dict(d)
        assert t.to_dict() == d
        t.save(str(tmp_path / "t.json"))
        assert Thresholds.load(str(tmp_path / "t.json")) == t


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c.update(extra=1), "calibration has unknown key 'extra'"),
        (lambda c: c.update(version=2), "calibration.version must be 1"),
        (lambda c: c.update(method="spline"), "calibration.method must be one of"),
        (
            lambda c: c["fields"].update({"p_respond": {"x": [0.1], "y": [0.2]}}),
            "expected p_refuse or p_cat.SLUG",
        ),
        (lambda c: c["fields"]["p_refuse"].update(z=1), "p_refuse has unknown key 'z'"),
        (lambda c: c["fields"]["p_refuse"].update(x=[0.4, 0.1]), "x must be strictly increasing"),
        (lambda c: c["fields"]["p_refuse"].update(y=[1.0, 0.0]), "y must be non-decreasing"),
        (lambda c: c["fields"]["p_refuse"].update(y=[0.0, 1.5]), r"y\[1\] must be in \[0, 1\]"),
        (lambda c: c["fields"]["p_refuse"].update(y=[0.0, True]), r"y\[1\] must be a finite number"),
        (lambda c: c["fields"]["p_refuse"].update(y=[0.0]), "lists of breakpoints of one length"),
        (lambda c: c.update(fields={}), "calibration.fields must be a non-empty object"),
        (lambda c: c.update(n=0), "calibration.n must be a positive integer"),
        (
            lambda c: c.update(method="temperature", fields={"p_refuse": {"temperature": -1}}),
            "temperature must be positive",
        ),
        (
            lambda c: c.update(method="platt", fields={"p_refuse": {"scale": 1e400, "bias": 0}}),
            "invalid JSON",
        ),
    ],
)
def test_a_bad_calibration_is_refused_naming_the_file(change, message, tmp_path, invoke):
    d = good_file()
    change(d["calibration"])
    path = tmp_path / "t.json"
    path.write_text(json.dumps(d).replace("Infinity", "1e400"))
    r = invoke("rt-threshold", ["-T", str(path)], input='{"p_refuse": 0.5, "p_respond": 0.1}\n')
    assert r.exit_code == 1, r.stdout
    assert r.stderr.startswith(f"rt-threshold: {path}:"), r.stderr
    assert __import__("re").search(message, r.stderr), r.stderr
    assert r.stdout == ""


# ---------------------------------------------------------------------------
# applying


CAL = Calibration(
    method="isotonic",
    maps={
        "p_refuse": Isotonic((0.0, 0.5), (0.0, 1.0)),
        "p_cat.safety": Isotonic((0.0, 1.0), (0.0, 0.5)),
        "p_cat.humanizing": Isotonic((0.0, 1.0), (0.0, 1.0)),
    },
)


def test_applying_rewrites_the_scores_and_keeps_the_raw_ones_at_the_end():
    rec = {"id": 1, "p_refuse": 0.25, "p_respond": 0.7, "p_cat": {"safety": 0.2, "humanizing": 0.05}}
    [out] = decide([rec], Thresholds(threshold=0.5, calibration=CAL))
    assert list(out) == [
        "id",
        "p_refuse",
        "p_respond",
        "p_cat",
        "p_refuse_raw",
        "p_cat_raw",
        "decision",
        "decision_cat",
    ]
    assert out["p_refuse"] == 0.5 and out["p_refuse_raw"] == 0.25
    assert out["p_cat"] == {"safety": pytest.approx(0.1), "humanizing": pytest.approx(0.05)}
    assert out["p_cat_raw"] == rec["p_cat"]
    # the threshold applies to the calibrated score: 0.5 >= 0.5 refuses (raw 0.25 would not)
    assert (out["decision"], out["decision_cat"]) == ("refuse", "safety")
    # applied again, nothing changes: the raw scores are the input
    [again] = decide([out], Thresholds(threshold=0.5, calibration=CAL))
    assert again == out


def test_the_own_choice_is_the_models_on_its_raw_scores():
    rec = {"p_refuse": 0.4, "p_respond": 0.6}  # calibrated p_refuse is 0.8 > p_respond
    [out] = decide([rec], Thresholds(calibration=CAL))
    assert out["decision"] == "respond" and out["p_refuse"] == pytest.approx(0.8)


def test_a_slug_the_calibration_does_not_know_is_an_error(invoke, tmp_path):
    path = tmp_path / "cal.json"
    Thresholds(threshold=0.5, calibration=CAL).save(str(path))
    line = '{"p_refuse": 0.3, "p_cat": {"safety": 0.2, "medical": 0.1}}\n'
    r = invoke("rt-threshold", ["-T", str(path)], input='{"p_refuse": 0.3}\n' + line)
    assert r.exit_code == 1
    assert r.stderr.startswith(
        "rt-threshold: <stdin>:2: p_cat has 'medical', which the calibration has no map for"
    )
    assert len(r.stdout.splitlines()) == 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=30), st.sampled_from(["-t", "--cat"]))
def test_applying_streams_the_same_bytes_as_decide(scores, how):
    from io import BytesIO

    from rtools.records import dumps
    from rtools.thresholds import apply_stream

    recs = [
        {"i": i, "p_refuse": s, "p_respond": 0.1, "p_cat": {"safety": s / 2, "humanizing": s / 3}}
        for i, s in enumerate(scores)
    ]
    rule = (
        Thresholds(threshold=0.5, calibration=CAL)
        if how == "-t"
        else Thresholds(default=0.2, calibration=CAL)
    )
    out = BytesIO()
    apply_stream(BytesIO(b"".join(dumps(r) for r in recs)), "x", out, rule)
    assert out.getvalue() == b"".join(dumps(r) for r in decide(recs, rule))


# ---------------------------------------------------------------------------
# the command


DEV = [
    {"id": i, "p_refuse": p, "p_respond": 1 - p, "label": y}
    for i, (p, y) in enumerate(
        [
            (0.1, "respond"),
            (0.2, "refuse"),
            (0.3, "respond"),
            (0.4, "refuse"),
            (0.4, "respond"),
            (0.6, "refuse"),
        ]
    )
]


def test_calibrate_saves_a_calibration_that_rt_threshold_applies(invoke, tmp_path):
    saved = tmp_path / "cal.json"
    r = invoke("rt-threshold", ["--calibrate", "isotonic", "--save", str(saved)], input=jsonl(DEV))
    assert r.exit_code == 0, r.stderr
    # PAV: .1 (0), .2 (1), .3 (0) -> .2-.3 pool to 1/2; .4 (1, 0) -> 1/2; .6 (1)
    assert json.loads(saved.read_text())["calibration"]["fields"]["p_refuse"] == {
        "x": [0.1, 0.2, 0.4, 0.6],
        "y": [0.0, 0.5, 0.5, 1.0],
    }
    assert r.stderr.startswith("rt-threshold: calibrate isotonic: p_refuse log loss ")
    out = [json.loads(x) for x in r.stdout.splitlines()]
    assert [o["p_refuse"] for o in out] == [0.0, 0.5, 0.5, 0.5, 0.5, 1.0]
    assert [o["p_refuse_raw"] for o in out] == [d["p_refuse"] for d in DEV]
    # the own choice, on the raw scores: unchanged by the calibration
    assert [o["decision"] for o in out] == [
        "refuse" if d["p_refuse"] > d["p_respond"] else "respond" for d in DEV
    ]
    test = jsonl([{"p_refuse": 0.15, "p_respond": 0.8}, {"p_refuse": 0.5, "p_respond": 0.5}])
    r = invoke("rt-threshold", ["-T", str(saved)], input=test)
    assert [json.loads(x)["p_refuse"] for x in r.stdout.splitlines()] == pytest.approx([0.25, 0.75])


def test_calibrate_then_fit_fits_on_the_calibrated_scores(invoke, tmp_path):
    saved = tmp_path / "cal.json"
    r = invoke(
        "rt-threshold",
        ["-q", "--calibrate", "isotonic", "--fit", "f1", "--save", str(saved)],
        input=jsonl(DEV),
    )
    assert r.exit_code == 0, r.stderr
    t = json.loads(saved.read_text())
    # calibrated scores 0, .5, .5, .5, .5, 1: F1 is best refusing the .5 and 1 rows (threshold .25)
    assert t["threshold"] == pytest.approx(0.25) and t["calibration"]["method"] == "isotonic"
    assert [json.loads(x)["decision"] for x in r.stdout.splitlines()] == ["respond"] + ["refuse"] * 5
    r = invoke("rt-threshold", ["--calibrate", "isotonic", "-t", "0.5"], input=jsonl(DEV))
    assert r.exit_code == 2 and "--threshold cannot be combined with --calibrate" in r.stderr
    r = invoke("rt-threshold", ["--calibrate", "isotonic", "--per-category"], input=jsonl(DEV))
    assert r.exit_code == 2 and "--per-category applies only to --fit" in r.stderr


def test_a_rule_with_a_calibration_decides_on_calibrated_scores_without_changing_the_record():
    # what rt-generate calls with its own score fields: Thresholds.decide
    rec = {"p_refuse": 0.25, "p_respond": 0.7, "p_cat": {"safety": 0.2, "humanizing": 0.05}}
    before = json.dumps(rec)
    assert Thresholds(threshold=0.5, calibration=CAL).decide(rec) == ("refuse", "safety")
    assert Thresholds(threshold=0.5).decide(rec) == ("respond", None)
    assert Thresholds(calibration=CAL).decide({"p_refuse": 0.4, "p_respond": 0.6}) == ("respond", None)
    assert json.dumps(rec) == before
