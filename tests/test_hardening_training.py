"""Issue 10 (items 2, 3, 6, 7, 10, 15) and issue 9 bug 1: rt-lora's checkpoints, adapters, data,
output checks, the default model's cache lock, progress without a terminal, and RT_MODEL."""

from __future__ import annotations

import os
import pickle
import random
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import orjson
import pytest
import tiny
import torch
from model_data import FAST, SUBPROCESS_ENV, prompts_only, raw_rows, read_jsonl, tag_single, write_jsonl

import rtools.cli as cli
import rtools.model.training as training
from rtools.model import checkpoint
from rtools.model.examples import build_examples
from rtools.model.loading import DEFAULT_MODEL, ModelError, load_for_inference, resolve_model

pytest_plugins = ["model_fixtures"]


def interrupt_at(monkeypatch, step: int) -> None:
    """Ctrl-C just before optimizer step ``step + 1``."""
    original = training.lr_factor

    def lr_factor(s, total, warmup):
        if s == step:
            raise KeyboardInterrupt
        return original(s, total, warmup)

    monkeypatch.setattr(training, "lr_factor", lr_factor)


class _Marker:
    """Unpickling this creates the directory ``path``: the proof that a pickle ran code."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def crafted_pickle(marker: str) -> bytes:
    return pickle.dumps({"params": _Marker(marker)})


def interrupted_run(invoke, monkeypatch, tmp_path, base, rows=None, extra=()):
    """A run interrupted after 3 steps of 6 (checkpoint at step 2); returns (data, out, args)."""
    data = write_jsonl(tmp_path / "tagged.jsonl", tag_single(rows or raw_rows(1)))
    out = str(tmp_path / "out")
    args = [data, "--out", out, "--model", base, *FAST, "--max-steps", "6", "--save-every", "2", *extra]
    with monkeypatch.context() as mp:
        interrupt_at(mp, 3)
        r = invoke("rt-lora", args)
    assert r.exit_code == 130, r.stderr
    assert os.path.isdir(out + ".checkpoint")
    return data, out, args


# ---------------------------------------------------------------------------
# item 2: a checkpoint is data, never code


def test_checkpoint_holds_no_pickle(invoke, tmp_path, tiny_base, monkeypatch):
    _, out, _ = interrupted_run(invoke, monkeypatch, tmp_path, tiny_base)
    files = sorted(os.listdir(out + ".checkpoint"))
    assert files == sorted(
        [
            checkpoint.PARAMS_FILE,
            checkpoint.OPTIMIZER_FILE,
            checkpoint.RNG_FILE,
            checkpoint.STATE_FILE,
            checkpoint.PROGRESS_FILE,
        ]
    )
    for f in files:  # every file is JSON or safetensors (an 8-byte header length, then JSON)
        raw = open(os.path.join(out + ".checkpoint", f), "rb").read()
        if f.endswith(".json"):
            orjson.loads(raw)
        else:
            n = int.from_bytes(raw[:8], "little")
            orjson.loads(raw[8 : 8 + n])


@pytest.mark.parametrize("target", ["state.pt", "params.safetensors", "optimizer.safetensors"])
def test_resume_checkpoint_runs_no_code(invoke, tmp_path, tiny_base, monkeypatch, target):
    """A crafted pickle in the checkpoint (the old state.pt, or in place of a safetensors file) gives a
    clear error, and nothing in it runs."""
    _, out, args = interrupted_run(invoke, monkeypatch, tmp_path, tiny_base)
    marker = str(tmp_path / "pwned")
    with open(os.path.join(out + ".checkpoint", target), "wb") as fh:
        fh.write(crafted_pickle(marker))
    r = invoke("rt-lora", [*args, "--resume"])
    assert r.exit_code == 1, r.stderr
    assert not os.path.exists(marker)
    assert r.stderr.startswith("rt-lora: ") and "Traceback" not in r.stderr
    assert target in r.stderr
    assert ("never loaded" if target.endswith(".pt") else "not a valid safetensors file") in r.stderr
    assert not os.path.exists(out)


def test_checkpoint_rng_states_round_trip():
    """torch, numpy and python random states survive the data-only encoding exactly."""
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    random.gauss(0, 1)  # a cached gaussian in python's state
    np.random.standard_normal()
    tensors, js = checkpoint._rng_state()
    js = orjson.loads(orjson.dumps(js))  # as it travels through state.json
    want = (random.random(), random.gauss(0, 1), np.random.rand(), np.random.standard_normal(), torch.rand(3))
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    checkpoint._set_rng_state(tensors, js)
    got = (random.random(), random.gauss(0, 1), np.random.rand(), np.random.standard_normal(), torch.rand(3))
    assert got[:4] == want[:4]
    assert torch.equal(got[4], want[4])


# ---------------------------------------------------------------------------
# item 3: adapters from adapter_model.safetensors only


def test_adapter_loaded_from_exact_safetensors_only(invoke, tmp_path, trained_tied):
    """A decoy adapter_model*.safetensors next to a pickled adapter_model.bin: refused, nothing unpickled."""
    d = str(tmp_path / "adapter")
    shutil.copytree(trained_tied.out, d)
    os.rename(
        os.path.join(d, "adapter_model.safetensors"), os.path.join(d, "adapter_model-decoy.safetensors")
    )
    marker = str(tmp_path / "pwned")
    with open(os.path.join(d, "adapter_model.bin"), "wb") as fh:
        fh.write(crafted_pickle(marker))
    r = invoke("rt-score", [trained_tied.prompts, "--model", d, "--device", "cpu", "-q"])
    assert r.exit_code == 1
    assert not os.path.exists(marker)
    assert r.stderr.startswith("rt-score: ") and "Traceback" not in r.stderr
    assert "no adapter_model.safetensors" in r.stderr and "adapter_model.bin" in r.stderr
    assert "never loaded" in r.stderr
    with pytest.raises(ModelError, match="no adapter_model.safetensors"):
        load_for_inference(d, device="cpu")


def test_adapter_loader_never_unpickles(tmp_path, trained_tied, monkeypatch):
    """With the exact safetensors present, a .bin beside it is ignored, and torch.load is never called."""
    d = str(tmp_path / "adapter")
    shutil.copytree(trained_tied.out, d)
    with open(os.path.join(d, "adapter_model.bin"), "wb") as fh:
        fh.write(crafted_pickle(str(tmp_path / "pwned")))

    def no_pickles(*a, **k):
        raise AssertionError("torch.load called")

    monkeypatch.setattr(torch, "load", no_pickles)
    lm = load_for_inference(d, device="cpu", dtype="fp32", merge=False)
    ref = load_for_inference(trained_tied.out, device="cpu", dtype="fp32", merge=False)
    ids = torch.tensor([[1, 5, 7, 9, len(lm.tokenizer) - 1, len(lm.tokenizer) - 2]])
    with torch.no_grad():
        assert torch.equal(lm.model(ids).logits, ref.model(ids).logits)
    assert not os.path.exists(tmp_path / "pwned")


def test_adapter_loader_matches_peft(trained_tied):
    """rtools' own safetensors loader gives the same model as peft's PeftModel.from_pretrained."""
    from peft import PeftModel

    from rtools.model.loading import add_control_tokens, load_base, load_tokenizer
    from rtools.tokens import TokenMap

    lm = load_for_inference(trained_tied.out, device="cpu", dtype="fp32", merge=False)
    base = load_base(trained_tied.base, "cpu", torch.float32)
    add_control_tokens(base, load_tokenizer(trained_tied.base), TokenMap.load(trained_tied.out))
    ref = PeftModel.from_pretrained(base, trained_tied.out).eval()
    ids = torch.tensor([[1, 5, 7, 9, len(lm.tokenizer) - 1, len(lm.tokenizer) - 2]])
    with torch.no_grad():
        assert torch.equal(lm.model(ids).logits, ref(ids).logits)


# ---------------------------------------------------------------------------
# item 6: examples over --max-length


def long_rows() -> tuple[list[dict], list[int]]:
    """raw rows with three prompts far longer than 48 tokens; returns (rows, their 1-based lines)."""
    rows = raw_rows(2)
    lines = [2, 7, 13]
    for ln in lines:
        rows[ln - 1]["prompt"] = "How do I bake bread at home? " * 30
    return rows, lines


def test_max_length_skips_are_reported_with_lines(invoke, tmp_path, tiny_base):
    rows, lines = long_rows()
    data = write_jsonl(tmp_path / "tagged.jsonl", tag_single(rows))
    out = str(tmp_path / "out")
    args = [data, "--out", out, "--model", tiny_base, *FAST, "--max-steps", "1", "--max-length", "48"]
    r = invoke("rt-lora", [a for a in args if a != "-q"])
    assert r.exit_code == 0, r.stderr
    assert f"{data}: skipped 3 of 20 examples longer than --max-length 48" in r.stderr
    assert "lines 2, 7, 13" in r.stderr
    summary = orjson.loads(r.stdout)
    assert summary["skipped_too_long"] == 3 and summary["skipped_lines"] == lines
    assert summary["examples"] == 17
    # -q silences stderr, and the summary still says it
    r = invoke("rt-lora", [*args, "--out", str(tmp_path / "q")])
    assert r.exit_code == 0 and r.stderr == ""
    assert orjson.loads(r.stdout)["skipped_lines"] == lines


def test_max_length_all_too_long_is_an_error(invoke, tmp_path, tiny_base):
    rows = raw_rows(1)
    for r in rows:
        r["prompt"] = "How do I bake bread at home? " * 30
    data = write_jsonl(tmp_path / "tagged.jsonl", tag_single(rows))
    r = invoke(
        "rt-lora", [data, "--out", str(tmp_path / "o"), "--model", tiny_base, *FAST, "--max-length", "48"]
    )
    assert r.exit_code == 1
    assert "all 10 are longer than --max-length 48" in r.stderr and "Traceback" not in r.stderr


def test_max_length_never_cuts_the_control_token(tiny_base):
    """A cut example keeps its whole prompt and its control token; only the answer's tail goes."""
    from rtools.model.chat import ChatEncoder
    from rtools.model.loading import add_control_tokens, load_base, load_tokenizer
    from rtools.tokens import TokenMap

    tm = TokenMap.single()
    tok = load_tokenizer(tiny_base)
    add_control_tokens(load_base(tiny_base, "cpu", torch.float32), tok, tm)
    enc = ChatEncoder(tok, tm.tokens())
    rows = tag_single(raw_rows(1))
    records = list(enumerate(rows, 1))
    full, _ = build_examples(records, enc, tm, "t", None, 4096)
    for max_length in range(8, 80, 3):
        exs, skipped = build_examples(records, enc, tm, "t", None, max_length)
        assert sorted([e.line for e in exs] + skipped) == list(range(1, len(rows) + 1))
        by_line = {e.line: e for e in full}
        for e in exs:
            f = by_line[e.line]
            assert len(e.ids) <= max_length
            assert e.ids[: f.labels_from + 1] == f.ids[: f.labels_from + 1]  # prompt + control token
            assert e.ids[e.labels_from] in enc.control_ids and len(e.ids) > e.labels_from + 1
        for ln in skipped:
            assert by_line[ln].labels_from + 2 > max_length


