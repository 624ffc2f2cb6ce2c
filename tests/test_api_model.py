"""The model half of the library API: ScoreConfig/Scorer, TrainConfig/train, DecisionLoss.

The training objective moved into one ``nn.Module.forward`` (objective.DecisionLoss); the
reference it is compared with is a copy of the function it replaced (``old_batch_loss`` below,
as it was before the move), so that the test does not depend on recorded numbers.
"""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch
from model_data import FAST, jsonl, prompts_only, raw_rows, read_jsonl, tag_single
from safetensors.torch import load_file

import rtools.model.training as training
from rtools.config import ConfigError
from rtools.model.adapter import make_peft_model
from rtools.model.card import LOG_FILE
from rtools.model.chat import ChatEncoder
from rtools.model.examples import build_examples
from rtools.model.loading import add_control_tokens, load_base, load_tokenizer
from rtools.model.objective import batch_loss
from rtools.model.scoring import ScoreConfig, Scorer
from rtools.model.training import TrainConfig, train
from rtools.records import RecordError, dumps
from rtools.tokens import TokenMap

pytest_plugins = ["model_fixtures"]


# ---------------------------------------------------------------------------
# The loss before it moved into DecisionLoss.forward (rtools/model/training.py at 5176728).


def old_batch_loss(model, examples, batch, control_ids, cfg, pad_id, device):
    import torch.nn.functional as F

    from rtools.model.batching import decoder_and_head, right_pad
    from rtools.model.objective import fast_embed, fast_head
    from rtools.model.precision import is_mixed

    exs = [examples[i] for i in batch]
    B = len(exs)
    ids, mask = right_pad([e.ids for e in exs], pad_id)
    K = max(len(e.ids) - e.labels_from for e in exs)
    pos = torch.zeros((B, K), dtype=torch.long)
    tgt = torch.zeros((B, K), dtype=torch.long)
    span = torch.zeros((B, K), dtype=torch.bool)
    for k, e in enumerate(exs):
        n = len(e.ids) - e.labels_from
        pos[k, :n] = torch.arange(e.labels_from - 1, len(e.ids) - 1)
        tgt[k, :n] = torch.tensor(e.ids[e.labels_from :])
        span[k, :n] = True
    ids, mask, pos, tgt, span = (
        ids.to(device),
        mask.to(device),
        pos.to(device),
        tgt.to(device),
        span.to(device),
    )
    use_amp = device.startswith("cuda")
    decoder, head = decoder_and_head(model)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
        h = decoder(
            inputs_embeds=fast_embed(model, ids), attention_mask=mask, use_cache=False
        ).last_hidden_state
        h = torch.gather(h, 1, pos.unsqueeze(-1).expand(-1, -1, h.shape[-1]))
        logits = fast_head(head, h, bf16=is_mixed(model))
    logits = logits.float()
    V = logits.shape[-1]
    ce = F.cross_entropy(logits.reshape(-1, V), tgt.reshape(-1), reduction="none").view(B, K)
    ce = torch.where(span, ce, torch.zeros_like(ce))
    ctrl_at = torch.zeros(B, dtype=torch.long, device=ce.device)
    rows = torch.arange(B, device=ce.device)
    assistant = ce.sum(1) / span.sum(1)
    ctrl = ce[rows, ctrl_at]
    sel = logits[rows, ctrl_at].index_select(-1, control_ids)
    dec = F.cross_entropy(sel, torch.tensor([e.control for e in exs], device=sel.device), reduction="none")
    w = torch.tensor([e.weight for e in exs], device=ce.device)
    per_ex = assistant + cfg.control_weight * ctrl + cfg.decision_weight * dec
    loss = (w * per_ex).sum() / w.sum()
    parts = {
        "assistant": float(assistant.detach().mean()),
        "control": float(ctrl.detach().mean()),
        "decision": float(dec.detach().mean()),
    }
    return loss, parts, int(mask.sum())


def peft_setup(base: str):
    tm = TokenMap.single()
    tok = load_tokenizer(base)
    model = load_base(base, "cpu", torch.float32)
    ids = add_control_tokens(model, tok, tm)
    cfg = TrainConfig(out="-", lora_r=4, lora_alpha=8, device="cpu", control_weight=1.5).resolved("cpu")
    torch.manual_seed(0)
    model = make_peft_model(model, ids, cfg)
    with torch.no_grad():  # LoRA B starts at zero: move it so that every part has a gradient
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    records = list(enumerate(tag_single(raw_rows(2)), 1))
    examples, _ = build_examples(records, ChatEncoder(tok, tm.tokens()), tm, "t", 8, 1024)
    for k, e in enumerate(examples):
        e.weight = 1.0 + k % 3
    return model, examples, ids, cfg, tok.pad_token_id or 0


