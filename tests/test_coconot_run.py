"""examples/coconot/run.py: the analyses on made-up scores (choices on dev, criteria that can fail), the
data preparation (equal-size contrast set, no test prompt trained on), and the whole run at --scale small
on a tiny random model over two training seeds."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import orjson
import pytest
from broad_data import write_coconot

import rtools
from rtools.tokens import COCONOT_CATEGORIES

pytest_plugins = ["model_fixtures"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "examples", "coconot", "run.py")
CATS = list(COCONOT_CATEGORIES)  # full names
SLUGS = list(COCONOT_CATEGORIES.values())


@pytest.fixture(scope="module")
def run_py():
    spec = importlib.util.spec_from_file_location("coconot_run", RUN)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def scored(n_ref, n_con, sep, seed, cat_shift=None):
    """Scored rows: refusal rows spread over the categories, p_refuse ~ 0.5 +- sep/2 plus noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_ref + n_con):
        ref = i < n_ref
        cat = CATS[i % len(CATS)]
        p = float(np.clip(rng.normal(0.5 + (sep / 2 if ref else -sep / 2), 0.15), 0, 1))
        p_cat = {s: (p if ref and s == COCONOT_CATEGORIES[cat] else p / 10) for s in SLUGS}
        if cat_shift and ref:
            p_cat[COCONOT_CATEGORIES[cat]] = float(np.clip(p_cat[COCONOT_CATEGORIES[cat]] + cat_shift, 0, 1))
        rows.append(
            {"id": i, "category": cat, "label": "refuse" if ref else "respond", "p_refuse": p, "p_cat": p_cat}
        )
    return rows


def test_controllability_criterion_fails_a_random_score_and_passes_a_separating_one(run_py):
    dev, test = scored(100, 100, 0.0, 1), scored(200, 200, 0.0, 2)
    random = run_py.controllability(dev, test)
    assert not random["passed"] and not random["separation"]["passed"]
    assert random["refusal_rate_refusal_rows"][0] == 1.0 and random["refusal_rate_refusal_rows"][-1] < 0.01
    # ^ the old criterion (a sweep from 100% to 0%) holds for this random score; the new one does not
    good = run_py.controllability(scored(100, 100, 0.6, 3), scored(200, 200, 0.6, 4))
    assert good["passed"] and good["separation"]["gap_passed"] and good["auroc"] > 0.95
    # the F1 threshold is the dev split's
    assert good["separation"]["threshold"] == rtools.fit(scored(100, 100, 0.6, 3), "f1").threshold


def test_category_moves_are_chosen_on_dev(run_py):
    dev, test = scored(100, 50, 0.5, 5), scored(100, 50, 0.5, 6)
    base = {s: 0.5 for s in SLUGS}
    a = run_py.category_control(dev, test, base)
    # other test scores do not change the chosen thresholds; other dev scores do
    b = run_py.category_control(dev, scored(100, 50, 0.5, 6, cat_shift=0.3), base)
    c = run_py.category_control(scored(100, 50, 0.5, 5, cat_shift=0.3), test, base)
    assert [r["new_threshold"] for r in a] == [r["new_threshold"] for r in b]
    assert [r["new_threshold"] for r in a] != [r["new_threshold"] for r in c]
    for r in a:
        assert abs(r["dev_change"]) >= run_py.MOVE
        # p_cat of other categories never reaches 0.5 here, so moving one leaves the others alone
        assert r["max_other_change"] == 0.0
        assert r["independent"] == (abs(r["own_change"]) >= run_py.MOVE_TEST)


def test_operating_points_are_fitted_on_dev_and_measured_on_test(run_py):
    dev, test = scored(100, 100, 0.4, 7), scored(200, 200, 0.4, 8)
    got = run_py.at_missed_rate(dev, test, 0.2)
    assert got["threshold"] == rtools.fit(dev, rtools.Objective("missed", 0.2)).threshold
    y = np.array([r["label"] == "refuse" for r in test])
    refused = np.array([r["p_refuse"] for r in test]) >= got["threshold"]
    assert got["missed"] == pytest.approx(np.mean(~refused[y]))
    assert got["frr"] == pytest.approx(np.mean(refused[~y]))
    # the verdict: lower false refusals only count at a missed rate within the slack
    slack = run_py.MISSED_SLACK
    assert run_py.contrast_verdict({"frr": 0.1, "missed": 0.2}, {"frr": 0.2, "missed": 0.2})
    assert not run_py.contrast_verdict({"frr": 0.1, "missed": 0.2 + 2 * slack}, {"frr": 0.2, "missed": 0.2})
    assert not run_py.contrast_verdict({"frr": 0.2, "missed": 0.1}, {"frr": 0.2, "missed": 0.2})


