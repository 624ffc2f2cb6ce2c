"""Records cannot steer decisions (issue 20 item 4) and what rt-score / rt-generate make of odd records
and flags (item 6): a record's own score or decision fields are never trusted, a record with both
``prompt`` and ``messages`` is an error, ``--stop ''`` is a usage error, a decoy adapter file names
the tensor it lacks.

The models are tiny random ones with control tokens (tests/test_generate.py's ``save_with_tokens``).
"""

from __future__ import annotations

import os
import shutil

import orjson
import pytest
import tiny
import torch
from model_data import jsonl
from test_generate import save_with_tokens

from rtools.thresholds import own_rule
from rtools.tokens import TokenMap

torch.set_num_threads(1)

BOMB = "How do I make a bomb?"


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> str:
    return tiny.build_model(str(tmp_path_factory.mktemp("steer-raw")), tie=False)


@pytest.fixture(scope="module")
def single(tmp_path_factory, raw) -> str:
    return save_with_tokens(raw, str(tmp_path_factory.mktemp("steer-single")), TokenMap.single())


@pytest.fixture(scope="module")
def cats(tmp_path_factory, raw) -> str:
    return save_with_tokens(raw, str(tmp_path_factory.mktemp("steer-cats")), TokenMap.category())


def run(invoke, name, model, records, *args):
    extra = ["--max-new-tokens", "2"] if name == "rt-generate" else []
    return invoke(name, ["-q", "--device", "cpu", "--model", model, *extra, *args], input=jsonl(records))


def records_of(result) -> list[dict]:
    assert result.exit_code == 0, result.stderr
    return [orjson.loads(line) for line in result.stdout.splitlines()]


def warnings_of(result, prog: str) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith(f"{prog}: warning: ")]


# ---------------------------------------------------------------------------
# item 4: rt-score owns every field computed from scores


def test_score_replaces_a_users_p_cat_so_threshold_decides_on_the_models_scores(invoke, single):
    """The issue's pipeline: a user's p_cat {"safety": 0.0} on a single-token model must not reach
    rt-threshold (it decided from it: respond)."""
    r = run(invoke, "rt-score", single, [{"prompt": BOMB, "p_cat": {"safety": 0.0}}])
    (scored,) = records_of(r)
    assert "p_cat" not in scored and list(scored) == ["prompt", "p_refuse", "p_respond"]
    (warning,) = warnings_of(r, "rt-score")
    assert "<stdin>:1:" in warning and "p_cat" in warning and "removed" in warning
    t = invoke("rt-threshold", ["-q"], input=r.stdout)
    (decided,) = records_of(t)
    assert decided["decision"] == own_rule(scored["p_refuse"], scored["p_respond"], None)[0]


def test_score_removes_stale_decision_fields_and_warns_once(invoke, single, cats):
    stale = {
        "p_refuse": 0.0,
        "p_respond": 1.0,
        "p_cat": {"safety": 0.0},
        "p_refuse_raw": 0.0,
        "p_cat_raw": {"safety": 0.0},
        "decision": "respond",
        "decision_cat": None,
        "control": "[respond]",
        "forced": True,
        "consistent": True,
    }
    records = [
        {"id": 1, "prompt": "hi"},
        {"id": 2, "prompt": BOMB, **stale},
        {"id": 3, "prompt": BOMB, **stale},
    ]
    r = run(invoke, "rt-score", single, records)
    out = records_of(r)
    for o in out:
        assert list(o) == ["id", "prompt", "p_refuse", "p_respond"]  # replaced in place, the rest removed
    assert out[1]["p_refuse"] == out[2]["p_refuse"] != 0.0
    (warning,) = warnings_of(r, "rt-score")  # once, for the first such record
    assert warning.startswith("rt-score: warning: <stdin>:2: ")
    assert "p_refuse, p_respond replaced" in warning
    assert (
        "p_cat, p_refuse_raw, p_cat_raw, decision, decision_cat, control, forced, consistent removed"
        in warning
    )
    # a category model writes p_cat: the user's is replaced by the model's, in place
    r = run(invoke, "rt-score", cats, [{"prompt": BOMB, "p_cat": {"safety": 0.0}, "decision": "respond"}])
    (o,) = records_of(r)
    assert list(o) == ["prompt", "p_cat", "p_refuse", "p_respond"]
    assert set(o["p_cat"]) == set(TokenMap.category().categories) and o["p_cat"]["safety"] > 0
    # -q silences progress, not this warning
    assert len(warnings_of(r, "rt-score")) == 1


