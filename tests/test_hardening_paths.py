"""Paths cannot destroy a model (issue 20 item 5), and rt-lora's launcher checks (item 6).

An rt-lora output (``--out``, training or ``--merge-only``) that is, holds or lies inside the base
model, the adapter being merged or the training data is a usage error naming both paths, before
anything is written or loaded. ``--fsdp`` without a launcher, ``--fsdp --4bit``, and data on stdin
under torchrun are refused up front.
"""

from __future__ import annotations

import os
import shutil

import pytest
from model_data import FAST, raw_rows, tag_single, write_jsonl

import rtools.model.training as training

pytest_plugins = ["model_fixtures"]


def snapshot(directory: str) -> dict[str, tuple[int, int]]:
    """Every file under ``directory`` with its size and mtime (what a destroyed model would change)."""
    out = {}
    for root, _, files in os.walk(directory):
        for f in files:
            st = os.stat(os.path.join(root, f))
            out[os.path.relpath(os.path.join(root, f), directory)] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture
def base_copy(tmp_path, tiny_base) -> str:
    """A copy of the tiny base in its own parent directory (tmp_path/models/base)."""
    d = str(tmp_path / "models" / "base")
    shutil.copytree(tiny_base, d)
    return d


@pytest.fixture
def no_loading(monkeypatch):
    """Fails the test if rt-lora gets as far as loading a model."""

    def refuse(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(training, "load_base", refuse)


def _outs(base: str, tmp_path) -> list[tuple[str, str]]:
    link = str(tmp_path / "link-to-base")
    os.symlink(base, link)
    return [
        ("is", base),
        ("is", link),  # through a symlink
        ("is", os.path.relpath(base)),  # a relative path
        ("holds", os.path.dirname(base)),  # the base's parent: replaced whole, base included
        ("lies inside", os.path.join(base, "adapter")),
    ]


def test_out_that_is_holds_or_lies_inside_the_base_is_refused(invoke, tmp_path, base_copy, no_loading):
    data = write_jsonl(tmp_path / "tagged.jsonl", tag_single(raw_rows(1)))
    before = snapshot(os.path.dirname(base_copy))
    for how, out in _outs(base_copy, tmp_path):
        r = invoke("rt-lora", [data, "--base", base_copy, "--out", out, "--overwrite", *FAST])
        assert r.exit_code == 2, (out, r.stderr)
        assert f"--out {out} {how} the base model {base_copy}: " in r.stderr, (out, r.stderr)
        assert r.stdout == ""
    assert snapshot(os.path.dirname(base_copy)) == before
    assert sorted(os.listdir(os.path.dirname(base_copy))) == ["base"]  # no temporary directory left


def test_out_that_holds_the_training_data_is_refused(invoke, tmp_path, base_copy, no_loading):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    data = write_jsonl(data_dir / "tagged.jsonl", tag_single(raw_rows(1)))
    for out in (str(data_dir), data):
        r = invoke("rt-lora", [data, "--base", base_copy, "--out", out, "--overwrite", *FAST])
        assert r.exit_code == 2 and data in r.stderr and out in r.stderr, r.stderr
    assert os.path.isfile(data)


def test_library_train_refuses_an_out_inside_the_base(tmp_path, base_copy, no_loading):
    from rtools.config import ConfigError

    (tmp_path / "data").mkdir()
    data = write_jsonl(tmp_path / "data" / "tagged.jsonl", tag_single(raw_rows(1)))
    cfg = training.TrainConfig(out=os.path.dirname(base_copy), model=base_copy, device="cpu")
    with pytest.raises(ConfigError, match="holds the base model"):
        training.train(tag_single(raw_rows(1)), cfg, name=data, overwrite=True)
    # and the data file, named as the source of the records
    cfg = training.TrainConfig(out=os.path.dirname(data), model=base_copy, device="cpu")
    with pytest.raises(ConfigError, match="holds the training data"):
        training.train(tag_single(raw_rows(1)), cfg, name=data, overwrite=True)


def test_merge_only_out_that_is_holds_or_lies_inside_the_adapter_or_base_is_refused(
    invoke, tmp_path, trained_tied, base_copy, monkeypatch
):
    import rtools.model.merging as merging

    adapter = str(tmp_path / "runs" / "adapter")
    shutil.copytree(trained_tied.out, adapter)
    monkeypatch.setattr(merging, "write_merged", lambda *a, **k: pytest.fail("merged"))
    base = base_copy  # the adapter's base (a copy: tmp_path/models/base), given with --base
    before = {d: snapshot(d) for d in (adapter, base)}
    cases = [
        (adapter, "is the adapter"),
        (os.path.dirname(adapter), "holds the adapter"),
        (os.path.join(adapter, "merged"), "lies inside the adapter"),
        (base, "is its base model"),
        (os.path.dirname(base), "holds its base model"),
        (os.path.join(base, "merged"), "lies inside its base model"),
    ]
    for out, said in cases:
        for extra in ([], ["--overwrite"]):
            r = invoke("rt-lora", ["--merge-only", adapter, "--base", base, "--out", out, "-q", *extra])
            assert r.exit_code == 2, (out, extra, r.stderr)
            assert f"--out {out} {said} " in r.stderr, (out, r.stderr)
    assert {d: snapshot(d) for d in (adapter, base)} == before


# ---------------------------------------------------------------------------
# item 6: launcher checks


def test_fsdp_without_a_launcher_is_a_usage_error(invoke, tmp_path, tiny_base, monkeypatch, no_loading):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "ACCELERATE_USE_FSDP"):
        monkeypatch.delenv(k, raising=False)
    data = write_jsonl(tmp_path / "tagged.jsonl", tag_single(raw_rows(1)))
    for extra in (["--fsdp"], ["--fsdp", "--4bit"]):
        r = invoke("rt-lora", [data, "--base", tiny_base, "--out", str(tmp_path / "o"), *FAST, *extra])
        assert r.exit_code == 2, (extra, r.stderr)
        assert "--fsdp shards the model across the processes of a launcher" in r.stderr, r.stderr
        assert "WORLD_SIZE is not set" in r.stderr and "torchrun" in r.stderr
        assert not os.path.exists(tmp_path / "o")


def test_torchrun_with_training_data_on_stdin_is_refused(
    invoke, tmp_path, tiny_base, monkeypatch, no_loading
):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    data = write_jsonl(tmp_path / "tagged.jsonl", tag_single(raw_rows(1)))
    with open(data) as fh:
        text = fh.read()
    for args in ([], ["-"]):
        r = invoke("rt-lora", [*args, "--base", tiny_base, "--out", str(tmp_path / "o"), *FAST], input=text)
        assert r.exit_code == 2, r.stderr
        assert "standard input cannot be shared" in r.stderr and "2 processes" in r.stderr, r.stderr
        assert "no training records" not in r.stderr