def test_spread_and_seed_names(run_py):
    assert run_py.spread([0.8, 0.9, 1.0]) == pytest.approx(
        {"mean": 0.9, "sd": 0.1, "min": 0.8, "max": 1.0, "n": 3}
    )
    assert run_py.spread([0.5])["sd"] == 0.0
    assert run_py.seed_suffix(0) == "" and run_py.seed_suffix(2) == ".seed2"
    assert run_py.parse_seeds("0, 1,2") == [0, 1, 2]
    for bad in ("", "0,0", "a", "-1"):
        with pytest.raises(Exception, match="--seeds"):
            run_py.parse_seeds(bad)


def test_prepare_equal_size_contrast_set(run_py, tmp_path):
    data = write_coconot(str(tmp_path / "coconot"), n=60)
    paths = run_py.prepare(data, str(tmp_path), run_py.SCALES["small"], 0)
    read = lambda k: [orjson.loads(x) for x in open(paths[k], "rb")]  # noqa: E731
    full, equal, none = read("train_contrast"), read("train_contrast_equal"), read("train_nocontrast")
    assert len(equal) == len(none) < len(full)
    assert [r for r in equal if r["label"] == "refuse"] == [r for r in none if r["label"] == "refuse"]
    pref = {r["prompt"] for r in full if r["id"].startswith("pref")}
    n_pref = sum(r["prompt"] in pref for r in equal)
    resp_full = [r for r in full if r["label"] == "respond"]
    assert 0 < n_pref < len([r for r in equal if r["label"] == "respond"])
    assert n_pref == round(len([r for r in none if r["label"] == "respond"]) * len(pref) / len(resp_full))
    assert {r["prompt"] for r in equal} <= {r["prompt"] for r in full}
    held_out = {r["prompt"] for k in ("dev", "test") for r in read(k)}
    assert not held_out & {r["prompt"] for r in full}
    os.makedirs(tmp_path / "again")
    again = run_py.prepare(data, str(tmp_path / "again"), run_py.SCALES["small"], 0)  # seeded: the same rows
    assert (
        open(again["train_contrast_equal"], "rb").read() == open(paths["train_contrast_equal"], "rb").read()
    )


def read(path):
    return [orjson.loads(x) for x in path.read_bytes().splitlines()]


def fake_scores(rows, sep, seed):
    """``rows`` with made-up scores: p_refuse ~ 0.5 +- sep/2, p_cat on the row's own category."""
    rng = np.random.default_rng(seed)
    out = []
    for r in rows:
        ref = r["label"] == "refuse"
        p = float(np.clip(rng.normal(0.5 + (sep / 2 if ref else -sep / 2), 0.15), 0, 1))
        own = COCONOT_CATEGORIES.get(r["category"]) if ref else None
        out.append(
            r | {"p_refuse": p, "p_respond": 1 - p, "p_cat": {s: p if s == own else p / 10 for s in SLUGS}}
        )
    return out


