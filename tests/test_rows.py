"""Control rows started at a probe of the frozen base (rtools.model.rows, rt-lora --init-rows probe)."""

from __future__ import annotations

import math
import os

import pytest
import torch

from rtools.metrics import auroc
from rtools.model.rows import LEAK, fit_probe_rows

pytest_plugins = ["model_fixtures"]


def synthetic(n: int = 240, dim: int = 16, seed: int = 0):
    """Hidden states with a large common component (as after a final norm) and three classes
    (two refusal tokens and respond) told apart by three directions; log Z_vocab near 12."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    centres = torch.randn(3, dim, generator=g) * 1.5
    common = torch.zeros(dim)
    common[0] = 8.0
    h = common + centres[y] + torch.randn(n, dim, generator=g)
    log_z = 12.0 + 0.5 * torch.randn(n, generator=g)
    return h, log_z, y


def full_softmax(rows, h, log_z):
    logits = h @ rows.T
    return torch.softmax(torch.cat([log_z[:, None], logits], 1), 1)[:, 1:]


def test_probe_rows_separate_and_hold_the_first_position():
    h, log_z, y = synthetic()
    n_controls = 4  # three used (0, 1 and respond = 3); token 2 trains on no row
    classes = torch.where(y == 2, torch.tensor(3), y).tolist()
    fit = fit_probe_rows(h, log_z, classes, [1.0] * len(classes), n_controls, seed=0)
    assert fit.rows.shape == (n_controls, h.shape[1])
    p = full_softmax(fit.rows.double(), h.double(), log_z.double())
    refuse = [int(c != 3) for c in classes]
    assert auroc(refuse, (1 - p[:, 3]).tolist()) > 0.95
    assert fit.cv_auroc is not None and fit.cv_auroc > 0.9
    # the vocabulary keeps at most LEAK of the mass on 99% of the rows (the lift), and the lift
    # moved no decision: the argmax over the control tokens is the probe's
    leak = 1 - p.sum(1)
    assert float(torch.quantile(leak, 0.99)) <= LEAK * 1.05  # rows stored in fp32
    assert fit.lift > 0
    # the token no row trains is never chosen
    assert float(p[:, 2].max()) < math.exp(-10)


def test_without_lift_the_vocabulary_would_win():
    """The lift is needed here: the same rows without it give the control tokens little mass."""
    h, log_z, y = synthetic()
    classes = torch.where(y == 2, torch.tensor(3), y).tolist()
    fit = fit_probe_rows(h, log_z, classes, [1.0] * len(classes), 4, seed=0)
    mu = h.double().mean(0)
    u = mu / mu.norm()
    unlifted = fit.rows.double() - fit.lift * u
    p = full_softmax(unlifted, h.double(), log_z.double())
    assert float(p.sum(1).median()) < 0.5


# ---------------------------------------------------------------------------
# rt-lora --init-rows probe, --keep-weight, --lora-layers, --answer-weight


def _train(tmp_path, tiny_base, *extra):
    import orjson
    from conftest import invoke_command
    from model_data import FAST, prompts_only, raw_rows, run_lora, tag_single, write_jsonl

    rows = raw_rows(2)
    os.makedirs(tmp_path, exist_ok=True)
    data = write_jsonl(tmp_path / "tagged.jsonl", tag_single(rows))
    prompts = write_jsonl(tmp_path / "prompts.jsonl", prompts_only(rows))
    out = str(tmp_path / "adapter")
    flags = [f for f in FAST if f != "-q"]
    result, _ = run_lora([data, "--out", out, "--model", tiny_base, *flags, *extra])
    assert result.exit_code == 0, result.stderr
    scored = invoke_command("rt-score", [prompts, "--model", out, "-q", "--device", "cpu", "--dtype", "fp32"])
    assert scored.exit_code == 0, scored.stderr
    p = [orjson.loads(line)["p_refuse"] for line in scored.stdout.splitlines()]
    y = [int(r["label"] == "refuse") for r in rows]
    return out, result, p, y


def test_init_rows_probe_decides_before_any_lora_step(tmp_path, tiny_base):
    """Rows frozen at the probe (--token-lr 0) and LoRA at a negligible rate: the scores are the
    probe's, and they separate the tiny data the mean rows cannot tell apart untrained."""
    import orjson

    out, result, p, y = _train(
        tmp_path, tiny_base, "--init-rows", "probe", "--token-lr", "0", "--lr", "1e-9", "--max-steps", "1"
    )
    assert auroc(y, p) >= 0.95
    assert "--init-rows probe: the base's hidden state at" in result.stderr and "cv_auroc" in result.stderr
    cfg = orjson.loads(open(f"{out}/rtools_config.json", "rb").read())
    assert cfg["training"]["init_rows"] == "probe" and cfg["summary"]["init_rows"]["lift"] >= 0
    # and the own choice (refusal tokens vs respond) follows the probe: not one class for every row
    assert 0 < sum(q > 0.5 for q in p) < len(p)