# ---------------------------------------------------------------------------
# item 7: --resume checks the data and the configuration


def test_resume_refuses_different_data(invoke, tmp_path, tiny_base, monkeypatch):
    rows = raw_rows(2)
    data, out, args = interrupted_run(invoke, monkeypatch, tmp_path, tiny_base, rows=rows)
    half = write_jsonl(tmp_path / "half.jsonl", tag_single(rows[: len(rows) // 2]))
    changed = tag_single(rows)
    changed[4]["messages"][-1]["content"] = "[refuse]I will not."  # same count, one answer differs
    other = write_jsonl(tmp_path / "changed.jsonl", changed)
    for f, n in ((half, 10), (other, 20)):
        r = invoke("rt-lora", [f, *args[1:], "--resume"])
        assert r.exit_code == 1, r.stderr
        assert r.stderr.startswith("rt-lora: --resume with different training data: ")
        assert "trained on 20 examples" in r.stderr and f"{f} gives {n}" in r.stderr
        assert "Traceback" not in r.stderr
        assert not os.path.exists(out) and os.path.isdir(out + ".checkpoint")
    r = invoke("rt-lora", [*args, "--resume"])
    assert r.exit_code == 0, r.stderr
    assert orjson.loads(r.stdout)["steps"] == 6


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"step": 100000}, "step 100000 of a run of 6 steps"),
        ({"step": 3}, "step 3 at epoch 0, batch 2 (which is step 2)"),
        ({"epoch": 2}, "step 2 at epoch 2, batch 2 (which is step 6)"),
        ({"batch_in_epoch": 7}, "batch_in_epoch 7 of an epoch of 2 batches"),
        ({"step": -1}, "step must be a whole number >= 0, got -1"),
        ({"step": "2"}, "step must be a whole number >= 0, got '2'"),
        ({"epoch": True}, "epoch must be a whole number >= 0, got True"),
        ({"tokens": -5}, "tokens must be a whole number >= 0, got -5"),
        ({"tokens": None}, "tokens must be a whole number >= 0, got None"),
        ({"log": "x"}, "the log must hold one entry a step (2), it has str"),
        ({"log": [{"step": 1}] * 100000}, "the log must hold one entry a step (2), it has 100000 entries"),
        ({"log": [{"step": 1}, {"step": 2, "loss": "x" * 100}]}, "log entry 2 is not the numbers of step 2"),
        ({"log": [{"step": 2}, {"step": 1}]}, "log entry 1 is not the numbers of step 1"),
    ],
    ids=lambda v: "-".join(map(str, v)) if isinstance(v, dict) and len(str(v)) < 40 else None,
)
def test_resume_refuses_impossible_progress(invoke, tmp_path, tiny_base, monkeypatch, change, said):
    """A progress.json the run could never have written (issue 20: "step": 100000 resumed and reported
    100000 steps) is refused with a clear error before anything is loaded, and the checkpoint kept."""
    _, out, args = interrupted_run(invoke, monkeypatch, tmp_path, tiny_base)
    path = os.path.join(out + ".checkpoint", checkpoint.PROGRESS_FILE)
    progress = orjson.loads(open(path, "rb").read())
    assert (progress["step"], progress["epoch"], progress["batch_in_epoch"]) == (2, 0, 2)  # as the cases say
    with open(path, "wb") as fh:
        fh.write(orjson.dumps({**progress, **change}))
    r = invoke("rt-lora", [*args, "--resume"])
    assert r.exit_code == 1, r.stdout
    assert r.stderr == (
        f"rt-lora: {path}: {said}: not a point this run can reach; the checkpoint is damaged or was "
        "edited (train again without --resume)\n"
    )
    assert not os.path.exists(out) and os.path.isdir(out + ".checkpoint")


