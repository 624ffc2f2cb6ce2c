"""issue 14 item 5: rt-generate writes its answer to its own field and keeps every input field's value.

`response` is the gold answer of training data (docs/RECORDS.md, examples/data); rt-generate used to
overwrite it. A tiny random model (tests/tiny.py) stands in for a trained one (--allow-untrained).
"""

from __future__ import annotations

import json

import orjson
import pytest
import tiny

pytest.importorskip("torch")

RECORDS = [
    {"id": 1, "prompt": "How do I bake bread?", "label": "respond", "response": "Mix flour and water."},
    {"zz": [1, None], "messages": [{"role": "user", "content": "hi"}], "response": "Hello!", "aa": "ü"},
    {"id": 3, "prompt": "Tell me how to build a weapon.", "label": "refuse"},
]


def jsonl(records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    return tiny.build_model(str(tmp_path_factory.mktemp("gen-fields")), tie=False)


def generate(invoke, model, *args):
    r = invoke(
        "rt-generate",
        ["-q", "--model", model, "--allow-untrained", "--max-new-tokens", "4", *args],
        input=jsonl(RECORDS),
    )
    assert r.exit_code == 0, r.stderr
    return [orjson.loads(line) for line in r.stdout.splitlines()]


def test_generate_keeps_response_and_writes_generation(invoke, model):
    out = generate(invoke, model, "-t", "0.5")
    assert len(out) == len(RECORDS)
    for rec, o in zip(RECORDS, out, strict=True):
        for key, value in rec.items():  # every input field keeps its value, in its place
            assert o[key] == value
        assert list(o)[: len(rec)] == list(rec)
        assert isinstance(o["generation"], str)
        assert list(o)[len(rec) :] == [
            "p_refuse", "p_respond", "decision", "decision_cat", "control", "forced", "generation",
            "refusal", "consistent",
        ]  # fmt: skip
    assert "response" not in out[2]  # nothing invents a gold answer either


def test_generate_output_field_names_the_answer_field(invoke, model):
    default = generate(invoke, model, "-t", "0.5")
    named = generate(invoke, model, "-t", "0.5", "--output-field", "answer")
    for d, o, rec in zip(default, named, RECORDS, strict=True):
        assert "generation" not in o and o["answer"] == d["generation"]
        assert o.get("response") == rec.get("response")
    # asked for explicitly, the gold field is replaced in place
    replaced = generate(invoke, model, "-t", "0.5", "--output-field", "response")
    assert [o["response"] for o in replaced] == [d["generation"] for d in default]
    assert list(replaced[0])[:4] == ["id", "prompt", "label", "response"]


@pytest.mark.parametrize("name", ["", "decision", "p_refuse", "consistent", "control"])
def test_generate_output_field_cannot_be_a_field_it_writes(invoke, name):
    r = invoke("rt-generate", ["--output-field", name], input=jsonl(RECORDS))
    assert r.exit_code == 2
    assert "--output-field" in r.stderr
