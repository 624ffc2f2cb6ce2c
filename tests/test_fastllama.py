"""rtools.model.fastllama computes what transformers' LlamaForCausalLM computes (fp32, tiny random
models of several shapes), and refuses, by name, the configurations it does not implement."""

from __future__ import annotations

import random

import pytest

VOCAB = 97


def hf_model(directory, **overrides):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    settings = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    settings.update(overrides)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**settings)).eval()
    model.save_pretrained(directory, safe_serialization=True)
    return model


def sequences(n=13, seed=0):
    rng = random.Random(seed)
    prefix = [rng.randrange(VOCAB) for _ in range(7)]  # a shared "system turn"
    return [prefix + [rng.randrange(VOCAB) for _ in range(rng.randint(1, 40))] for _ in range(n)]


SHAPES = {
    "tied, grouped queries": {},
    "untied": {"tie_word_embeddings": False},
    "one kv head per head": {"num_key_value_heads": 4},
    "other rope theta, eps, head_dim": {"rope_theta": 500.0, "rms_norm_eps": 1e-5, "head_dim": 16},
    "three layers": {"num_hidden_layers": 3},
}


@pytest.mark.parametrize("shape", SHAPES)
def test_the_fast_forward_equals_transformers(tmp_path, shape):
    import torch

    from rtools.model import fastllama
    from rtools.model.scoring import control_probabilities

    model = hf_model(str(tmp_path), **SHAPES[shape])
    fast = fastllama.load_fast(str(tmp_path), "cpu", torch.float32)
    assert isinstance(fast, fastllama.FastLlama)
    seqs = sequences()
    control = [3, 5, 90]
    want = control_probabilities(model, seqs, control, batch_tokens=64)
    for budget, share in ((64, True), (1024, True), (1024, False), (8, True)):
        got = fastllama.control_probabilities(fast, seqs, control, batch_tokens=budget, share_prefix=share)
        worst = max(abs(a - b) for w, g in zip(want, got, strict=True) for a, b in zip(w, g, strict=True))
        assert worst <= 1e-6, (shape, budget, share, worst)
    one = fastllama.control_probabilities(fast, seqs[:1], control, batch_tokens=1024)
    assert max(abs(a - b) for a, b in zip(one[0], want[0], strict=True)) <= 1e-6
    # a kept prefix (the chat template's system turn) gives the same numbers
    fast.kept_prefix = (seqs[0][:5], fast.prefix_kv(seqs[0][:5]))
    kept = fastllama.control_probabilities(fast, seqs, control, batch_tokens=64)
    assert max(abs(a - b) for w, g in zip(want, kept, strict=True) for a, b in zip(w, g, strict=True)) <= 1e-6


@pytest.mark.parametrize(
    "overrides, reason",
    [
        ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope"),
        ({"attention_bias": True}, "attention_bias"),
        ({"hidden_act": "gelu"}, "hidden_act"),
    ],
)
def test_configurations_it_does_not_implement_are_refused_and_loaded_by_transformers(
    tmp_path, overrides, reason
):
    import torch

    from rtools.model import fastllama
    from rtools.model.identity import normal_config, read_config

    hf_model(str(tmp_path), **overrides)
    spec, why = fastllama.llama_spec(normal_config(read_config(str(tmp_path))))
    assert spec is None and reason in why
    assert fastllama.load_fast(str(tmp_path), "cpu", torch.float32) is None


def test_only_fp32_on_cpu(tmp_path):
    import torch

    from rtools.model import fastllama

    hf_model(str(tmp_path))
    assert fastllama.load_fast(str(tmp_path), "cpu", torch.bfloat16) is None
    assert fastllama.load_fast(str(tmp_path), "cuda", torch.float32) is None