def test_resume_accepts_the_progress_it_wrote(invoke, tmp_path, tiny_base, monkeypatch):
    """The check refuses only what the run cannot reach: the checkpoint as written resumes, and so does
    one whose log holds a NaN loss (orjson writes it as null)."""
    _, out, args = interrupted_run(invoke, monkeypatch, tmp_path, tiny_base)
    path = os.path.join(out + ".checkpoint", checkpoint.PROGRESS_FILE)
    progress = orjson.loads(open(path, "rb").read())
    progress["log"][0]["loss"] = None
    with open(path, "wb") as fh:
        fh.write(orjson.dumps(progress))
    r = invoke("rt-lora", [*args, "--resume"])
    assert r.exit_code == 0, r.stderr
    assert orjson.loads(r.stdout)["steps"] == 6


def test_resume_same_base_relative_and_absolute(invoke, tmp_path, tiny_base, monkeypatch):
    monkeypatch.chdir(os.path.dirname(tiny_base))
    rel = os.path.basename(tiny_base)
    data, out, args = interrupted_run(invoke, monkeypatch, tmp_path, rel)
    args[args.index(rel)] = os.path.abspath(tiny_base) + "/"
    r = invoke("rt-lora", [*args, "--resume"])
    assert r.exit_code == 0, r.stderr
    cfg = orjson.loads(open(os.path.join(out, "rtools_config.json"), "rb").read())
    assert cfg["training"]["model"] == os.path.realpath(tiny_base)


