"""Merged models (rt-lora --merge / --merge-only, rtools.model.merging): a standalone model directory
that plain transformers loads, whose scores are the adapter's, with no peft name left in it.

Tied and untied tiny models, fp32. The adapter's reference scores come both from rt-score on the
adapter (which merges in memory) and from the *unmerged* peft model (peft's forward, its
trainable-token wrappers live), so that a merge that dropped the token rows could not pass.
"""

from __future__ import annotations

import json
import os

import orjson
import pytest
import torch
from model_data import FAST, raw_rows, read_jsonl, run_lora, tag_single, write_jsonl
from safetensors import safe_open

from rtools.model.loading import ModelError, load_for_inference
from rtools.model.merging import PEFT_NAMES, merge_adapter
from rtools.tokens import TOKEN_MAP_FILE

pytest_plugins = ["model_fixtures"]

SCORE = ["--device", "cpu", "--dtype", "fp32", "-q"]


@pytest.fixture(params=["tied", "untied"])
def case(request):
    trained = request.getfixturevalue(f"trained_{request.param}")
    return request.param, trained, request.getfixturevalue(f"merged_{request.param}")


def weight_keys(directory):
    keys = {}
    for f in os.listdir(directory):
        if f.endswith(".safetensors"):
            with safe_open(os.path.join(directory, f), framework="pt") as fh:
                for k in fh.keys():  # noqa: SIM118
                    keys[k] = fh.get_tensor(k)
    return keys


def test_rt_score_on_merged_equals_the_adapter(invoke, case):
    name, trained, merged = case
    adapter = invoke("rt-score", [trained.prompts, "--model", trained.out, *SCORE])
    plain = invoke("rt-score", [trained.prompts, "--model", merged, *SCORE])
    assert adapter.exit_code == 0 and plain.exit_code == 0, adapter.stderr + plain.stderr
    a, m = read_jsonl(adapter.stdout), read_jsonl(plain.stdout)
    assert [r["id"] for r in a] == [r["id"] for r in m]
    assert max(abs(x["p_refuse"] - y["p_refuse"]) for x, y in zip(a, m, strict=True)) <= 1e-4
    assert max(abs(x["p_respond"] - y["p_respond"]) for x, y in zip(a, m, strict=True)) <= 1e-4
    # the scores are the trained ones, not the base's: they separate the classes
    gold = {r["id"]: r["label"] for r in trained.rows}
    refuse = [r["p_refuse"] for r in m if gold[r["id"]] == "refuse"]
    respond = [r["p_refuse"] for r in m if gold[r["id"]] == "respond"]
    assert sum(refuse) / len(refuse) > sum(respond) / len(respond) + 0.2


def _prompt_ids(tok, prompts):
    texts = [
        tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
        for p in prompts
    ]
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def test_plain_transformers_loads_it_and_gives_the_unmerged_adapters_logits(case):
    """AutoModelForCausalLM + AutoTokenizer, nothing of rtools: the full next-token distribution at the
    first assistant position equals the unmerged peft model's (LoRA and token rows live)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name, trained, merged = case
    model = AutoModelForCausalLM.from_pretrained(merged, use_safetensors=True, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(merged)
    model.eval()
    for t in ("[refuse]", "[respond]"):
        assert t in tok.all_special_tokens, t
    unmerged = load_for_inference(trained.out, device="cpu", dtype="fp32", merge=False)
    assert hasattr(unmerged.model, "peft_config")  # really the peft wrapper
    assert unmerged.tokenizer.convert_tokens_to_ids(["[refuse]", "[respond]"]) == tok.convert_tokens_to_ids(
        ["[refuse]", "[respond]"]
    )
    prompts = [r["prompt"] for r in trained.rows[:6]]
    with torch.no_grad():
        for ids in _prompt_ids(tok, prompts):
            x = torch.tensor([ids])
            ours = torch.log_softmax(model(input_ids=x).logits[0, -1].float(), -1)
            ref = torch.log_softmax(unmerged.model(input_ids=x).logits[0, -1].float(), -1)
            assert (ours - ref).abs().max() <= 1e-4


def test_control_rows_are_the_trained_rows(case):
    """The trained token rows were folded in (embedding, and the untied head): they differ from the
    base's freshly added rows and equal the rows the trained peft model uses."""
    from model_data import control_rows
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name, trained, merged = case
    model = AutoModelForCausalLM.from_pretrained(merged, use_safetensors=True, dtype=torch.float32)
    ids = AutoTokenizer.from_pretrained(merged).convert_tokens_to_ids(["[refuse]", "[respond]"])
    hidden = model.config.hidden_size
    emb = model.get_input_embeddings().weight[ids].detach()
    trained_emb = control_rows(trained.model.get_input_embeddings(), ids, hidden)
    assert (emb - trained_emb).abs().max() <= 1e-6
    base_rows = model.get_input_embeddings().weight[: min(ids)].mean(0)
    assert (emb - base_rows).abs().max() > 1e-3  # moved away from the mean-of-rows start
    if name == "untied":
        head = model.get_output_embeddings().weight[ids].detach()
        trained_head = control_rows(trained.model.get_output_embeddings(), ids, hidden, head=True)
        assert (head - trained_head).abs().max() <= 1e-5
        assert (head - emb).abs().max() > 1e-3


