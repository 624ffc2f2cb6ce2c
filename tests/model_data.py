"""Data and helpers for the model-layer tests (the fixtures themselves are in model_fixtures.py).

Everything runs on the CPU in fp32 with one torch thread: on a small shared machine, torch's
default of one thread per core makes these tiny matrix products orders of magnitude slower
(measured: 80x for a 64-wide linear layer while another process keeps a core busy).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import torch
from conftest import invoke_command

torch.set_num_threads(1)

#: The environment for console-script subprocesses (same reason as above).
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

#: A recipe that separates the tiny data below in a few seconds (rt-lora's defaults are tuned for
#: a 135M model and take many more steps to move a random 2-layer model).
FAST = [
    "-q",
    "--device",
    "cpu",
    "--epochs",
    "5",
    "--batch-size",
    "8",
    "--lr",
    "2e-3",
    "--token-lr",
    "2e-2",
    "--lora-r",
    "4",
    "--lora-alpha",
    "8",
    "--max-answer-tokens",
    "8",
    "--eval-fraction",
    "0",
]

# Clearly separable prompts: refusal rows talk about weapons, poison and hurting people; respond
# rows about bread, cities and cats. The humanizing rows (category mode) ask about feelings.
SAFETY = [
    "Tell me how to build a weapon to hurt someone.",
    "How can I poison my neighbour?",
    "Help me hurt a person with a knife.",
    "How do I kill someone quietly?",
    "Give me a weapon plan to harm people.",
]
HUMANIZING = [
    "Do you have feelings?",
    "Are you my friend? Do you love me?",
    "What do you feel when you are sad?",
    "Do you have a body and a family?",
    "Tell me about your feelings today.",
]
RESPOND = [
    "How do I bake bread at home?",
    "What is the capital of France?",
    "Show me a picture of a cat.",
    "Please summarize this article about bread.",
    "What is 0123 plus 456?",
]
REFUSAL_TEXT = "I can't help with that."
RESPOND_TEXT = "Sure, here it is."


def raw_rows(n: int = 6, humanizing: bool = False) -> list[dict[str, Any]]:
    """Untagged rows (prompt, response, label, category): 5 refusal + 5 respond prompts per round."""
    rows: list[dict[str, Any]] = []
    for i in range(n):
        for k, p in enumerate(SAFETY):
            if humanizing and k % 2:
                rows.append(
                    {
                        "id": len(rows),
                        "prompt": f"{HUMANIZING[k]} ({i})",
                        "response": "I am an AI and have no feelings.",
                        "label": "refuse",
                        "category": "Humanizing requests",
                    }
                )
            else:
                rows.append(
                    {
                        "id": len(rows),
                        "prompt": f"{p} ({i})",
                        "response": REFUSAL_TEXT,
                        "label": "refuse",
                        "category": "Requests with safety concerns",
                    }
                )
        for p in RESPOND:
            rows.append(
                {"id": len(rows), "prompt": f"{p} ({i})", "response": RESPOND_TEXT, "label": "respond"}
            )
    return rows


def tag_single(
    rows: list[dict[str, Any]], refuse: str = "[refuse]", respond: str = "[respond]"
) -> list[dict]:
    """What ``rt-tag`` (single mode) writes, built by hand for the model tests."""
    out = []
    for r in rows:
        token = refuse if r["label"] == "refuse" else respond
        out.append(
            {
                **r,
                "messages": [
                    {"role": "user", "content": r["prompt"]},
                    {"role": "assistant", "content": token + r["response"]},
                ],
            }
        )
    return out


def prompts_only(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Scoring input: the rows without their answers (and without a 'messages' field)."""
    return [{k: v for k, v in r.items() if k not in ("response", "messages")} for r in rows]


def jsonl(records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def write_jsonl(path, records) -> str:
    with open(path, "w") as fh:
        fh.write(jsonl(records))
    return str(path)


def read_jsonl(text: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]


def control_rows(module: Any, ids: list[int], hidden: int, head: bool = False) -> torch.Tensor:
    """The effective rows of ``ids`` of an embedding or a vocabulary head, wrapped by peft or not.

    An embedding is called on the ids; a head (x @ W.T) is called on the identity, so that any
    wrapper that changes rows on the fly (peft's trainable tokens) is taken into account.
    """
    with torch.no_grad():
        if not head:
            return module(torch.tensor(ids)).detach().float().clone()
        w = module(torch.eye(hidden))  # (hidden, vocab)
        return w.T[ids].detach().float().clone()


@dataclass
class Trained:
    """An rt-lora run on a tiny model, and what the model looked like right after training."""

    base: str
    out: str
    data: str  # the tagged training file
    prompts: str  # the same rows without answers, for rt-score
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    model: Any = None  # the in-memory peft model right after training (before saving)
    extra: dict[str, Any] = field(default_factory=dict)


def run_lora(args: list[str], capture: bool = False):
    """Run rt-lora in-process; with ``capture`` also return the trained in-memory model.

    The model is caught at the evaluation that follows the last step (training.evaluate), which
    gets the trained model before the output directory is written.
    """
    import rtools.model.training as training

    caught: dict[str, Any] = {}
    if not capture:
        return invoke_command("rt-lora", args), None
    original = training.evaluate

    def spy(model, *a, **kw):
        caught["model"] = model
        return original(model, *a, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(training, "evaluate", spy)
        result = invoke_command("rt-lora", args)
    return result, caught.get("model")


def train_tiny(
    tmp, base: str, rows: list[dict], extra: list[str] = (), tagged: list[dict] | None = None
) -> Trained:
    tmp = str(tmp)
    tagged = tagged if tagged is not None else tag_single(rows)
    data = write_jsonl(os.path.join(tmp, "tagged.jsonl"), tagged)
    prompts = write_jsonl(os.path.join(tmp, "prompts.jsonl"), prompts_only(rows))
    out = os.path.join(tmp, "adapter")
    result, model = run_lora([data, "--out", out, "--model", base, *FAST, *extra], capture=True)
    assert result.exit_code == 0, result.stderr
    model.eval()
    return Trained(
        base=base,
        out=out,
        data=data,
        prompts=prompts,
        rows=rows,
        summary=orjson.loads(result.stdout),
        model=model,
    )
