"""Adapters are portable (issue 14 item 3): train on one machine, score on another.

rt-lora records where the base model was and what it is (``base_identity``); rt-score and
rt-generate take ``--base DIR`` (``$RT_BASE_MODEL``) for where it is now, and refuse another base.
The adapter directory's README.md is a model card (issue 14 item 8).
"""

from __future__ import annotations

import hashlib
import os
import shutil

import orjson
import pytest
import tiny
from conftest import invoke_command
from model_data import FAST, prompts_only, raw_rows, run_lora, tag_single, write_jsonl

SCORE = ["-q", "--device", "cpu", "--dtype", "fp32"]


def scores(stdout: str) -> list[float]:
    return [orjson.loads(line)["p_refuse"] for line in stdout.splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny base in one place and an adapter trained on it, plus the scores before any move."""
    root = tmp_path_factory.mktemp("portable")
    base = tiny.build_model(str(root / "machine-a" / "models" / "base"))
    rows = raw_rows(3)
    data = write_jsonl(root / "tagged.jsonl", tag_single(rows))
    prompts = write_jsonl(root / "prompts.jsonl", prompts_only(rows))
    out = str(root / "machine-a" / "runs" / "adapter")
    flags = [f for f in FAST if f not in ("--eval-fraction", "0")]
    result, _ = run_lora([data, "--out", out, "--model", base, *flags, "--eval-fraction", "0.2"])
    assert result.exit_code == 0, result.stderr
    before = invoke_command("rt-score", [prompts, "--model", out, *SCORE])
    assert before.exit_code == 0, before.stderr
    return {
        "root": root,
        "base": base,
        "out": out,
        "data": data,
        "prompts": prompts,
        "rows": rows,
        "scores": scores(before.stdout),
    }


@pytest.fixture(scope="module")
def moved(trained):
    """The same adapter and base, both moved elsewhere (the old places no longer exist)."""
    root = trained["root"]
    new_base = str(root / "machine-b" / "weights" / "the-base")
    new_out = str(root / "machine-b" / "adapters" / "refusal")
    os.makedirs(os.path.dirname(new_base))
    os.makedirs(os.path.dirname(new_out))
    shutil.copytree(trained["base"], new_base)
    shutil.copytree(trained["out"], new_out)
    return {"base": new_base, "out": new_out, "gone": str(root / "gone")}


def test_moved_base_given_by_base_scores_the_same(trained, moved, monkeypatch):
    # the original base is gone: only the moved copy can serve
    hidden = trained["base"] + ".hidden"
    os.rename(trained["base"], hidden)
    try:
        r = invoke_command("rt-score", [trained["prompts"], "--model", moved["out"], *SCORE])
        assert r.exit_code == 1
        assert "--base" in r.stderr and trained["base"] in r.stderr
        r = invoke_command(
            "rt-score", [trained["prompts"], "--model", moved["out"], "--base", moved["base"], *SCORE]
        )
        assert r.exit_code == 0, r.stderr
        got = scores(r.stdout)
        assert len(got) == len(trained["scores"])
        assert max(abs(a - b) for a, b in zip(got, trained["scores"], strict=True)) <= 1e-6
        monkeypatch.setenv("RT_BASE_MODEL", moved["base"])
        r = invoke_command("rt-score", [trained["prompts"], "--model", moved["out"], *SCORE])
        assert r.exit_code == 0, r.stderr
        assert max(abs(a - b) for a, b in zip(scores(r.stdout), trained["scores"], strict=True)) <= 1e-6
    finally:
        os.rename(hidden, trained["base"])


def test_generate_takes_base(trained, moved):
    r = invoke_command(
        "rt-generate",
        [
            trained["prompts"],
            "--model",
            moved["out"],
            "--base",
            moved["base"],
            "--max-new-tokens",
            "2",
            *SCORE,
        ],
    )
    assert r.exit_code == 0, r.stderr
    first = orjson.loads(r.stdout.splitlines()[0])
    assert abs(first["p_refuse"] - trained["scores"][0]) <= 1e-6


def test_wrong_base_is_refused(trained, moved, tmp_path):
    # same architecture, same config.json, same file sizes: only the weights differ
    other = tiny.build_model(str(tmp_path / "other"), seed=7)
    r = invoke_command("rt-score", [trained["prompts"], "--model", moved["out"], "--base", other, *SCORE])
    assert r.exit_code == 1
    assert "is not the base model" in r.stderr and "tensors differ: " in r.stderr
    assert r.stdout == ""
    # a different architecture: named by what differs
    wider = tiny.build_model(str(tmp_path / "wider"), hidden=32)
    r = invoke_command("rt-score", [trained["prompts"], "--model", moved["out"], "--base", wider, *SCORE])
    assert r.exit_code == 1 and "config hidden_size 32, trained on 64" in r.stderr
    # an adapter is no base
    r = invoke_command(
        "rt-score", [trained["prompts"], "--model", moved["out"], "--base", moved["out"], *SCORE]
    )
    assert r.exit_code == 1 and "is an rt-lora adapter, not a base model" in r.stderr


def test_base_for_a_plain_model(trained, monkeypatch):
    plain = ["--model", trained["base"], "--allow-untrained", *SCORE]
    r = invoke_command("rt-score", [trained["prompts"], *plain, "--base", trained["base"]])
    assert r.exit_code == 1 and "is not an rt-lora adapter" in r.stderr
    # RT_BASE_MODEL, exported for rt-lora in the same shell, does not disturb scoring a plain model
    monkeypatch.setenv("RT_BASE_MODEL", "/nonexistent/base")
    r = invoke_command("rt-score", [trained["prompts"], *plain])
    assert r.exit_code == 0, r.stderr


def test_identity_recorded(trained):
    with open(os.path.join(trained["out"], "rtools_config.json"), "rb") as fh:
        cfg = orjson.loads(fh.read())
    ident = cfg["base_identity"]
    with open(os.path.join(trained["base"], "config.json"), "rb") as fh:
        config = orjson.loads(fh.read())
    assert ident["version"] == 2 and ident["model_type"] == "llama" and ident["vocab_size"] > 0
    assert (
        ident["config"]["hidden_size"] == config["hidden_size"]
        and "transformers_version" not in ident["config"]
    )
    from safetensors import safe_open

    with safe_open(os.path.join(trained["base"], "model.safetensors"), framework="pt") as fh:
        assert sorted(ident["tensors"]) == sorted(fh.keys())  # every tensor, by content


def test_model_card(trained):
    with open(os.path.join(trained["out"], "README.md")) as fh:
        card = fh.read()
    with open(trained["data"], "rb") as fh:
        sha = hashlib.sha256(fh.read()).hexdigest()
    with open(os.path.join(trained["out"], "rtools_config.json"), "rb") as fh:
        cfg = orjson.loads(fh.read())
    with open(os.path.join(trained["out"], "train_log.jsonl"), "rb") as fh:
        log = [orjson.loads(line) for line in fh]
    assert f"base_model: {orjson.dumps(trained['base']).decode()}" in card
    assert f"- trained on: `{trained['base']}`" in card
    assert f"- file: `{trained['data']}`" in card and sha in card
    n_refuse = sum(r["label"] == "refuse" for r in trained["rows"])
    n = len(trained["rows"])
    assert f"- records: {n}; by control token: `[refuse]` {n_refuse}, `[respond]` {n - n_refuse}" in card
    s = cfg["summary"]
    assert f"training examples: {s['examples']}, held out for evaluation: {s['eval_examples']}" in card
    assert f"| LoRA rank | {cfg['training']['lora_r']} |" in card
    last = [e for e in log if "loss" in e][-1]
    assert f"final step {last['step']} " in card and f"loss {last['loss']:.6g}" in card
    ev = [e for e in log if "eval_loss" in e][-1]
    assert f"eval_loss {ev['eval_loss']:.6g}" in card
    # peft's template is gone, and no temporary directory name is left in it
    assert "More Information Needed" not in card and ".tmp" not in card


def test_console_script_with_base_is_quiet(trained, moved, script):
    """The real command: scores with --base, and no warning on stderr about the base's new place."""
    import subprocess

    from model_data import SUBPROCESS_ENV

    r = subprocess.run(
        [script("rt-score"), trained["prompts"], "--model", moved["out"], "--base", moved["base"], *SCORE],
        capture_output=True,
        text=True,
        env=SUBPROCESS_ENV,
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert max(abs(a - b) for a, b in zip(scores(r.stdout), trained["scores"], strict=True)) <= 1e-6