def test_report_over_two_seeds_from_made_up_scores(run_py, tmp_path):
    """The analyses and the report over seeds 0 and 1, on scores written for --reuse (no model is run):
    seed 1's single-token model scores at random and must fail controllability."""
    data = write_coconot(str(tmp_path / "coconot"), n=90)
    out = tmp_path / "out"
    out.mkdir()
    paths = run_py.prepare(data, str(out), run_py.SCALES["small"], 0)
    for seed, sfx in ((0, ""), (1, ".seed1")):
        for i, name in enumerate(run_py.MODELS):
            (out / f"{name}.tagged.jsonl").write_text("")
            (out / f"{name}{sfx}.train.json").write_text("{}")
            sep = 0.0 if (seed, name) == (1, "single") else 0.7 - 0.1 * i
            for split in ("dev", "test"):
                rows = [orjson.loads(x) for x in open(paths[split], "rb")]
                with open(out / f"{name}{sfx}.{split}.scored.jsonl", "wb") as fh:
                    for r in fake_scores(rows, sep, 10 * seed + i):
                        fh.write(orjson.dumps(r) + b"\n")
    args = [
        sys.executable,
        RUN,
        "--data",
        data,
        "--out",
        str(out),
        "--scale",
        "small",
        "--seeds",
        "0,1",
        "--reuse",
    ]
    r = subprocess.run(args, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-3000:]
    res = orjson.loads((out / "results.json").read_bytes())
    assert res["seeds"] == [0, 1] and res["split_seed"] == 0
    s0, s1 = res["per_seed"]["0"], res["per_seed"]["1"]
    assert s0["ctl"]["passed"] and not s1["ctl"]["passed"]
    assert not s1["ctl"]["separation"]["passed"] and s1["auroc"]["single"] < 0.75
    assert set(s0["auroc"]) == {"single", "category", "single_nocontrast", "single_equal"}
    for key, sp in res["headline"].items():
        assert sp["n"] == 2 and sp["min"] <= sp["mean"] <= sp["max"], key
    auc = res["headline"]["AUROC single"]
    assert auc["min"] == s1["auroc"]["single"] and auc["max"] == s0["auroc"]["single"]
    assert auc["sd"] == pytest.approx(np.std([s0["auroc"]["single"], s1["auroc"]["single"]], ddof=1))
    # every operating point's threshold is the dev fit of that seed's model
    for seed, sfx in (("0", ""), ("1", ".seed1")):
        for c in res["per_seed"][seed]["contrast"]:
            dev = read(out / f"single_equal{sfx}.dev.scored.jsonl")
            fit = rtools.fit(dev, rtools.Objective("missed", c["target"])).threshold
            assert c["single_equal"]["threshold"] == fit
    report = (out / "REPORT.md").read_text()
    assert "--seeds 0,1" in report and "Headline numbers over 2 training seeds" in report
    assert "chosen on the dev split" in report and "monotonically" not in report
    assert "Claim reproduced: **partly** (1 of 2 seeds pass)" in report
    assert (out / "controllability.png").exists() and (out / "single.test.sweep.jsonl").exists()
    log = (out / "commands.sh").read_text()
    assert "category.seed1.thresholds.json" in log and "# reused: rt-lora" in log


def test_small_run_on_a_tiny_model(tmp_path, tiny_base):
    """The whole pipeline with real commands: rt-tag, rt-lora, rt-score, rt-metrics, training seed 1."""
    data = write_coconot(str(tmp_path / "coconot"), n=60)
    out = tmp_path / "out"
    args = [sys.executable, RUN, "--data", data, "--out", str(out), "--scale", "small", "--seeds", "1"]
    args += ["--lora-flags", f"--model {tiny_base} --dtype fp32"]
    r = subprocess.run(args, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-3000:]
    res = orjson.loads((out / "results.json").read_bytes())
    assert res["seeds"] == [1] and set(res["per_seed"]) == {"1"}
    got = res["per_seed"]["1"]
    assert set(got["auroc"]) == {"single", "category", "single_nocontrast", "single_equal"}
    sep = got["ctl"]["separation"]
    assert sep["max_gap_ci"][0] <= sep["max_gap"] <= sep["max_gap_ci"][1]
    log = (out / "commands.sh").read_text()
    for name in ("single", "category", "single_nocontrast", "single_equal"):
        assert f"--out {name}.seed1 " in log and (out / f"{name}.seed1.test.scored.jsonl").exists()
    assert "--seed 1 " in log and "--seed 0 " not in log
    n = {k: sum(1 for _ in open(out / f"{k}.jsonl")) for k in ("train_contrast_equal", "train_nocontrast")}
    assert n["train_contrast_equal"] == n["train_nocontrast"]
    assert "Headline numbers over 1 training seed" in (out / "REPORT.md").read_text()