@pytest.mark.parametrize("which", ["tiny_base", "tiny_base_untied"])
def test_decision_loss_equals_the_old_batch_loss(request, which):
    """Loss, parts, token count and every gradient: exactly the pre-refactor function's."""
    from rtools.model.objective import DecisionLoss

    model, examples, ids, cfg, pad = peft_setup(request.getfixturevalue(which))
    ctrl = torch.tensor(ids)
    objective = DecisionLoss(model, ids, cfg.control_weight, cfg.decision_weight)
    params = [p for p in model.parameters() if p.requires_grad]
    for batch in ([0, 1, 2, 3], [4, 7, 9], [5]):
        want, want_parts, want_n = old_batch_loss(model, examples, batch, ctrl, cfg, pad, "cpu")
        want_grads = torch.autograd.grad(want, params)
        got, got_parts, got_n = batch_loss(model, examples, batch, ctrl, cfg, pad, "cpu", objective)
        got_grads = torch.autograd.grad(got, params)
        assert torch.equal(got, want)
        assert got_parts == want_parts and got_n == want_n
        assert all(torch.equal(a, b) for a, b in zip(got_grads, want_grads, strict=True))
    # the model is called only inside the objective's forward: a hook on it sees the call
    calls = []
    handle = objective.register_forward_hook(lambda *a: calls.append(1))
    batch_loss(model, examples, [0, 1], ctrl, cfg, pad, "cpu", objective)
    handle.remove()
    assert calls == [1]


def train_log(out: str) -> list[dict]:
    with open(os.path.join(out, LOG_FILE)) as fh:
        return read_jsonl(fh.read())


def test_training_equals_the_old_loss_step_for_step(tmp_path, tiny_base_untied, monkeypatch):
    """train() with the objective module against train() with the old function swapped in: the same
    losses at every step and the same adapter tensors (grad accumulation and warm-up included)."""
    records = list(enumerate(tag_single(raw_rows(3)), 1))
    cfg = TrainConfig(
        out=str(tmp_path / "new"),
        model=tiny_base_untied,
        max_steps=5,
        batch_size=4,
        grad_accum=2,
        warmup=0.5,
        lr=2e-3,
        token_lr=2e-2,
        lora_r=4,
        lora_alpha=8,
        device="cpu",
        dtype="fp32",
    )
    train(records, cfg)
    with monkeypatch.context() as mp:
        mp.setattr(  # where train()'s steps and its evaluation take the loss from
            "rtools.model.objective.batch_loss",
            lambda m, ex, b, c, cf, p, d, objective=None, totals=None: old_batch_loss(m, ex, b, c, cf, p, d),
        )
        train(records, dataclasses.replace(cfg, out=str(tmp_path / "old")))
    new, old = (load_file(str(tmp_path / d / "adapter_model.safetensors")) for d in ("new", "old"))
    assert new.keys() == old.keys() and new
    for k in new:
        assert torch.equal(new[k], old[k]), k
    strip = lambda log: [{k: v for k, v in e.items() if k != "tokens_per_s"} for e in log]  # noqa: E731
    assert strip(train_log(str(tmp_path / "new"))) == strip(train_log(str(tmp_path / "old")))


# ---------------------------------------------------------------------------
# Configuration: validated when made, contradictions refused before a model is loaded.


@pytest.mark.parametrize(
    "bad",
    [
        {"batch_size": 0},
        {"lr": 0.0},
        {"eval_fraction": 0.9},
        {"dtype": "int8"},
        {"max_steps": 0},
    ],
)
def test_train_config_refuses_bad_values(bad):
    with pytest.raises(ConfigError) as e:
        TrainConfig(out="x", **bad)
    assert isinstance(e.value, ValueError) and next(iter(bad)) in str(e.value)


def test_train_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig(out="x").lr = 1.0