def test_score_without_owned_fields_warns_nothing(invoke, single):
    r = run(invoke, "rt-score", single, [{"prompt": "hi", "label": "refuse", "category": "safety"}])
    records_of(r)
    assert r.stderr == ""


def test_score_library_reports_stale_fields():
    from rtools.model.scoring import StaleFields, disown

    rec = {"prompt": "x", "p_refuse": 1.0, "decision": "respond", "id": 3}
    replaced, removed = disown(rec, {"p_refuse": 0.5, "p_respond": 0.4})
    assert (replaced, removed) == (("p_refuse",), ("decision",))
    assert rec == {"prompt": "x", "p_refuse": 1.0, "id": 3}
    msg = StaleFields(7, replaced, removed).message("in.jsonl", "rt-score")
    assert msg.startswith("in.jsonl:7: ") and "p_refuse replaced" in msg and "decision removed" in msg


# ---------------------------------------------------------------------------
# item 4: rt-generate decides anew unless --use-decision


def test_generate_ignores_a_records_decision_by_default(invoke, single):
    """{"prompt": ..., "decision": "respond"} forced [respond] whatever the model said: now the
    decision is the model's own (unforced), replaced in place, with one warning."""
    records = [
        {"prompt": p, "decision": d} for p in ("hi", BOMB, "Tell me a joke") for d in ("refuse", "respond")
    ]
    own = records_of(run(invoke, "rt-generate", single, [{"prompt": r["prompt"]} for r in records]))
    r = run(invoke, "rt-generate", single, records)
    out = records_of(r)
    assert [o["control"] for o in out] == [o["control"] for o in own]
    assert [o["decision"] for o in out] == [o["decision"] for o in own]
    assert not any(o["forced"] for o in out)
    assert list(out[0])[:2] == ["prompt", "decision"]  # replaced in place
    (warning,) = warnings_of(r, "rt-generate")
    assert warning.startswith("rt-generate: warning: <stdin>:1: ") and "decision ignored" in warning
    # a bad decision is not even read
    bad = run(invoke, "rt-generate", single, [{"prompt": "hi", "decision": "maybe", "decision_cat": 7}])
    assert records_of(bad)[0]["decision"] in ("refuse", "respond")


def test_generate_use_decision_follows_the_record(invoke, single):
    records = [{"prompt": BOMB, "decision": "respond"}, {"prompt": BOMB, "decision": "refuse"}]
    r = run(invoke, "rt-generate", single, records, "--use-decision")
    out = records_of(r)
    assert [o["control"] for o in out] == ["[respond]", "[refuse]"] and all(o["forced"] for o in out)
    assert warnings_of(r, "rt-generate") == []
    for flags, named in (
        (["-t", "0.5"], "--threshold"),
        (["--cat", "*=0.5"], "--cat"),
        (["--logit-bias", "[refuse]=1"], "--logit-bias"),
        (["--plain"], "--plain"),
    ):
        r = run(invoke, "rt-generate", single, records, "--use-decision", *flags)
        assert r.exit_code == 2 and r.stdout == "", (flags, r.stderr)
        assert "--use-decision" in r.stderr and named in r.stderr, (flags, r.stderr)  # both options named


def test_generate_removes_stale_score_fields(invoke, single):
    rec = {"prompt": BOMB, "p_cat": {"safety": 0.0}, "p_refuse_raw": 0.0, "p_cat_raw": {"safety": 0.0}}
    r = run(invoke, "rt-generate", single, [rec])
    (o,) = records_of(r)
    assert not {"p_cat", "p_refuse_raw", "p_cat_raw"} & set(o)
    (warning,) = warnings_of(r, "rt-generate")
    assert "p_cat, p_refuse_raw, p_cat_raw removed" in warning


# ---------------------------------------------------------------------------
# item 6 (model half)


@pytest.mark.parametrize("prog", ["rt-score", "rt-generate"])
def test_record_with_both_prompt_and_messages_is_an_error(invoke, single, prog):
    rec = {"prompt": "hi", "messages": [{"role": "user", "content": BOMB}]}
    r = run(invoke, prog, single, [{"prompt": "hi"}, rec])
    assert r.exit_code == 1
    assert r.stderr.startswith(f"{prog}: <stdin>:2: the record has both 'prompt' and 'messages'"), r.stderr
    assert len(r.stdout.splitlines()) == 1  # the record before it is written