def test_resume_refuses_a_different_base(invoke, tmp_path, tiny_base, tiny_base_untied, monkeypatch):
    data, out, args = interrupted_run(invoke, monkeypatch, tmp_path, tiny_base)
    args[args.index(tiny_base)] = tiny_base_untied
    r = invoke("rt-lora", [*args, "--resume"])
    assert r.exit_code == 1
    assert r.stderr.startswith("rt-lora: --resume with a different base model: ")


def test_resume_accepts_a_copy_of_the_base_elsewhere(invoke, tmp_path, tiny_base, monkeypatch):
    """Resume compares the base by its identity, not its path (issue 20 item 1)."""
    data, out, args = interrupted_run(invoke, monkeypatch, tmp_path, tiny_base)
    copy = str(tmp_path / "moved-base")
    shutil.copytree(tiny_base, copy)
    args[args.index(tiny_base)] = copy
    r = invoke("rt-lora", [*args, "--resume"])
    assert r.exit_code == 0, r.stderr
    assert orjson.loads(r.stdout)["steps"] == 6


def test_resume_refuses_different_weights_at_the_same_path(invoke, tmp_path, tiny_base, monkeypatch):
    base = str(tmp_path / "base")
    shutil.copytree(tiny_base, base)
    data, out, args = interrupted_run(invoke, monkeypatch, tmp_path, base)
    shutil.rmtree(base)
    tiny.build_model(base, seed=5)  # the same path and architecture, other weights
    r = invoke("rt-lora", [*args, "--resume"])
    assert r.exit_code == 1
    assert r.stderr.startswith("rt-lora: --resume with a different base model: ")