def test_merge_into_a_quantized_base_refused_before_the_model_loads(invoke, tmp_path, tiny_base, monkeypatch):
    """A merged model is written in full precision: a base stored quantized is refused before training
    (rt-lora --merge used to train, then fail while writing, throwing the adapter away). A base that
    is quantized only when loaded (--4bit, QLoRA) merges: see tests/test_merge.py."""
    import shutil

    def no_load(*a, **kw):
        raise AssertionError("the model was loaded")

    quantized = str(tmp_path / "quantized-base")
    shutil.copytree(tiny_base, quantized)
    with open(os.path.join(quantized, "config.json")) as fh:
        cfg = json.load(fh)
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    with open(os.path.join(quantized, "config.json"), "w") as fh:
        json.dump(cfg, fh)
    monkeypatch.setattr(training, "load_base", no_load)
    data = str(tmp_path / "t.jsonl")
    with open(data, "w") as fh:
        fh.write(jsonl(tag_single(raw_rows(1))))
    r = invoke("rt-lora", [data, "--out", str(tmp_path / "o"), "--model", quantized, *FAST, "--merge"])
    assert r.exit_code == 1, r.stderr
    assert "quantized" in r.stderr and "bitsandbytes" in r.stderr and "--base" in r.stderr, r.stderr
    assert not os.path.exists(tmp_path / "o")


@pytest.mark.parametrize(
    "bad", [{"window": 0}, {"temperature": 0.0}, {"truncate": "middle"}, {"batch_size": 0}, {"dtype": "int8"}]
)
def test_score_config_refuses_bad_values(bad):
    with pytest.raises(ConfigError):
        ScoreConfig(**bad)


# ---------------------------------------------------------------------------
# Scorer: the records rt-score writes, as an iterator; errors deferred as rt-score defers them.


def test_scorer_gives_rt_scores_records(invoke, trained_tied):
    rows = prompts_only(raw_rows(2))
    r = invoke(
        "rt-score",
        ["--model", trained_tied.out, "--device", "cpu", "--dtype", "fp32", "-q"],
        input=jsonl(rows),
    )
    assert r.exit_code == 0, r.stderr
    scorer = Scorer.load(trained_tied.out, ScoreConfig(device="cpu", dtype="fp32"))
    got = list(scorer.score([dict(x) for x in rows]))
    assert b"".join(map(dumps, got)).decode() == r.stdout  # byte for byte
    assert [x["p_refuse"] for x in got] == [x["p_refuse"] for x in read_jsonl(r.stdout)]


def test_scorer_defers_a_bad_record_until_the_ones_before_it(trained_tied):
    rows = prompts_only(raw_rows(1))
    rows.insert(4, {"id": "bad", "prompt": 7})
    scorer = Scorer.load(trained_tied.out, ScoreConfig(device="cpu", dtype="fp32", window=2))
    seen = []
    with pytest.raises(RecordError) as e:
        for rec in scorer.score(rows, "mem.jsonl"):
            seen.append(rec)
    assert len(seen) == 4 and all("p_refuse" in x for x in seen)
    assert e.value.format().startswith("mem.jsonl:5:")


def control_tokenizer(base: str):
    tok = load_tokenizer(base)
    tok.add_tokens(TokenMap.single().tokens(), special_tokens=True)
    return tok


def test_build_examples_names_the_line_of_a_template_error(tiny_base):
    """A conversation the chat template refuses is a file:line error (encode_prompt gets name, line)."""
    tok = control_tokenizer(tiny_base)
    tok.chat_template = (
        "{{ raise_exception('no system turns here') if messages[0]['role'] == 'system' else '' }}x"
    )
    enc = ChatEncoder(tok, TokenMap.single().tokens())
    rec = {
        "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": "[refuse] no"},
        ]
    }
    with pytest.raises(RecordError) as e:
        build_examples([(12, rec)], enc, TokenMap.single(), "tagged.jsonl", 8, 1024)
    assert e.value.format().startswith("tagged.jsonl:12:")


def test_build_examples_counts_the_answer_as_encode_answer_does(tiny_base):
    """A special token's text in an answer is ordinary text: counted as such for max_answer_tokens,
    so an answer cut there gets no end-of-turn (encode_text counted '<|im_end|>' as one token)."""
    tok = control_tokenizer(tiny_base)
    tm = TokenMap.single()
    enc = ChatEncoder(tok, tm.tokens())
    answer = "<|im_end|>"
    n = len(enc.encode_content(answer, start=False))
    assert n > 1 and len(enc.encode_text(answer)) == 1
    rec = {
        "messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "[refuse]" + answer}]
    }
    (ex,), _ = build_examples([(1, rec)], enc, tm, "t", n - 1, 1024)
    assert ex.ids[ex.labels_from + 1 :] == enc.encode_content(answer, start=False)[: n - 1]