def test_keep_weight_needs_probe_rows(tmp_path, tiny_base):
    from conftest import invoke_command

    r = invoke_command("rt-lora", ["-", "--out", str(tmp_path / "o"), "--keep-weight", "1"], input="")
    assert r.exit_code == 2 and "--init-rows probe" in r.stderr.replace(
        "init_rows='probe'", "--init-rows probe"
    )


def test_lora_layers_puts_lora_on_the_top_layers_only(tmp_path, tiny_base):
    from safetensors import safe_open

    out, _, p, y = _train(
        tmp_path, tiny_base, "--init-rows", "probe", "--keep-weight", "1", "--lora-layers", "1"
    )
    with safe_open(f"{out}/adapter_model.safetensors", framework="pt") as fh:
        lora = [k for k in fh.keys() if "lora_" in k]  # noqa: SIM118
    assert lora and all(".layers.1." in k for k in lora)  # the tiny model has layers 0 and 1
    assert auroc(y, p) >= 0.95


def test_features_are_kept_and_reused(tmp_path, tiny_base, monkeypatch):
    """A second run on the same base and prompts reads the base's features from the cache (no
    forward pass), and gets the same rows."""
    import orjson

    from rtools.model import rows

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first, *_ = _train(tmp_path / "a", tiny_base, "--init-rows", "probe", "--max-steps", "1")
    calls = []
    real = rows.decoder_and_head
    monkeypatch.setattr(rows, "decoder_and_head", lambda m: calls.append(1) or real(m))
    second, result, *_ = _train(tmp_path / "b", tiny_base, "--init-rows", "probe", "--max-steps", "1")
    assert " prompts from the feature cache, 0 to run" in result.stderr  # said, not silent
    assert "--init-rows probe: fitting the probe" in result.stderr
    a = orjson.loads(open(f"{first}/rtools_config.json", "rb").read())["summary"]["init_rows"]
    b = orjson.loads(open(f"{second}/rtools_config.json", "rb").read())["summary"]["init_rows"]
    assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}
    # the second run ran no prompt through the base for its features
    assert calls == [] and os.listdir(tmp_path / "cache" / "rtools" / "features")


def test_max_steps_0_writes_the_probe_reader_untrained(tmp_path, tiny_base):
    """--init-rows probe --max-steps 0: no optimizer step (every LoRA B matrix still zero, so the body
    is the base's), the control rows the probe's, and a scorer that separates the tiny data."""
    import orjson
    from safetensors import safe_open

    out, result, p, y = _train(tmp_path, tiny_base, "--init-rows", "probe", "--max-steps", "0")
    assert orjson.loads(result.stdout)["steps"] == 0
    with safe_open(f"{out}/adapter_model.safetensors", framework="pt") as fh:
        b = [fh.get_tensor(k) for k in fh.keys() if "lora_B" in k]  # noqa: SIM118
    assert b and all(not t.any() for t in b)
    assert auroc(y, p) >= 0.95


def test_max_steps_0_needs_probe_rows(tmp_path):
    from conftest import invoke_command

    r = invoke_command("rt-lora", ["-", "--out", str(tmp_path / "o"), "--max-steps", "0"], input="")
    assert r.exit_code == 2 and "init_rows='probe'" in r.stderr.replace(
        "--init-rows probe", "init_rows='probe'"
    )


def test_rt_generate_on_a_probe_reader_answers_as_the_base_and_refuses_in_words(tmp_path, tiny_base):
    """An untrained body (--max-steps 0) never learned to write after a control token: rt-generate
    gives the prompts it answers the base's own answer (rt-generate --plain's, the same seed) and the
    ones it refuses rt-tag's refusal text, and says so once on stderr."""
    import orjson
    from conftest import invoke_command

    from rtools.tagging import GENERIC_REFUSAL_TEXT

    out, _, p, y = _train(tmp_path, tiny_base, "--init-rows", "probe", "--max-steps", "0")
    prompts = str(tmp_path / "prompts.jsonl")
    common = ["--model", out, "--device", "cpu", "--dtype", "fp32", "--max-new-tokens", "6"]
    r = invoke_command("rt-generate", [prompts, *common])
    assert r.exit_code == 0, r.stderr
    assert r.stderr.count("its body is the base's, untrained") == 1
    plain = invoke_command("rt-generate", [prompts, *common, "--plain", "-q"])
    assert plain.exit_code == 0, plain.stderr
    got = [orjson.loads(line) for line in r.stdout.splitlines()]
    base = [orjson.loads(line)["generation"] for line in plain.stdout.splitlines()]
    assert {g["decision"] for g in got} == {"refuse", "respond"}
    for g, b, q in zip(got, base, p, strict=True):
        assert g["p_refuse"] == pytest.approx(q, rel=1e-4, abs=1e-7)  # rt-score's, batched otherwise
        assert g["generation"] == (GENERIC_REFUSAL_TEXT if g["decision"] == "refuse" else b)
