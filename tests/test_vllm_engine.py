"""rt-score --engine vllm without vLLM: the pure parts, and the engine's plumbing on a stand-in.

vLLM is never installed in CI. What is tested here is rtools' side: the options it hands vLLM (one
generated position, the control tokens' log-probabilities by token id, or the full distribution on an
older vLLM), the prompts it sends (the library's own chat encoding, one request per prompt), and
the records it builds from the log-probabilities that come back (the local engine's records, never
renormalised over the control tokens). tests/fake_vllm.py stands in for vLLM's API, computing with
plain transformers; whether vLLM's numbers match is bench/vllm_check.py's job on a GPU.
"""

from __future__ import annotations

import math
import sys

import fake_vllm
import pytest
from model_data import read_jsonl, write_jsonl

from rtools.model.loading import ModelError
from rtools.model.scoring import ScoreConfig, Scorer, score_fields
from rtools.model.vllm_engine import (
    VllmScorer,
    control_probabilities,
    engine_options,
    sampling_options,
)
from rtools.tokens import TokenMap

pytest_plugins = ["model_fixtures"]

LOCAL = ["--device", "cpu", "--dtype", "fp32", "-q"]


@pytest.fixture(params=["tied", "untied"])
def merged(request):
    return (
        request.param,
        request.getfixturevalue(f"merged_{request.param}"),
        request.getfixturevalue(f"trained_{request.param}"),
    )


def install(monkeypatch, token_ids=True):
    module = fake_vllm.make_module(token_ids=token_ids)
    monkeypatch.setitem(sys.modules, "vllm", module)
    return module


# ---------------------------------------------------------------------------
# Pure parts


def test_sampling_options_one_position_and_the_control_ids():
    opts = sampling_options([7, 9], {"max_tokens", "logprob_token_ids", "detokenize", "logprobs"})
    assert opts["max_tokens"] == 1 and opts["n"] == 1
    assert opts["logprob_token_ids"] == [7, 9] and "logprobs" not in opts
    assert opts["detokenize"] is False
    # an older vLLM: the whole distribution, never a top-k that could miss a control token
    old = sampling_options([7, 9], {"max_tokens", "logprobs"})
    assert old["logprobs"] == -1 and "logprob_token_ids" not in old and "detokenize" not in old
    eng = engine_options("/m", None, False, {"logprobs_mode"}, full_vocab=True)
    assert eng["logprobs_mode"] == "raw_logprobs" and eng["max_logprobs"] == -1 and eng["dtype"] == "auto"
    assert "max_logprobs" not in engine_options("/m", "bf16", False, set(), full_vocab=False)


def test_probabilities_are_full_vocabulary_not_renormalised():
    """Most of the mass on an ordinary token: p_refuse + p_respond stays well under 1."""
    step = {5: fake_vllm.Logprob(math.log(0.7)), 7: fake_vllm.Logprob(math.log(0.2)), 9: math.log(0.1)}
    probs = control_probabilities(step, [7, 9])
    assert probs == pytest.approx([0.2, 0.1], abs=1e-12)
    fields = score_fields(TokenMap.single(), probs)
    assert fields["p_refuse"] == pytest.approx(0.2) and fields["p_respond"] == pytest.approx(0.1)
    with pytest.raises(ModelError, match="control token id 11"):
        control_probabilities(step, [7, 11])


def test_record_from_given_logprobs_equals_the_local_scorers_record(merged_tied, trained_tied):
    """The local (HF) scorer's probabilities, handed over as vLLM would return them (log-probabilities
    with a sampled token among them), give the local scorer's record fields; category mode too."""
    local = Scorer.load(merged_tied, ScoreConfig(device="cpu", dtype="fp32"))
    seqs = [
        local.encoder.encode_prompt([{"role": "user", "content": r["prompt"]}]) for r in trained_tied.rows[:8]
    ]
    ids = local.encoder.control_ids
    for probs in local.probabilities(seqs):
        step = {
            0: fake_vllm.Logprob(-0.01),
            **{i: fake_vllm.Logprob(math.log(p)) for i, p in zip(ids, probs, strict=True)},
        }
        got = local.fields(control_probabilities(step, ids))
        want = local.fields(probs)
        assert got.keys() == want.keys()
        assert all(abs(got[k] - want[k]) <= 1e-12 for k in ("p_refuse", "p_respond"))
    tm = TokenMap.category(
        slugs=["safety", "humanizing"],
        tokens={"safety": "[refuse:safety]", "humanizing": "[refuse:humanizing]"},
    )
    probs = [0.05, 0.15, 0.3]
    step = {i: math.log(p) for i, p in zip([11, 12, 13], probs, strict=True)}
    got, want = score_fields(tm, control_probabilities(step, [11, 12, 13])), score_fields(tm, probs)
    assert got["p_cat"] == pytest.approx(want["p_cat"]) and list(got["p_cat"]) == ["safety", "humanizing"]
    assert got["p_refuse"] == pytest.approx(0.2) and got["p_respond"] == pytest.approx(0.3)