# ---------------------------------------------------------------------------
# The whole pipeline through the public API alone, against the commands; the README's example.


def test_pipeline_through_the_api_equals_the_commands(invoke, tmp_path, tiny_base):
    """tag -> train -> score -> threshold -> metrics: the same bytes (and adapter) as the commands."""
    import orjson

    import rtools

    rows = raw_rows(2)
    test_rows = prompts_only(raw_rows(1)) + [{**r, "id": f"t{r['id']}"} for r in raw_rows(1)]
    train_file = write(tmp_path / "train.jsonl", rows)
    test_file = write(tmp_path / "test.jsonl", test_rows)
    recipe = dict(epochs=5, batch_size=8, lr=2e-3, token_lr=2e-2, lora_r=4, lora_alpha=8)
    recipe.update(max_answer_tokens=8, eval_fraction=0.0, device="cpu", dtype="fp32")

    # the API
    tagged = list(rtools.tag(rtools.read_records(train_file)))
    api_out = str(tmp_path / "api")
    rtools.train(tagged, rtools.TrainConfig(out=api_out, model=tiny_base, **recipe))
    scorer = rtools.Scorer.load(api_out, rtools.ScoreConfig(device="cpu", dtype="fp32"))
    scored = list(scorer.score(rtools.read_records(test_file)))
    decided = list(rtools.decide([dict(r) for r in scored], rtools.Thresholds(threshold=0.5)))
    summary = rtools.summarize(decided)

    # the commands
    def ok(command, args, data=None):
        r = invoke(command, args, input=data)
        assert r.exit_code == 0, r.stderr
        return r.stdout

    cli_tagged = ok("rt-tag", [train_file])
    cli_out = str(tmp_path / "cli")
    flags = ["--epochs", "5", "--batch-size", "8", "--lr", "2e-3", "--token-lr", "2e-2", "--lora-r", "4"]
    flags += ["--lora-alpha", "8", "--max-answer-tokens", "8", "--eval-fraction", "0", "--device", "cpu"]
    ok("rt-lora", ["-", "--out", cli_out, "--model", tiny_base, "-q", "--dtype", "fp32", *flags], cli_tagged)
    cli_scored = ok("rt-score", [test_file, "--model", cli_out, "-q", "--device", "cpu", "--dtype", "fp32"])
    cli_decided = ok("rt-threshold", ["-t", "0.5"], cli_scored)
    cli_summary = orjson.loads(ok("rt-metrics", [], cli_decided))

    lines = lambda recs: b"".join(map(dumps, recs)).decode()  # noqa: E731
    assert lines(tagged) == cli_tagged
    api_w, cli_w = (load_file(os.path.join(d, "adapter_model.safetensors")) for d in (api_out, cli_out))
    assert api_w.keys() == cli_w.keys() and all(torch.equal(api_w[k], cli_w[k]) for k in api_w)
    assert lines(scored) == cli_scored
    assert lines(decided) == cli_decided
    assert orjson.loads(orjson.dumps(summary)) == cli_summary
    assert 0 < summary["n"] == len(test_rows)


def write(path, records) -> str:
    with open(path, "w") as fh:
        fh.write(jsonl(records))
    return str(path)


def readme_python() -> str:
    """The ```python block of the README's "## Library use" section."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "README.md")) as fh:
        text = fh.read()
    section = text.split("## Library use", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_library_example_runs(tmp_path, tiny_base):
    """The README's example, verbatim, in a fresh interpreter: train.jsonl and test.jsonl in its
    directory, $RT_BASE_MODEL the tiny model (the example's own way to name a base model)."""
    import subprocess
    import sys

    from model_data import SUBPROCESS_ENV

    write(tmp_path / "train.jsonl", raw_rows(2))
    write(tmp_path / "test.jsonl", raw_rows(1))
    code = readme_python()
    assert "rtools.train(" in code and "rtools.Scorer.load(" in code
    env = {**SUBPROCESS_ENV, "RT_BASE_MODEL": tiny_base, "RT_CPU_BF16": "0"}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert os.path.isfile(tmp_path / "runs" / "adapter" / "adapter_model.safetensors")
    float(r.stdout.strip())  # the F1 it prints