# ---------------------------------------------------------------------------
# item 10: an unwritable --out fails before the model is loaded; the cache lock


def _unwritable_parents(tmp_path):
    f = tmp_path / "a-file"
    f.write_text("x")
    yield "under-a-file", str(f / "out")
    if sys.platform.startswith("linux"):
        yield "proc", "/proc/rtools-no-such-dir/out"
    if os.geteuid() != 0:  # root writes anywhere: the mode test needs an ordinary user
        ro = tmp_path / "read-only"
        ro.mkdir()
        ro.chmod(0o555)
        yield "read-only", str(ro / "out")


def test_unwritable_out_fails_before_loading(invoke, tmp_path, tiny_base, monkeypatch):
    data = write_jsonl(tmp_path / "tagged.jsonl", tag_single(raw_rows(1)))
    loaded = []
    monkeypatch.setattr(training, "model_directory", lambda *a, **k: loaded.append(a) or tiny_base)
    monkeypatch.setattr(training, "load_base", lambda *a, **k: loaded.append(a))
    for why, out in _unwritable_parents(tmp_path):
        r = invoke("rt-lora", [data, "--out", out, "--model", tiny_base, *FAST])
        assert r.exit_code == 1, (why, r.stderr)
        assert r.stderr.startswith(f"rt-lora: cannot write {out}: "), (why, r.stderr)
        assert "Traceback" not in r.stderr and r.stdout == ""
        assert loaded == [], why