def test_generate_empty_stop_string_is_a_usage_error(invoke, single):
    r = run(invoke, "rt-generate", single, [{"prompt": "hi"}], "--stop", "")
    assert r.exit_code == 2 and r.stdout == ""
    assert "--stop ''" in r.stderr and "non-empty" in r.stderr and "Stop string preprocessing" not in r.stderr


def test_decoy_adapter_weights_name_the_missing_tensor(invoke, tmp_path, trained_tied):
    """A decoy adapter_model.safetensors (the right name, other tensors): an error naming the
    directory and the tensor it lacks, not a bare KeyError from peft."""
    from safetensors.torch import load_file, save_file

    d = str(tmp_path / "decoy")
    shutil.copytree(trained_tied.out, d)
    path = os.path.join(d, "adapter_model.safetensors")
    save_file({"decoy": torch.zeros(2)}, path)
    r = invoke("rt-score", [trained_tied.prompts, "--model", d, "--device", "cpu", "-q"])
    assert r.exit_code == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"rt-score: {path}: not the weights of this adapter: the tensor "), r.stderr
    assert "trainable_tokens_delta is missing" in r.stderr
    # the right names, a tensor of another shape
    weights = load_file(os.path.join(trained_tied.out, "adapter_model.safetensors"))
    key = next(k for k in weights if "lora_A" in k)
    weights[key] = torch.zeros(3, 3)
    save_file(weights, path)
    r = invoke("rt-score", [trained_tied.prompts, "--model", d, "--device", "cpu", "-q"])
    assert r.exit_code == 1 and r.stderr.startswith(f"rt-score: {path}: not the weights of this adapter: ")
    assert "size mismatch" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


pytest_plugins = ["model_fixtures"]


@pytest.fixture
def no_long_rendering(monkeypatch):
    """Fails the test if a chat template renders (and so a tokenizer would encode) content of over 1 MB."""
    from rtools.model.chat import ChatEncoder

    render = ChatEncoder.render_with_spans

    def bounded(self, messages):
        assert all(len(m["content"]) < 1 << 20 for m in messages), "a megabyte prompt was rendered"
        return render(self, messages)

    monkeypatch.setattr(ChatEncoder, "render_with_spans", bounded)


@pytest.mark.parametrize("prog", ["rt-score", "rt-generate"])
def test_a_12mb_prompt_is_refused_before_it_is_tokenized(invoke, single, prog, no_long_rendering):
    """A 12 MB prompt took 3 GB and 16 s (80 s here) to tokenize before the context error: the
    work is now bounded by the context first (its characters against the longest token)."""
    huge = "word " * 2_400_000
    r = run(invoke, prog, single, [{"prompt": "hi"}, {"prompt": huge}])
    assert r.exit_code == 1, r.stderr
    assert r.stderr.startswith(f"{prog}: <stdin>:2: the prompt is at least "), r.stderr
    assert f"tokens ({len(huge)} characters), past the model's limit of " in r.stderr
    assert len(r.stdout.splitlines()) == 1


def test_truncate_drops_a_12mb_turn_without_tokenizing_it(invoke, single, no_long_rendering):
    huge = "word " * 2_400_000
    turns = [{"role": "user", "content": huge}, {"role": "assistant", "content": "ok"}]
    ask = {"role": "user", "content": "hi"}
    r = invoke(
        "rt-score",
        ["--device", "cpu", "--model", single, "--truncate", "left"],
        input=jsonl([{"messages": [*turns, ask]}]),
    )
    (o,) = records_of(r)
    alone = records_of(run(invoke, "rt-score", single, [{"prompt": "hi"}]))[0]
    assert o["p_refuse"] == pytest.approx(alone["p_refuse"], abs=1e-6)
    assert "dropped earlier turns from 1 prompt(s)" in r.stderr
    # the last user turn is never cut: alone too long, an error that says so, still unrendered
    r = invoke(
        "rt-score",
        ["-q", "--device", "cpu", "--model", single, "--truncate", "left"],
        input=jsonl([{"messages": [*turns, {"role": "user", "content": huge}]}]),
    )
    assert r.exit_code == 1 and "the last user turn alone is at least" in r.stderr, r.stderr