# ---------------------------------------------------------------------------
# The engine on the stand-in


@pytest.mark.parametrize("token_ids", [True, False], ids=["logprob_token_ids", "full-vocab"])
def test_vllm_engine_gives_the_local_engines_records(invoke, monkeypatch, merged, token_ids):
    name, model, trained = merged
    module = install(monkeypatch, token_ids)
    local = invoke("rt-score", [trained.prompts, "--model", model, *LOCAL])
    viav = invoke("rt-score", [trained.prompts, "--model", model, "--engine", "vllm", "--window", "16", "-q"])
    assert local.exit_code == 0 and viav.exit_code == 0, local.stderr + viav.stderr
    a, b = read_jsonl(local.stdout), read_jsonl(viav.stdout)
    assert [list(r) for r in a] == [list(r) for r in b]  # same fields, same key order
    assert [r["id"] for r in a] == [r["id"] for r in b]
    for x, y in zip(a, b, strict=True):
        assert abs(x["p_refuse"] - y["p_refuse"]) <= 1e-5 and abs(x["p_respond"] - y["p_respond"]) <= 1e-5
    (llm,) = module.LLM.instances
    assert llm.args.model == model and llm.args.max_logprobs == (20 if token_ids else -1)
    # one request per prompt, each the library's encoding of that prompt, max_tokens=1
    assert len(llm.requests) == len(a)
    assert all(p.max_tokens == 1 for p in llm.params)
    scorer = Scorer.load(model, ScoreConfig(device="cpu", dtype="fp32"))
    assert llm.requests == [
        scorer.encoder.encode_prompt([{"role": "user", "content": r["prompt"]}]) for r in trained.rows
    ]


def test_bad_record_same_output_and_error_as_local(invoke, monkeypatch, tmp_path, merged_tied, trained_tied):
    install(monkeypatch)
    rows = [{"id": r["id"], "prompt": r["prompt"]} for r in trained_tied.rows[:7]]
    rows[4] = {"id": "bad"}  # no prompt
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    local = invoke("rt-score", [path, "--model", merged_tied, *LOCAL, "--window", "3"])
    viav = invoke("rt-score", [path, "--model", merged_tied, "--engine", "vllm", "-q", "--window", "3"])
    assert local.exit_code == viav.exit_code == 1
    assert local.stderr == viav.stderr and "in.jsonl:5" in viav.stderr
    a, b = read_jsonl(local.stdout), read_jsonl(viav.stdout)
    assert [r["id"] for r in a] == [r["id"] for r in b] == [0, 1, 2, 3]
    assert max(abs(x["p_refuse"] - y["p_refuse"]) for x, y in zip(a, b, strict=True)) <= 1e-5


def test_an_adapter_is_refused_with_a_pointer_to_merge(invoke, monkeypatch, trained_tied):
    monkeypatch.setitem(sys.modules, "vllm", None)  # refused before vLLM is even needed
    r = invoke("rt-score", [trained_tied.prompts, "--model", trained_tied.out, "--engine", "vllm"])
    assert r.exit_code == 1
    assert "adapter" in r.stderr and "--merge-only" in r.stderr and "36501" in r.stderr, r.stderr
    assert r.stdout == ""


def test_missing_vllm_names_the_extra(invoke, monkeypatch, merged_tied, trained_tied):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    r = invoke("rt-score", [trained_tied.prompts, "--model", merged_tied, "--engine", "vllm"])
    assert r.exit_code == 1 and "rtools[vllm]" in r.stderr, r.stderr
    with pytest.raises(ModelError, match=r"rtools\[vllm\]"):
        VllmScorer.load(merged_tied)


@pytest.mark.parametrize(
    "args,word",
    [
        (["--temperature", "2"], "--temperature"),
        (["--4bit"], "--4bit"),
        (["--batch-size", "4"], "--batch-size"),
        (["--allow-untrained"], "--allow-untrained"),
        (["--device", "cpu"], "--device"),
    ],
)
def test_options_the_engine_cannot_honour_are_usage_errors(
    invoke, monkeypatch, merged_tied, trained_tied, args, word
):
    install(monkeypatch)
    r = invoke("rt-score", [trained_tied.prompts, "--model", merged_tied, "--engine", "vllm", *args])
    assert r.exit_code == 2 and word in r.stderr, r.stderr
