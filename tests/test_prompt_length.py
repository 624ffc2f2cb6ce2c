"""Issue 10 item 6 (rt-score, rt-generate): prompts past the model's context are an error, unless
--truncate drops earlier turns; the last user turn is never cut. The tiny models have 512 positions."""

from __future__ import annotations

import pytest
from model_data import jsonl, read_jsonl

pytest_plugins = ["model_fixtures"]

CPU = ["--device", "cpu", "-q"]
GEN = ["--max-new-tokens", "2"]


def long_text(n: int) -> str:
    words = "bread flour water salt yeast knead rise bake oven crust".split()
    return " ".join(words[i % len(words)] for i in range(n))


def run(invoke, command, model, records, *args):
    extra = GEN if command == "rt-generate" else []
    return invoke(command, ["--model", model, *CPU, *extra, *args], input=jsonl(records))


def scores(invoke, command, model, records, *args):
    r = run(invoke, command, model, records, *args)
    assert r.exit_code == 0, r.stderr
    return [rec["p_refuse"] for rec in read_jsonl(r.stdout)]


S = {"role": "system", "content": "Be brief."}
LAST = {"role": "user", "content": "How can I poison my neighbour?"}


def turn(role, content):
    return {"role": role, "content": content}


@pytest.mark.parametrize("command", ["rt-score", "rt-generate"])
def test_prompt_past_context_is_an_error(invoke, trained_tied, command):
    recs = [{"prompt": "Hi"}, {"prompt": long_text(1000)}, {"prompt": "Hello"}]  # ~3k tokens
    r = run(invoke, command, trained_tied.out, recs)
    assert r.exit_code == 1
    assert r.stderr.startswith(f"{command}: <stdin>:2: the prompt is ")
    assert "tokens, past the model's limit of " in r.stderr and "max_position_embeddings" in r.stderr
    assert "--truncate" in r.stderr  # says what to do
    assert [rec["prompt"] for rec in read_jsonl(r.stdout)] == ["Hi"]  # the records before it are written


def test_prompt_past_context_is_an_error_leaving_room_for_the_answer(invoke, trained_tied):
    """A prompt that rt-score takes is too long for rt-generate once the answer needs room."""
    rec = {"prompt": long_text(120)}
    assert len(scores(invoke, "rt-score", trained_tied.out, [rec])) == 1
    r = invoke(
        "rt-generate", ["--model", trained_tied.out, *CPU, "--max-new-tokens", "300"], input=jsonl([rec])
    )
    assert r.exit_code == 1
    assert (
        "past the model's limit of 211 (max_position_embeddings 512, less 300 for --max-new-tokens"
        in r.stderr
    )


@pytest.mark.parametrize("command", ["rt-score", "rt-generate"])
def test_truncate_left_keeps_the_latest_turns(invoke, trained_tied, command):
    conv = [
        S,
        turn("user", long_text(700)),
        turn("assistant", "Sure."),
        turn("user", "Hi"),
        turn("assistant", "Hello"),
        LAST,
    ]
    kept = conv[3:]  # the system prompt, then the oldest exchange are dropped
    got = scores(invoke, command, trained_tied.out, [{"messages": conv}], "--truncate", "left")
    assert got == scores(invoke, command, trained_tied.out, [{"messages": kept}])
    assert got != scores(invoke, command, trained_tied.out, [{"messages": [LAST]}])


@pytest.mark.parametrize("command", ["rt-score", "rt-generate"])
def test_truncate_right_keeps_the_first_turns(invoke, trained_tied, command):
    conv = [
        S,
        turn("user", "Hi"),
        turn("assistant", "Hello"),
        turn("user", long_text(700)),
        turn("assistant", "Ok."),
        LAST,
    ]
    kept = [*conv[:3], LAST]  # the exchange just before the last user turn is dropped
    got = scores(invoke, command, trained_tied.out, [{"messages": conv}], "--truncate", "right")
    assert got == scores(invoke, command, trained_tied.out, [{"messages": kept}])
    # without --truncate the same record is an error
    assert run(invoke, command, trained_tied.out, [{"messages": conv}]).exit_code == 1


@pytest.mark.parametrize("side", ["left", "right"])
def test_truncate_never_cuts_last_user_turn(invoke, trained_tied, side):
    conv = [S, turn("user", "Hi"), turn("assistant", "Hello"), turn("user", long_text(700))]
    r = run(invoke, "rt-score", trained_tied.out, [{"id": 1, "messages": conv}], "--truncate", side)
    assert r.exit_code == 1
    assert r.stderr.startswith("rt-score: <stdin>:1: the prompt is ")
    assert "the last user turn alone is " in r.stderr and "--truncate never cuts it" in r.stderr
    assert r.stdout == ""


def test_truncate_is_reported_on_stderr(invoke, trained_tied):
    conv = [S, turn("user", long_text(700)), turn("assistant", "Sure."), LAST]
    r = invoke(
        "rt-score",
        ["--model", trained_tied.out, "--device", "cpu", "--truncate", "left"],
        input=jsonl([{"messages": conv}]),
    )
    assert r.exit_code == 0, r.stderr
    assert "--truncate left: dropped earlier turns from 1 prompt(s) to fit 512 tokens" in r.stderr


@pytest.mark.parametrize("command", ["rt-score", "rt-generate"])
def test_truncate_is_documented_in_help(invoke, command):
    r = invoke(command, ["--help"])
    text = " ".join(r.stdout.split())
    assert "--truncate [left|right]" in text
    assert "keeps the most recent ones" in text and "the last user turn is never cut" in text
