"""rt-lora under torchrun (2 processes, gloo on CPU) is the same run as one process with the global batch.

Each torchrun run takes ~10-20 s on a small shared machine (two interpreters, two tiny models).
The data has 29 rows: with 2 processes x --batch-size 2 (global batch 4) the last batch of each
epoch holds one example, so one rank runs the weight-0 filler (rtools.model.distributed.rank_batch).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import orjson
import pytest
from conftest import invoke_command
from model_data import SUBPROCESS_ENV, prompts_only, raw_rows, read_jsonl, tag_single, write_jsonl
from safetensors.torch import load_file

pytest_plugins = ["model_fixtures"]

HERE = os.path.dirname(os.path.abspath(__file__))
ROWS = raw_rows(3)[:29]
RECIPE = [
    "--device",
    "cpu",
    "--dtype",
    "fp32",
    "--lr",
    "2e-3",
    "--token-lr",
    "2e-2",
    "--lora-r",
    "4",
    "--lora-alpha",
    "8",
    "--max-answer-tokens",
    "8",
    "--eval-fraction",
    "0",
    "--save-every",
    "4",
]
#: tied: one micro-batch per step over 9 steps (an epoch boundary after 8); untied: --grad-accum 2
#: (DDP's no_sync on the first micro-batch of each step), 6 steps.
SETUPS = {"tied": ["--max-steps", "9"], "untied": ["--max-steps", "6", "--grad-accum", "2"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], dump: str | None = None, stop: int | None = None, nproc: int = 2):
    """rt-lora under ``python -m torch.distributed.run`` (tests/launch_rt_lora.py: the console
    script plus the test hooks); returns the CompletedProcess."""
    env = {
        **SUBPROCESS_ENV,
        "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])),
    }
    env.pop("RT_TEST_DUMP", None)
    env.pop("RT_TEST_STOP", None)
    if dump:
        env["RT_TEST_DUMP"] = dump
    if stop is not None:
        env["RT_TEST_STOP"] = str(stop)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        os.path.join(HERE, "launch_rt_lora.py"),
        *args,
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    if r.returncode != 0 and "address already in use" in r.stderr.lower():
        # the free port was taken between free_port() and torchrun binding it: once more on another
        cmd[cmd.index("--master_port") + 1] = str(free_port())
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    return r


def adapter(out: str) -> dict:
    return load_file(os.path.join(out, "adapter_model.safetensors"))


def max_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_base, tiny_base_untied):
    """setup -> the runs of that setup, each made once (see runs)."""
    cache: dict = {}

    def get(setup: str) -> dict:
        if setup not in cache:
            cache[setup] = make_runs(
                setup, tmp_path_factory, tiny_base if setup == "tied" else tiny_base_untied
            )
        return cache[setup]

    return get


def make_runs(setup: str, tmp_path_factory, base: str) -> dict:
    """One process with --batch-size 4, and torchrun with 2 x --batch-size 2, on the same data."""
    tmp = str(tmp_path_factory.mktemp(f"ddp-{setup}"))
    data = write_jsonl(os.path.join(tmp, "tagged.jsonl"), tag_single(ROWS))
    args = [data, "--model", base, *RECIPE, *SETUPS[setup]]
    single = os.path.join(tmp, "single", "out")
    r1 = invoke_command("rt-lora", [*args, "--out", single, "--batch-size", "4"])
    assert r1.exit_code == 0, r1.stderr
    dump = os.path.join(tmp, "dump")
    os.makedirs(dump)
    ddp = os.path.join(tmp, "ddp", "out")
    r2 = torchrun([*args, "--out", ddp, "--batch-size", "2"], dump=dump)
    assert r2.returncode == 0, r2.stderr[-3000:]
    return {
        "args": args,
        "tmp": tmp,
        "single": single,
        "single_result": r1,
        "ddp": ddp,
        "ddp_result": r2,
        "dump": dump,
    }


@pytest.fixture(params=list(SETUPS))
def runs(request, made) -> dict:
    """Both setups (tied, untied), one after the other."""
    return made(request.param)


@pytest.fixture
def tied_runs(made) -> dict:
    """The tied setup only (the resume tests: each torchrun run costs ~15-25 s)."""
    return made("tied")


def test_ranks_hold_identical_parameters_equal_to_one_process(runs):
    r0 = load_file(os.path.join(runs["dump"], "rank0.safetensors"))
    r1 = load_file(os.path.join(runs["dump"], "rank1.safetensors"))
    assert r0 and set(r0) == set(r1)
    assert max_diff(r0, r1) == 0.0  # the same reduced gradients, the same steps: bit for bit
    assert any("lora_" in k for k in r0) and any("trainable_tokens" in k for k in r0)
    # the written adapter (rank 0) against one process with the global batch
    d = max_diff(adapter(runs["ddp"]), adapter(runs["single"]))
    assert d <= 1e-5, d
    # the weights moved (lora_B starts at 0): not a comparison of two untouched initialisations
    assert all(float(v.abs().max()) > 1e-4 for k, v in r0.items() if "lora_B" in k)


def test_the_log_is_the_global_batch_log(runs):
    """Rank 0's train_log.jsonl has the one-process losses (the ranks' shares summed) and tokens."""

    def log(out):
        with open(os.path.join(out, "train_log.jsonl"), "rb") as fh:
            return [orjson.loads(x) for x in fh]

    a, b = log(runs["single"]), log(runs["ddp"])
    assert [e["step"] for e in a] == [e["step"] for e in b]
    for x, y in zip(a, b, strict=True):
        for k in ("loss", "loss_assistant", "loss_control", "loss_decision", "epoch"):
            assert abs(x[k] - y[k]) <= 1e-4, (k, x, y)


def p_refuse_of(runs: dict, *outs: str) -> list[list[dict]]:
    """rt-score's records of ROWS' prompts on each output directory."""
    prompts = os.path.join(runs["tmp"], "prompts.jsonl")
    if not os.path.exists(prompts):
        write_jsonl(prompts, prompts_only(ROWS))
    scored = []
    for out in outs:
        r = invoke_command("rt-score", [prompts, "--model", out, "--device", "cpu", "-q"])
        assert r.exit_code == 0, r.stderr
        scored.append(read_jsonl(r.stdout))
    return scored


def test_rank0_output_scores_like_one_process(runs):
    a, b = p_refuse_of(runs, runs["single"], runs["ddp"])
    assert len(a) == len(b) == len(ROWS)
    d = max(abs(x["p_refuse"] - y["p_refuse"]) for x, y in zip(a, b, strict=True))
    assert d <= 1e-4, d
    # and the training moved the scores away from the base model's (a real comparison)
    assert max(x["p_refuse"] for x in a) - min(x["p_refuse"] for x in a) > 1e-3


def test_rank0_alone_writes_and_reports(runs):
    """One summary line on stdout, the progress lines of one run on stderr, and the output
    directory with nothing left beside it (no temporary directory, no checkpoint)."""
    r = runs["ddp_result"]
    lines = [x for x in r.stdout.splitlines() if x.strip()]
    assert len(lines) == 1, r.stdout
    summary = orjson.loads(lines[0])
    single = orjson.loads(runs["single_result"].stdout)
    assert summary["steps"] == single["steps"] and summary["examples"] == single["examples"] == len(ROWS)
    steps = summary["steps"]
    progress = [x for x in r.stderr.splitlines() if x.startswith("rt-lora: step ")]
    assert len(progress) == len({x.split(" (")[0] for x in progress}) == steps  # each step once
    parent = os.path.dirname(runs["ddp"])
    assert os.listdir(parent) == ["out"]
    with open(os.path.join(runs["ddp"], "rtools_config.json"), "rb") as fh:
        cfg = orjson.loads(fh.read())["training"]
    assert cfg["world_size"] == 2 and cfg["batch_size"] == 2


def test_resume_under_torchrun_continues_exactly(tied_runs):
    """Interrupted after 5 steps (checkpoint at 4), resumed under torchrun: the uninterrupted run's weights."""
    runs = tied_runs
    out = os.path.join(runs["tmp"], "resumed", "out")
    args = [*runs["args"], "--out", out, "--batch-size", "2"]
    r = torchrun(args, stop=5)
    assert r.returncode != 0
    assert sorted(os.listdir(os.path.dirname(out))) == ["out.checkpoint"]
    r = torchrun([*args, "--resume"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming at step 4/9" in r.stderr
    assert r.stderr.count("resuming at step") == 1  # rank 0 reports
    d = max_diff(adapter(out), adapter(runs["ddp"]))
    assert d <= 1e-6, d
    assert os.listdir(os.path.dirname(out)) == ["out"]


def test_resume_with_another_world_size(tied_runs):
    """A 2-process checkpoint: one process with the same global batch (4) continues it; another
    global batch is refused, naming both."""
    runs = tied_runs
    out = os.path.join(runs["tmp"], "reworld", "out")
    args = [*runs["args"], "--out", out]
    r = torchrun([*args, "--batch-size", "2"], stop=5)
    assert r.returncode != 0 and os.path.isdir(out + ".checkpoint")
    r = invoke_command("rt-lora", [*args, "--batch-size", "2", "--resume", "-q"])
    assert r.exit_code == 1
    assert r.stderr.startswith("rt-lora: --resume with a different setting: batch_size=2 on 1 process(es) ")
    assert (
        "a global batch of 2, the checkpoint has batch_size=2 on 2 process(es), a global batch of 4"
        in r.stderr
    )
    assert not os.path.exists(out)
    r = invoke_command("rt-lora", [*args, "--batch-size", "4", "--resume", "-q"])
    assert r.exit_code == 0, r.stderr
    d = max_diff(adapter(out), adapter(runs["single"]))
    assert d <= 1e-5, d


def test_a_launcher_without_a_rendezvous_is_a_clear_error(tmp_path, tiny_base):
    """WORLD_SIZE without MASTER_ADDR/PORT (not started by a launcher): an error, not a hang."""
    data = write_jsonl(tmp_path / "t.jsonl", tag_single(ROWS[:6]))
    env = {k: v for k, v in SUBPROCESS_ENV.items() if not k.startswith("MASTER_")}
    env.update({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))
    r = subprocess.run(
        [
            sys.executable,
            os.path.join(HERE, "launch_rt_lora.py"),
            data,
            "--out",
            str(tmp_path / "o"),
            "--model",
            tiny_base,
            "-q",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("rt-lora: cannot join the launcher's process group (rank 0 of 2)"), r.stderr
    assert not os.path.exists(tmp_path / "o")


def test_accelerate_deepspeed_is_refused_clearly(invoke, tmp_path, tiny_base, monkeypatch):
    """accelerate launch with a DeepSpeed config sets ACCELERATE_USE_DEEPSPEED: refused, not silently DDP."""
    data = write_jsonl(tmp_path / "t.jsonl", tag_single(ROWS[:6]))
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    r = invoke("rt-lora", [data, "--out", str(tmp_path / "o"), "--model", tiny_base, "-q", "--device", "cpu"])
    assert r.exit_code == 1
    assert "DeepSpeed is not supported" in r.stderr and "accelerate_fsdp.yaml" in r.stderr
    assert not os.path.exists(tmp_path / "o")


@pytest.mark.parametrize(
    "env, words",
    [
        ({"FSDP_OFFLOAD_PARAMS": "true"}, "fsdp_offload_params is not supported"),
        ({"FSDP_SHARDING_STRATEGY": "HYBRID_SHARD"}, "FSDP sharding strategy HYBRID_SHARD is not supported"),
        ({"FSDP_RESHARD_AFTER_FORWARD": "false"}, "FSDP sharding strategy false is not supported"),
    ],
)
def test_accelerate_fsdp_settings_rtools_does_not_apply_are_refused(
    invoke, tmp_path, tiny_base, monkeypatch, env, words
):
    data = write_jsonl(tmp_path / "t.jsonl", tag_single(ROWS[:6]))
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    r = invoke("rt-lora", [data, "--out", str(tmp_path / "o"), "--model", tiny_base, "-q", "--device", "cpu"])
    assert r.exit_code == 1 and words in r.stderr, r.stderr
    assert not os.path.exists(tmp_path / "o")


# ---------------------------------------------------------------------------
# FSDP: the model sharded across the ranks (--fsdp, or accelerate's FSDP configuration)


@pytest.fixture(scope="module")
def fsdp_made(made):
    cache: dict = {}

    def get(setup: str) -> dict:
        if setup not in cache:
            runs = made(setup)
            dump = os.path.join(runs["tmp"], "fsdp-dump")
            os.makedirs(dump)
            out = os.path.join(runs["tmp"], "fsdp", "out")
            r = torchrun([*runs["args"], "--out", out, "--batch-size", "2", "--fsdp"], dump=dump)
            assert r.returncode == 0, r.stderr[-3000:]
            cache[setup] = {**runs, "fsdp": out, "fsdp_result": r, "fsdp_dump": dump}
        return cache[setup]

    return get


@pytest.fixture(params=list(SETUPS))
def fsdp_runs(request, fsdp_made) -> dict:
    return fsdp_made(request.param)


def test_fsdp_equals_one_process_and_ranks_hold_shards(fsdp_runs):
    """Sharded on 2 ranks: the adapter rank 0 writes equals one process with the global batch, while
    each rank held only its shard of every trainable parameter (half the rows)."""
    runs = fsdp_runs
    d = max_diff(adapter(runs["fsdp"]), adapter(runs["single"]))
    assert d <= 1e-5, d
    d = max_diff(adapter(runs["fsdp"]), adapter(runs["ddp"]))
    assert d <= 1e-5, d
    r0 = load_file(os.path.join(runs["fsdp_dump"], "rank0.safetensors"))
    r1 = load_file(os.path.join(runs["fsdp_dump"], "rank1.safetensors"))
    full = load_file(os.path.join(runs["dump"], "rank0.safetensors"))  # DDP: every rank the whole
    assert set(r0) == set(r1) == set(full)
    for k, whole in full.items():
        a, b = r0[k], r1[k]
        assert a.shape[0] + b.shape[0] == whole.shape[0] and a.shape[1:] == whole.shape[1:], k
        assert a.shape[0] < whole.shape[0], k  # sharded, not replicated
        assert float((torch_cat(a, b) - whole).abs().max()) <= 1e-5, k
    # one summary line, one progress line per step, nothing left beside the output
    r = runs["fsdp_result"]
    assert len([x for x in r.stdout.splitlines() if x.strip()]) == 1
    assert os.listdir(os.path.dirname(runs["fsdp"])) == ["out"]
    with open(os.path.join(runs["fsdp"], "rtools_config.json"), "rb") as fh:
        cfg = orjson.loads(fh.read())["training"]
    assert cfg["fsdp"] is True and cfg["world_size"] == 2


def torch_cat(a, b):
    import torch

    return torch.cat([a, b], 0)


def test_fsdp_output_scores_like_one_process(fsdp_runs):
    a, b = p_refuse_of(fsdp_runs, fsdp_runs["single"], fsdp_runs["fsdp"])
    d = max(abs(x["p_refuse"] - y["p_refuse"]) for x, y in zip(a, b, strict=True))
    assert d <= 1e-4, d


def test_fsdp_resume_continues_exactly_and_the_checkpoint_is_whole(fsdp_made):
    """Interrupted after 5 steps under FSDP (checkpoint at 4), resumed under FSDP: the uninterrupted
    run's weights. The checkpoint holds whole tensors: one process with the same global batch
    continues it too, to the one-process run."""
    runs = fsdp_made("tied")
    out = os.path.join(runs["tmp"], "fsdp-resumed", "out")
    args = [*runs["args"], "--out", out, "--batch-size", "2", "--fsdp"]
    r = torchrun(args, stop=5)
    assert r.returncode != 0
    assert sorted(os.listdir(os.path.dirname(out))) == ["out.checkpoint"]
    ckpt = load_file(os.path.join(out + ".checkpoint", "params.safetensors"))
    whole = load_file(os.path.join(runs["dump"], "rank0.safetensors"))
    # the dump names the objective's parameters ("model." + the peft model's names)
    assert {k: v.shape for k, v in ckpt.items()} == {
        k.removeprefix("model."): v.shape for k, v in whole.items()
    }
    import shutil

    copy = os.path.join(runs["tmp"], "fsdp-to-one", "out")
    shutil.copytree(out + ".checkpoint", copy + ".checkpoint")
    r = torchrun([*args, "--resume"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming at step 4/9" in r.stderr
    d = max_diff(adapter(out), adapter(runs["fsdp"]))
    assert d <= 1e-6, d
    r = invoke_command("rt-lora", [*runs["args"], "--out", copy, "--batch-size", "4", "--resume", "-q"])
    assert r.exit_code == 0, r.stderr
    d = max_diff(adapter(copy), adapter(runs["single"]))
    assert d <= 1e-5, d


def test_fsdp_with_a_4bit_base_is_refused_clearly(tmp_path, tiny_base):
    data = write_jsonl(tmp_path / "t.jsonl", tag_single(ROWS[:6]))
    out = str(tmp_path / "o")
    r = torchrun([data, "--out", out, "--model", tiny_base, "-q", "--device", "cpu", "--fsdp", "--4bit"])
    assert r.returncode != 0
    assert "rt-lora: --fsdp with a 4-bit base is not supported" in r.stderr, r.stderr[-2000:]
    assert "--no-4bit" in r.stderr
    assert not os.path.exists(out)


def test_accelerate_fsdp_config_means_fsdp(invoke, tmp_path, tiny_base, monkeypatch):
    """ACCELERATE_USE_FSDP (accelerate's FSDP configuration) sets --fsdp; one process ignores it."""
    data = write_jsonl(tmp_path / "t.jsonl", tag_single(ROWS[:6]))
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_SHARDING_STRATEGY", "FULL_SHARD")
    out = str(tmp_path / "o")
    r = invoke("rt-lora", [data, "--out", out, "--model", tiny_base, "-q", *RECIPE, "--max-steps", "2"])
    assert r.exit_code == 0, r.stderr
    with open(os.path.join(out, "rtools_config.json"), "rb") as fh:
        assert orjson.loads(fh.read())["training"]["fsdp"] is True


def test_fsdp_evaluates_like_one_process(tmp_path, tiny_base):
    """The held-out evaluation runs sharded on every rank (the model called outside the objective's
    forward, with the root unit gathered): rank 0's summary has the one-process numbers."""
    data = write_jsonl(tmp_path / "t.jsonl", tag_single(ROWS))
    args = [data, "--model", tiny_base, *RECIPE, "--max-steps", "3", "--eval-fraction", "0.25", "-q"]
    r1 = invoke_command("rt-lora", [*args, "--out", str(tmp_path / "one"), "--batch-size", "4"])
    assert r1.exit_code == 0, r1.stderr
    r2 = torchrun([*args, "--out", str(tmp_path / "fsdp"), "--batch-size", "2", "--fsdp"])
    assert r2.returncode == 0, r2.stderr[-3000:]
    a, b = orjson.loads(r1.stdout), orjson.loads(r2.stdout)
    assert a["eval_examples"] == b["eval_examples"] > 0
    for k in ("eval_loss", "eval_auroc", "eval_refusal_rate_refuse", "eval_refusal_rate_respond"):
        assert abs(a[k] - b[k]) <= 1e-4, (k, a[k], b[k])


def test_the_shipped_accelerate_fsdp_config_trains_sharded(fsdp_made):
    """examples/scale/accelerate_fsdp.yaml under accelerate launch (its use_cpu set to true: this
    machine has no GPU) gives the --fsdp run: 2 processes, sharded, the same adapter."""
    runs = fsdp_made("tied")
    with open(os.path.join(HERE, "..", "examples", "scale", "accelerate_fsdp.yaml")) as fh:
        text = fh.read()
    assert "use_cpu: false" in text and "distributed_type: FSDP" in text
    cfg = os.path.join(runs["tmp"], "accelerate_fsdp_cpu.yaml")
    with open(cfg, "w") as fh:
        fh.write(text.replace("use_cpu: false", "use_cpu: true"))
    out = os.path.join(runs["tmp"], "accelerate-fsdp", "out")
    env = {
        **SUBPROCESS_ENV,
        "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])),
    }
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", cfg, "--num_processes", "2",
        "--main_process_port", str(free_port()), os.path.join(HERE, "launch_rt_lora.py"),
        *runs["args"], "--out", out, "--batch-size", "2", "-q",
    ]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    with open(os.path.join(out, "rtools_config.json"), "rb") as fh:
        training = orjson.loads(fh.read())["training"]
    assert training["fsdp"] is True and training["world_size"] == 2
    d = max_diff(adapter(out), adapter(runs["fsdp"]))
    assert d <= 1e-6, d


def test_fsdp_loads_the_base_in_bf16_not_4bit_by_default():
    """On CUDA the default is a 4-bit base, which FSDP cannot shard: --fsdp turns that default off."""
    from rtools.model.training import TrainConfig

    assert TrainConfig(out="o").resolved("cuda").load_4bit is True
    assert TrainConfig(out="o", fsdp=True).resolved("cuda").load_4bit is False
    assert TrainConfig(out="o", fsdp=True, load_4bit=True).resolved("cuda").load_4bit is True  # refused later
