"""rt-generate --plain: the model's own answer, no control token (self-distilled training answers).

The reference is transformers' own ``generate`` on the untouched base model, one prompt at a time
(no padding), greedy: rt-generate --plain on the same base (which gets untrained control tokens
added, never generated) must give the same text for every prompt, in batches of mixed lengths.
"""

from __future__ import annotations

import json

import orjson
import pytest
import tiny

torch = pytest.importorskip("torch")

PROMPTS = [
    "hi",
    "How do I bake bread at home? Mix flour, water, salt and yeast, then knead it well.",
    "What is the capital of France?",
    "Do you have feelings?",
    "Show me a picture of a cat, please, a big one with stripes and long whiskers.",
]
NEW = 12


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> str:
    return tiny.build_model(str(tmp_path_factory.mktemp("plain-raw")), tie=False, seed=5)


def reference(directory: str, prompt: str) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rtools.model.generation import end_ids

    tok = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    text = tok.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )
    ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=NEW,
            do_sample=False,
            eos_token_id=sorted(end_ids(model, tok)),  # the end-of-turn tokens rt-generate stops at
            pad_token_id=0,
        )
    answer = out[0, ids.shape[1] :].tolist()
    ends = end_ids(model, tok)
    answer = answer[: next((i for i, t in enumerate(answer) if t in ends), len(answer))]
    return tok.decode(answer, skip_special_tokens=True).strip()


def test_plain_answers_are_the_models_own(invoke, tmp_path, raw):
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "id": i}) + "\n" for i, p in enumerate(PROMPTS)))
    r = invoke(
        "rt-generate",
        [str(data), "--model", raw, "--plain", "--max-new-tokens", str(NEW), "--batch-size", "3",
         "--device", "cpu", "--dtype", "fp32", "--stop", "\x00never", "-q"],
    )  # fmt: skip
    assert r.exit_code == 0, r.stderr
    recs = [orjson.loads(x) for x in r.stdout.splitlines()]
    assert [x["id"] for x in recs] == list(range(len(PROMPTS)))
    # only the answer is written: no scores, no decision, no control token
    assert all(set(x) == {"prompt", "id", "generation"} for x in recs), recs[0]
    want = [reference(raw, p) for p in PROMPTS]
    assert [x["generation"] for x in recs] == want
    assert any(w for w in want)  # a random tiny model still says something


def test_plain_with_a_rule_is_a_usage_error(invoke, tmp_path, raw):
    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps({"prompt": "hi"}) + "\n")
    r = invoke("rt-generate", [str(data), "--model", raw, "--plain", "--threshold", "0.5", "-q"])
    assert r.exit_code == 2
    assert "--plain" in r.stderr and "forces no control token" in r.stderr, r.stderr
