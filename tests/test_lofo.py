"""examples/broad/lofo.py end to end at --scale tiny on a tiny random model (rt-tag, rt-lora, rt-score,
rt-threshold run as subprocesses), on a pool and a CoCoNot copy the tests write."""

from __future__ import annotations

import os
import subprocess
import sys

import orjson
import pytest
from broad_data import write_coconot, write_pool

pytest_plugins = ["model_fixtures"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOFO = os.path.join(ROOT, "examples", "broad", "lofo.py")


def run_lofo(tmp_path, base, *extra):
    out = tmp_path / "out"
    args = [sys.executable, LOFO, "--broad", write_pool(str(tmp_path / "broad")), "--out", str(out)]
    args += ["--scale", "tiny", "--base-model", base, *extra]
    r = subprocess.run(args, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-3000:]
    return out, orjson.loads((out / "lofo.json").read_bytes()), r


def read(path):
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_tiny_broad_recipe_two_families(tmp_path, tiny_base):
    out, res, r = run_lofo(tmp_path, tiny_base, "--recipes", "broad", "--families", "selfaware,jailbreaks")
    got = res["results"]["broad"]
    assert set(got) == {"selfaware", "jailbreaks"}
    # selfaware has both classes; jailbreaks (refusals only) is paired with cyberseceval's respond rows,
    # and the whole of cyberseceval is held out of its training too
    assert got["selfaware"]["respond_from"] == "selfaware" and got["selfaware"]["held_out"] == ["selfaware"]
    assert got["jailbreaks"]["respond_from"] == "cyberseceval"
    assert got["jailbreaks"]["held_out"] == ["jailbreaks", "cyberseceval"]
    for fam, m in got.items():
        assert 0.0 <= m["auroc"] <= 1.0, fam
        assert 0.0 <= m["refusal_rate_refuse_rows"] <= 1.0 and 0.0 <= m["refusal_rate_respond_rows"] <= 1.0
        assert m["n_refuse"] > 0 and m["n_respond"] > 0 and m["train_rows"] > 0
    assert got["jailbreaks"]["n_refuse"] == 6 and got["jailbreaks"]["n_respond"] == 6  # tiny: 6 per label
    assert res["mean_auroc"]["broad"] == pytest.approx(
        (got["selfaware"]["auroc"] + got["jailbreaks"]["auroc"]) / 2, abs=1e-4
    )
    # the training mixes hold nothing of the held-out families, and no test prompt
    mix = read(out / "mix.broad.jailbreaks.jsonl")
    assert mix and not {r["family"] for r in mix} & {"jailbreaks", "cyberseceval"}
    assert {r["label"] for r in mix} == {"refuse", "respond"}
    scored = read(out / (got["jailbreaks"]["model"] + ".decided.jsonl"))
    assert {r["family"] for r in scored} == {"jailbreaks", "cyberseceval"}
    assert all("p_refuse" in r and r["decision"] in ("refuse", "respond") for r in scored)
    assert not {r["prompt"] for r in mix} & {r["prompt"] for r in scored}
    assert {r["family"] for r in read(out / "mix.broad.selfaware.jsonl")} == {
        "mlcommons",
        "cyberseceval",
        "jailbreaks",
        "harmful_qa",
        "general",
    }
    # one model per distinct mix; every command is logged; the table names the pairing
    assert len(res["models"]) == 2
    log = (out / "commands.sh").read_text()
    assert log.count("\nrt-lora ") == 2 and log.count("\nrt-score ") == 2
    table = (out / "LOFO.md").read_text()
    assert "| jailbreaks [cyberseceval] |" in table and "| selfaware |" in table and "**mean AUROC**" in table


def test_usage_errors(tmp_path):
    base = [sys.executable, LOFO, "--broad", str(tmp_path), "--out", str(tmp_path / "o")]
    r = subprocess.run([*base, "--recipes", "broad+coconot"], capture_output=True, text=True)
    assert r.returncode == 2 and "needs --coconot" in r.stderr
    r = subprocess.run([*base, "--recipes", "broad", "--families", "nope"], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown family 'nope'" in r.stderr


@pytest.mark.slow
def test_tiny_all_recipes_with_coconot(tmp_path, tiny_base):
    coconot = write_coconot(str(tmp_path / "coconot"), n=24)
    out, res, _ = run_lofo(tmp_path, tiny_base, "--coconot", coconot)
    assert res["recipes"] == ["coconot", "broad", "broad+coconot"]
    fams = {"mlcommons", "cyberseceval", "jailbreaks", "harmful_qa", "selfaware", "coconot"}
    for recipe in res["recipes"]:
        assert set(res["results"][recipe]) == fams
    # CoCoNot only, CoCoNot held out: nothing to train on
    assert (
        res["results"]["coconot"]["coconot"]["skipped"]
        and res["results"]["coconot"]["coconot"]["auroc"] is None
    )
    assert res["results"]["broad"]["harmful_qa"]["respond_from"] == "mlcommons"
    # the CoCoNot-only recipe trains one model for every broad family (same mix), reused
    models = {res["results"]["coconot"][f]["model"] for f in fams - {"coconot"}}
    assert len(models) == 1
    for recipe in res["recipes"]:
        assert 0.0 <= res["coconot_test"][recipe]["auroc"] <= 1.0
    mix = read(out / "mix.broad+coconot.selfaware.jsonl")
    assert "coconot" in {r["family"] for r in mix} and "selfaware" not in {r["family"] for r in mix}
    assert "| CoCoNot test (nothing held out) |" in (out / "LOFO.md").read_text()


def test_tiny_self_answers(tmp_path):
    """--answer self: the base model's own answers (rt-generate --plain), made once per prompt and kept;
    every respond row of the mix trains on one (or on the generic text where the model said nothing)."""
    import tiny

    # (tiny_base answers every prompt with newlines only: empty, hence generic; this one says things)
    base = tiny.build_model(str(tmp_path / "base"), tie=False, seed=5)
    out, res, _ = run_lofo(
        tmp_path, base, "--recipes", "broad", "--families", "selfaware", "--answer", "self"
    )
    assert res["answer"] == "self"
    answers = {r["prompt"]: r["generation"] for r in read(out / "self_answers.jsonl")}
    assert answers and all(a.strip() for a in answers.values())
    mix = read(out / "mix.broad.selfaware.jsonl")
    respond = [r for r in mix if r["label"] == "respond"]
    assert respond
    generic = res["models"][res["results"]["broad"]["selfaware"]["model"]]["manifest"]
    for r in respond:
        assert r["response"] == answers.get(r["prompt"], r["response"])
    assert sum(r["prompt"] in answers for r in respond) >= len(respond) // 2, generic
    log = (out / "commands.sh").read_text()
    assert log.count("\nrt-generate ") == 1 and "--plain" in log
    assert not os.path.exists(out / "self_answers.todo.jsonl")
    # a second run reuses the answers: nothing generated again
    run_lofo(tmp_path, base, "--recipes", "broad", "--families", "selfaware", "--answer", "self", "--reuse")
    assert "rt-generate" not in (out / "commands.sh").read_text()


@pytest.mark.slow
def test_tiny_answer_comparison(tmp_path):
    """examples/broad/answers.py: the same recipe with generic, cut and self answers, and what each
    model says after a forced [respond]."""
    import tiny

    base = tiny.build_model(str(tmp_path / "base"), tie=False, seed=5)
    coconot = write_coconot(str(tmp_path / "coconot"), n=24)
    out = tmp_path / "answers"
    args = [sys.executable, os.path.join(ROOT, "examples", "broad", "answers.py")]
    args += ["--broad", write_pool(str(tmp_path / "broad")), "--coconot", coconot, "--out", str(out)]
    args += ["--scale", "tiny", "--families", "selfaware", "--base-model", base, "--probe", "4"]
    r = subprocess.run(args, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-3000:]
    res = orjson.loads((out / "answers.json").read_bytes())
    assert sorted(res["kinds"]) == ["cut", "generic", "self"]
    for kind, k in res["kinds"].items():
        assert 0.0 <= k["held_out"]["selfaware"]["auroc"] <= 1.0, kind
        assert 0.0 <= k["coconot_test"] <= 1.0, kind
        p = k["probe"]
        assert p["n"] == res["probe_n"] > 0 and 0 <= p["empty"] <= p["n"] and 0 <= p["generic"] <= p["n"]
    # the self mix trained on the base model's own answers, the generic one on none
    assert (
        res["kinds"]["self"]["answers"].get("self", 0) > 0
        and "self" not in res["kinds"]["generic"]["answers"]
    )
    assert (out / "self" / "self_answers.jsonl").exists()
    table = (out / "ANSWERS.md").read_text()
    assert "| self |" in table and "| generic |" in table and "held-out selfaware" in table