CONVERTER = textwrap.dedent(
    """
    import glob, os, sys, time
    import orjson
    import rtools.model.loading as L

    tmp = sys.argv[1]
    L.embedded_gguf_path = lambda: os.path.join(tmp, "fake.gguf")

    def slow(gguf, target, digest, quiet=True):
        with open(os.path.join(tmp, "conversions"), "a") as fh:
            fh.write(f"{os.getpid()}\\n")
        deadline = time.time() + 30  # wait until the other process has started, then a little more
        while len(glob.glob(os.path.join(tmp, "started.*"))) < 2 and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(1.0)
        os.makedirs(target, exist_ok=True)
        with open(os.path.join(target, "rtools_source.json"), "wb") as fh:
            fh.write(orjson.dumps({"digest": digest}))

    L.dequantize_gguf = slow
    open(os.path.join(tmp, f"started.{os.getpid()}"), "w").close()
    print(L.default_model_dir(quiet=False))
    """
)


def test_cache_lock_second_run_waits_and_reuses(tmp_path):
    """Two first runs at once: one de-quantizes, the other waits for it and reuses the result."""
    (tmp_path / "fake.gguf").write_bytes(b"GGUF" + b"\0" * 100)
    env = {**SUBPROCESS_ENV, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CONVERTER, str(tmp_path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    target = str(tmp_path / "cache" / "rtools" / "models" / "SmolLM2-135M-Instruct")
    assert [out.strip() for out, _ in results] == [target, target]
    assert len(open(tmp_path / "conversions").read().split()) == 1  # de-quantized once
    waited = [err for _, err in results if "waiting for another process" in err]
    assert len(waited) == 1, results


# ---------------------------------------------------------------------------
# item 15: progress without a terminal


def test_progress_lines_without_tty(invoke, tmp_path, tiny_base):
    """rt-lora with stderr not a terminal: a line every 10% of the steps; -q: nothing."""
    data = write_jsonl(tmp_path / "tagged.jsonl", tag_single(raw_rows(1)))
    args = [data, "--model", tiny_base, *[a for a in FAST if a != "-q"], "--max-steps", "20"]
    r = invoke("rt-lora", [*args, "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("rt-lora: step ")]
    assert [ln.split(",")[0] for ln in lines] == [
        f"rt-lora: step {s}/20 ({s * 5}%)" for s in range(2, 21, 2)
    ], r.stderr
    for ln in lines:
        for part in ("epoch ", "loss ", " tokens/s", "ETA "):
            assert part in ln, ln
    assert "\r" not in r.stderr  # no tqdm bar
    r = invoke("rt-lora", [*args, "--out", str(tmp_path / "b"), "-q"])
    assert r.exit_code == 0 and r.stderr == ""


def test_progress_lines_without_tty_subprocess(tmp_path, tiny_base, script):
    """The installed rt-lora under a pipe (as make or cron run it) reports before its final JSON."""
    data = write_jsonl(tmp_path / "tagged.jsonl", tag_single(raw_rows(1)))
    args = [data, "--out", str(tmp_path / "o"), "--model", tiny_base, *[a for a in FAST if a != "-q"]]
    p = subprocess.run(
        [script("rt-lora"), *args, "--max-steps", "10"], env=SUBPROCESS_ENV, capture_output=True, text=True
    )
    assert p.returncode == 0, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("rt-lora: step ")]
    assert len(lines) == 10 and lines[-1].startswith("rt-lora: step 10/10 (100%)")
    assert orjson.loads(p.stdout)["steps"] == 10


def test_progress_lines_for_evaluation_and_writing(invoke, tmp_path, tiny_base):
    """After "ETA 0s" rt-lora says when the held-out evaluation starts and ends (with its numbers) and
    when the writing of --out starts and ends (with the path), as lines without a terminal; -q: nothing."""
    data = write_jsonl(tmp_path / "tagged.jsonl", tag_single(raw_rows(1)))
    out = str(tmp_path / "a")
    args = [
        data,
        "--model",
        tiny_base,
        *[a for a in FAST if a != "-q"],
        "--max-steps",
        "4",
        "--eval-fraction",
        "0.2",
    ]
    r = invoke("rt-lora", [*args, "--out", out])
    assert r.exit_code == 0, r.stderr
    summary = orjson.loads(r.stdout)
    lines = r.stderr.splitlines()
    assert lines[-5].startswith("rt-lora: step 4/4 (100%)"), r.stderr
    assert lines[-4] == "rt-lora: evaluating on 2 held-out examples"
    assert re.fullmatch(r"rt-lora: evaluated in \d+\.\ds: eval_loss .*", lines[-3]), lines[-3]
    for key in ("eval_loss", "eval_auroc", "eval_refusal_rate_refuse", "eval_refusal_rate_respond"):
        assert f"{key} {summary[key]:.4f}" in lines[-3]
    assert lines[-2] == f"rt-lora: writing {out}"
    assert re.fullmatch(rf"rt-lora: wrote {re.escape(out)} in \d+\.\ds", lines[-1]), lines[-1]
    r = invoke("rt-lora", [*args, "--out", str(tmp_path / "b"), "-q"])
    assert r.exit_code == 0 and r.stderr == ""
    # no held-out examples: no evaluation to announce, the writing still is
    r = invoke("rt-lora", [*args, "--eval-fraction", "0", "--out", str(tmp_path / "c")])
    assert r.exit_code == 0, r.stderr
    assert "evaluat" not in r.stderr and r.stderr.splitlines()[-2:][0].startswith("rt-lora: writing ")


def test_progress_note_is_a_line_with_and_without_tty(monkeypatch, capsys):
    """Progress.note: a plain line without a terminal; on one, a line written above the tqdm bar."""
    monkeypatch.setitem(cli._state, "prog", "rtools")
    p = cli.Progress("step", total=10, tty=False)
    p.note("evaluating on 3 held-out examples")
    assert capsys.readouterr().err == "rtools: evaluating on 3 held-out examples\n"
    p = cli.Progress("step", total=10, tty=True)
    p.update(1)
    p.note("writing out")
    p.close()
    p.note("wrote out in 1.0s")  # after the bar is closed, as rt-lora does
    err = capsys.readouterr().err
    assert "rtools: writing out\n" in err and err.endswith("rtools: wrote out in 1.0s\n")


@pytest.mark.parametrize("command", ["rt-score", "rt-generate"])
def test_progress_lines_without_tty_records(invoke, tmp_path, trained_tied, monkeypatch, command):
    """rt-score and rt-generate on a stream report records done and records/s (every 60 s; here 0)."""
    monkeypatch.setattr(cli.progress, "PROGRESS_INTERVAL", 0.0)
    prompts = write_jsonl(tmp_path / "p.jsonl", prompts_only(trained_tied.rows)[:30])
    args = [prompts, "--model", trained_tied.out, "--device", "cpu", "--window", "10"]
    if command == "rt-generate":
        args += ["--max-new-tokens", "2"]
    else:  # the adapter merged into rtools' cache first: a cold cache says so once on stderr
        assert invoke(command, [*args, "-q"]).exit_code == 0
    r = invoke(command, args)
    assert r.exit_code == 0, r.stderr
    unit = "prompt" if command == "rt-score" else "answer"
    lines = r.stderr.splitlines()
    assert [ln.split(",")[0] for ln in lines] == [f"{command}: {n} {unit}s" for n in (10, 20, 30)], r.stderr
    assert all(ln.endswith(f" {unit}s/s") for ln in lines)
    assert len(read_jsonl(r.stdout)) == 30
    r = invoke(command, [*args, "-q"])
    assert r.exit_code == 0 and r.stderr == ""


def test_progress_every_tenth_or_interval(monkeypatch, capsys):
    """Lines at each 10% of the total, and in between whenever PROGRESS_INTERVAL has passed."""
    now = [0.0]
    monkeypatch.setattr(cli.progress.time, "monotonic", lambda: now[0])
    monkeypatch.setitem(cli._state, "prog", "rtools")
    p = cli.Progress("step", total=100, tty=False)
    for _ in range(25):
        now[0] += 1.0
        p.update(1, loss=0.5, tokens=100)
    now[0] += 61.0
    p.update(1)  # step 26: 61 s since the last line
    p.close()
    err = capsys.readouterr().err.splitlines()
    assert [ln.split(",")[0] for ln in err] == [
        "rtools: step 10/100 (10%)",
        "rtools: step 20/100 (20%)",
        "rtools: step 26/100 (26%)",
    ]
    assert err[0] == "rtools: step 10/100 (10%), loss 0.5000, 100 tokens/s, ETA 1m30s"


# ---------------------------------------------------------------------------
# issue 9 bug 1: rt-lora's base model never comes from RT_MODEL


def test_rt_lora_ignores_rt_model_env(invoke, tmp_path, trained_tied, monkeypatch):
    """After `export RT_MODEL=runs/adapter`, rt-lora without --model trains on the default, not on it."""
    monkeypatch.setenv("RT_MODEL", trained_tied.out)
    monkeypatch.delenv("RT_BASE_MODEL", raising=False)
    asked = []

    def model_directory(spec, quiet=True):
        asked.append(spec)
        raise ModelError("stop here")

    monkeypatch.setattr(training, "model_directory", model_directory)
    data = write_jsonl(tmp_path / "tagged.jsonl", tag_single(raw_rows(1)))
    r = invoke("rt-lora", [data, "--out", str(tmp_path / "o"), *FAST])
    assert r.exit_code == 1 and "stop here" in r.stderr
    assert asked == [DEFAULT_MODEL]
    # RT_BASE_MODEL is rt-lora's own variable, read by its --model option
    monkeypatch.setenv("RT_BASE_MODEL", trained_tied.base)
    asked.clear()
    invoke("rt-lora", [data, "--out", str(tmp_path / "o"), *FAST])
    assert asked == [trained_tied.base]


def test_resolve_model_reads_no_environment(monkeypatch):
    monkeypatch.setenv("RT_MODEL", "/somewhere/else")
    assert resolve_model(None) == DEFAULT_MODEL
    assert resolve_model("x") == "x"


def test_rt_lora_refuses_an_adapter_as_base(invoke, tmp_path, trained_tied, monkeypatch):
    loaded = []
    monkeypatch.setattr(training, "load_base", lambda *a, **k: loaded.append(a))
    data = write_jsonl(tmp_path / "tagged.jsonl", tag_single(raw_rows(1)))
    r = invoke("rt-lora", [data, "--out", str(tmp_path / "o"), "--model", trained_tied.out, *FAST])
    assert r.exit_code == 1
    assert f"{trained_tied.out} is an rt-lora adapter, not a base model" in r.stderr
    assert os.path.abspath(trained_tied.base) in r.stderr
    assert loaded == []


def test_progress_bar_on_a_tty(monkeypatch, capsys):
    """On a terminal the same reporter is a tqdm bar (with the loss), and prints no plain lines."""
    monkeypatch.setitem(cli._state, "prog", "rtools")
    p = cli.Progress("step", total=10, tty=True)
    for _ in range(10):
        p.update(1, loss=0.25)
    p.close()
    err = capsys.readouterr().err
    assert "\r" in err and "10/10" in err and "loss=0.250" in err
    assert "rtools: step " not in err


def test_resume_same_dtype_auto_and_explicit(invoke, tmp_path, tiny_base, monkeypatch):
    """Settings are compared resolved: --dtype auto and the dtype it resolves to are the same setting."""
    from rtools.model.loading import torch_dtype

    resolved = {torch.float32: "fp32", torch.bfloat16: "bf16"}[torch_dtype(None, "cpu")]
    data, out, args = interrupted_run(invoke, monkeypatch, tmp_path, tiny_base)
    r = invoke("rt-lora", [*args, "--resume", "--dtype", resolved])
    assert r.exit_code == 0, r.stderr
