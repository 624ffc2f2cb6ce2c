"""bench/recipe.py: recipes are chosen on a dev split and only the chosen one is scored on the test
split (--select-on dev), on a CoCoNot copy the tests write and a tiny random model."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from broad_data import write_coconot

pytest_plugins = ["model_fixtures"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "bench", "recipe.py")


@pytest.fixture(scope="module")
def recipe():
    spec = importlib.util.spec_from_file_location("bench_recipe", RECIPE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def prompts(rows):
    return {r["prompt"] for r, _ in rows}


def test_dev_split_is_disjoint_from_train_and_test(recipe, tmp_path):
    data = write_coconot(str(tmp_path / "c"), n=40)
    _, train, splits = recipe.build(data, 0, "single", None, "dev")
    trained = {r["messages"][0]["content"] for _, r in train}
    assert set(splits) == {"dev", "test"}
    assert not prompts(splits["dev"]) & prompts(splits["test"])
    assert not trained & (prompts(splits["dev"]) | prompts(splits["test"]))
    for rows in splits.values():
        assert {g for _, g in rows} == {0, 1}
    # every contrast row is in dev or test, every eval row in train, dev or test
    held = prompts(splits["dev"]) | prompts(splits["test"])
    assert sum(p.startswith("contrast") for p in held) == 40
    assert sum(p.startswith("eval") for p in held | trained) == 40
    # --select-on test: the recorded sweeps' split, no dev
    _, train_t, old = recipe.build(data, 0, "single", None, "test")
    assert set(old) == {"test"} and len(old["test"]) > len(splits["test"])
    assert {r["messages"][0]["content"] for _, r in train_t} == trained  # the same training rows


def test_choose_takes_the_best_dev_auroc(recipe):
    lines = [
        {"recipe": "a", "mode": "single", "split": "dev", "auroc": 0.7},
        {"recipe": "b", "mode": "single", "split": "dev", "auroc": 0.9},
        {"recipe": "c", "mode": "single", "split": "dev", "auroc": 0.9},
        {"recipe": "d", "mode": "single", "split": "test", "auroc": 0.99},  # never chosen from
        {"recipe": "e", "mode": "category", "split": "dev", "auroc": 0.95},
    ]
    assert recipe.choose(lines, "single")["recipe"] == "b"
    assert recipe.choose(lines, "category")["recipe"] == "e"
    with pytest.raises(SystemExit, match="no dev line"):
        recipe.choose(lines[3:4], "single")


def run(args):
    r = subprocess.run(
        [sys.executable, RECIPE, *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]


def test_tiny_select_on_dev_scores_the_test_split_once(tmp_path, tiny_base):
    data = write_coconot(str(tmp_path / "c"), n=40)
    keep, out = tmp_path / "keep", tmp_path / "out.jsonl"
    common = ["--coconot", data, "--model", tiny_base, "--max-steps", "2", "--batch-size", "4"]
    common += ["--extra", '{"dtype": "fp32", "max_answer_tokens": 8}', "--keep", str(keep)]
    lines = run([*common, "--recipes", "naive,default", "--out", str(out)])
    dev, test = lines[:2], lines[2:]
    assert [r["split"] for r in dev] == ["dev", "dev"] and [r["recipe"] for r in dev] == ["naive", "default"]
    assert all("test_rows" not in r and r["dev_rows"] > 0 for r in dev)
    assert len(test) == 1 and test[0]["split"] == "test" and test[0]["chosen_on"] == "dev"
    best = max(dev, key=lambda r: r["auroc"])  # the first of equals
    assert test[0]["recipe"] == best["recipe"] and test[0]["dev_auroc"] == best["auroc"]
    assert test[0]["candidates"] == ["naive", "default"] and test[0]["test_rows"] > 0
    assert [json.loads(x) for x in out.read_text().splitlines()] == lines
    # parallel runs: the same choice and the same test line from their dev lines and kept adapters
    dev_file = tmp_path / "dev.jsonl"
    dev_file.write_text("".join(json.dumps(r) + "\n" for r in dev))
    again = run([*common, "--choose-from", str(dev_file)])
    drop = ("score_s",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in again] == [
        {k: v for k, v in r.items() if k not in drop} for r in test
    ]