def test_no_peft_names_anywhere(case):
    name, trained, merged = case
    files = set(os.listdir(merged))
    assert "adapter_config.json" not in files and "adapter_model.safetensors" not in files
    assert TOKEN_MAP_FILE in files and "rtools_config.json" in files
    keys = weight_keys(merged)
    bad = [k for k in keys if any(p in k for p in PEFT_NAMES)]
    assert keys and not bad, bad
    with open(os.path.join(merged, "config.json")) as fh:
        config_text = fh.read()
    for p in (*PEFT_NAMES, "peft", "adapter", "quantization_config"):
        assert p not in config_text, p
    for f in ("tokenizer_config.json", "tokenizer.json"):
        with open(os.path.join(merged, f)) as fh:
            text = fh.read()
        assert "peft" not in text and "lora" not in text.lower(), f
    meta = orjson.loads(open(os.path.join(merged, "rtools_config.json"), "rb").read())
    assert meta["merged_from"]["adapter"] == os.path.abspath(trained.out)
    assert meta["merged_from"]["base_identity"]  # the base it was made from, for the record


def test_tied_stays_tied_and_untied_stays_untied(case):
    from transformers import AutoModelForCausalLM

    name, trained, merged = case
    with open(os.path.join(merged, "config.json")) as fh:
        config = json.load(fh)
    keys = weight_keys(merged)
    model = AutoModelForCausalLM.from_pretrained(merged, use_safetensors=True)
    same = model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    n_vocab = model.get_input_embeddings().weight.shape[0]
    assert config["vocab_size"] == n_vocab
    if name == "tied":
        assert config.get("tie_word_embeddings", True) is True
        assert "lm_head.weight" not in keys  # one stored matrix
        assert same
    else:
        assert config["tie_word_embeddings"] is False
        assert (
            keys["lm_head.weight"].shape
            == keys["model.embed_tokens.weight"].shape
            == (n_vocab, config["hidden_size"])
        )
        assert not same


def test_merge_only_cli_and_rt_lora_merge_write_the_same_model(invoke, tmp_path, tiny_base):
    """rt-lora --merge (at the end of training) and rt-lora --merge-only (later) give the same weights;
    --merge-only prints its summary and writes no progress bar with -q."""
    data = write_jsonl(tmp_path / "tagged.jsonl", tag_single(raw_rows(2)))
    out = str(tmp_path / "adapter")
    r, _ = run_lora([data, "--out", out, "--model", tiny_base, *FAST, "--epochs", "1", "--merge"])
    assert r.exit_code == 0, r.stderr
    r = invoke("rt-lora", ["--merge-only", out, "--out", str(tmp_path / "m2"), "-q"])
    assert r.exit_code == 0, r.stderr
    assert r.stderr == ""
    summary = orjson.loads(r.stdout)
    assert summary["out"] == str(tmp_path / "m2") and summary["dtype"] == "float32"
    a, b = weight_keys(os.path.join(out, "merged")), weight_keys(str(tmp_path / "m2"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_merge_only_stores_the_dtype_asked_for(invoke, tmp_path, trained_tied):
    r = invoke(
        "rt-lora",
        ["--merge-only", trained_tied.out, "--out", str(tmp_path / "bf16"), "--dtype", "bf16", "-q"],
    )
    assert r.exit_code == 0, r.stderr
    keys = weight_keys(str(tmp_path / "bf16"))
    assert {t.dtype for t in keys.values()} == {torch.bfloat16}
    with open(tmp_path / "bf16" / "config.json") as fh:
        assert json.load(fh)["dtype"] == "bfloat16"


def test_merge_only_errors(invoke, tmp_path, tiny_base, trained_tied, monkeypatch):
    # not an adapter
    r = invoke("rt-lora", ["--merge-only", tiny_base, "--out", str(tmp_path / "x")])
    assert r.exit_code == 1 and "not an rt-lora adapter" in r.stderr, r.stderr
    # training data with --merge-only is a usage error, as is --merge
    r = invoke("rt-lora", ["data.jsonl", "--merge-only", trained_tied.out, "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "reads no training data" in r.stderr, r.stderr
    r = invoke("rt-lora", ["--merge-only", trained_tied.out, "--merge", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "--merge" in r.stderr, r.stderr
    # an existing output without --overwrite
    os.makedirs(tmp_path / "exists")
    r = invoke("rt-lora", ["--merge-only", trained_tied.out, "--out", str(tmp_path / "exists")])
    assert r.exit_code == 1 and "--overwrite" in r.stderr, r.stderr
    assert not os.listdir(tmp_path / "exists")
    assert not os.path.exists(tmp_path / "x")


def test_merge_refuses_a_quantized_base_before_loading(tmp_path, trained_tied, monkeypatch):
    import shutil

    import rtools.model.loading as loading

    quantized = str(tmp_path / "qbase")
    shutil.copytree(trained_tied.base, quantized)
    with open(os.path.join(quantized, "config.json")) as fh:
        cfg = json.load(fh)
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    with open(os.path.join(quantized, "config.json"), "w") as fh:
        json.dump(cfg, fh)
    monkeypatch.setattr(loading, "load_base", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(ModelError, match="stored quantized"):
        merge_adapter(trained_tied.out, str(tmp_path / "m"), base=quantized)
    assert not os.path.exists(tmp_path / "m")


def test_a_failed_merge_leaves_nothing(tmp_path, trained_tied, monkeypatch):
    import rtools.model.merging as merging

    def broken(model, tied):
        raise ModelError("boom")

    monkeypatch.setattr(merging, "_tie", broken)
    with pytest.raises(ModelError, match="boom"):
        merge_adapter(trained_tied.out, str(tmp_path / "m"))
    assert not os.path.exists(tmp_path / "m")
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".m.")]
