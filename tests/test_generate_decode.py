"""Issue 9, bug 6: rt-generate decodes through transformers' ``generate`` from the prefill's cache.

Generation used to decode the whole answer at every step to look for stop strings (quadratic in the
answer length), to rewrite the cache layers' tensors and to re-enter its prefill. Now one prefill
gives the control-token probabilities and the cache; ``generate`` continues from that cache with
the forced token as its last input token, and stops on transformers' own stop-string criterion.
"""

from __future__ import annotations

import pytest
from test_generate import PROMPTS, encode_all, make_generator

pytest_plugins = ["model_fixtures"]
torch = pytest.importorskip("torch")

from test_generate import encoder, lm, tiny_raw, tiny_tokens  # noqa: E402, F401  (fixtures)


def test_generate_decodes_each_answer_once_with_stop_strings(lm, encoder, monkeypatch):  # noqa: F811
    from rtools.model.generation import Sampling

    seqs = encode_all(encoder)
    g = make_generator(lm, encoder, batch_size=6)
    plain = g.generate(seqs, lambda j, p, lp: j % 2, Sampling(max_new_tokens=24))
    assert all(len(x.answer_ids) == 24 for x in plain)
    calls = []
    original = type(encoder.tok).decode

    def counting(self, ids, *a, **kw):
        calls.append(len(ids))
        return original(self, ids, *a, **kw)

    monkeypatch.setattr(type(encoder.tok), "decode", counting)
    never = Sampling(max_new_tokens=24, stop=("\x00never", "\x01nor this"))
    stopped = g.generate(seqs, lambda j, p, lp: j % 2, never)
    assert [x.answer_ids for x in stopped] == [x.answer_ids for x in plain]
    assert {x.stopped for x in stopped} == {"length"}
    # once per answer (the old loop decoded the growing answer at each of the 24 steps: 144 calls)
    assert len(calls) <= len(seqs), calls


def test_generate_continues_from_the_prefill_cache(lm, encoder, monkeypatch):  # noqa: F811
    """``model.generate`` gets the prompt block plus the forced token and the prefill's cache."""
    from rtools.model.generation import Sampling

    seqs = encode_all(encoder)
    seen = []
    original = type(lm.model).generate

    def spy(self, *a, **kw):
        cache = kw.get("cache", kw.get("past_key_values"))
        seen.append((kw, None if cache is None else cache.get_seq_length()))  # before generate grows it
        return original(self, *a, **kw)

    monkeypatch.setattr(type(lm.model), "generate", spy)
    gens = make_generator(lm, encoder, batch_size=6).generate(
        seqs, lambda j, p, lp: j % 2, Sampling(max_new_tokens=5)
    )
    assert seen, "model.generate was not used"
    forced = {x.control_id for x in gens}
    for kw, cached in seen:
        ids = kw["input_ids"]
        assert cached == ids.shape[1] - 1  # every prompt token is cached, not the forced one
        assert set(ids[:, -1].tolist()) <= forced
        assert kw["attention_mask"][:, -1].all()


def test_generate_from_a_lora_adapter_matches_transformers_generate(trained_tied):
    """The peft-wrapped model (an rt-lora adapter) decodes as ``generate`` on the unpadded prompt."""
    from rtools.model.chat import ChatEncoder
    from rtools.model.generation import Sampling
    from rtools.model.loading import load_for_inference

    # unmerged, as a 4-bit model is kept: generate goes through the peft wrapper
    adapter = load_for_inference(trained_tied.out, device="cpu", dtype="fp32", merge=False)
    assert hasattr(adapter.model, "get_base_model")  # a peft model
    enc = ChatEncoder(adapter.tokenizer, adapter.token_map.tokens())
    seqs = encode_all(enc, PROMPTS)
    g = make_generator(adapter, enc, batch_size=4)
    for gi in g.generate(seqs, lambda j, p, lp: j % 2, Sampling(max_new_tokens=8)):
        ref = adapter.model.generate(
            input_ids=torch.tensor([[*gi.prompt_ids, gi.control_id]]),
            attention_mask=torch.ones((1, len(gi.prompt_ids) + 1), dtype=torch.long),
            max_new_tokens=8,
            do_sample=False,
            eos_token_id=sorted(g.eos_ids),
            pad_token_id=adapter.tokenizer.pad_token_id,
            suppress_tokens=enc.control_ids,  # an answer never holds a control token
        )[0, len(gi.prompt_ids) + 1 :].tolist()
        assert ref[: len(gi.answer_ids)] == gi.answer_ids
        assert gi.stopped == "length" or ref[len(gi.answer_ids)] in g.eos_ids
