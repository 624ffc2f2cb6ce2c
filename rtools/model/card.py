"""The model card (README.md) of an rt-lora output directory.

Written by rt-lora inside the output's temporary directory, after rtools_config.json and the
training log, so that it is renamed into place with the rest (never half-written). It replaces the
empty template peft writes, and says what a reader of the directory needs: the base model (where
it was and what it is), the data (file, sha256, record counts), the recipe and the training log's
final numbers. Nothing heavy is imported here.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from typing import Any

import orjson

from ..records import atomic_write_bytes
from ..tokens import TokenMap
from .identity import summary as identity_summary
from .loading import CONFIG_FILE

CARD_FILE = "README.md"
LOG_FILE = "train_log.jsonl"  # rt-lora's training log (rtools.model.adapter writes it)

#: The recipe settings shown in the card, in this order (all of them are in rtools_config.json).
RECIPE = (
    ("epochs", "epochs"),
    ("max_steps", "max steps"),
    ("batch_size", "batch size"),
    ("grad_accum", "gradient accumulation"),
    ("lr", "learning rate (LoRA)"),
    ("token_lr", "learning rate (control-token rows)"),
    ("weight_decay", "weight decay"),
    ("warmup", "warm-up fraction"),
    ("lora_r", "LoRA rank"),
    ("lora_alpha", "LoRA alpha"),
    ("lora_dropout", "LoRA dropout"),
    ("target_modules", "target modules"),
    ("control_weight", "control-token loss weight"),
    ("decision_weight", "decision loss weight"),
    ("balance", "class balance"),
    ("max_answer_tokens", "answer tokens trained"),
    ("max_length", "max length"),
    ("eval_fraction", "held-out fraction"),
    ("seed", "seed"),
    ("dtype", "dtype"),
    ("load_4bit", "4-bit base (QLoRA)"),
    ("gradient_checkpointing", "gradient checkpointing"),
    ("device", "device"),
)


def data_digest(name: str, records: list[tuple[int, dict[str, Any]]]) -> tuple[str, str]:
    """(sha256, what it is of): the data file's bytes when ``name`` is a regular file, else the
    records as read (standard input), one compact JSON line each."""
    if name and name not in ("-", "<stdin>") and os.path.isfile(name):
        h = hashlib.sha256()
        with open(name, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest(), "of the file"
    h = hashlib.sha256()
    for _, rec in records:
        h.update(orjson.dumps(rec, option=orjson.OPT_APPEND_NEWLINE))
    return h.hexdigest(), "of the records as read, one compact JSON line each (standard input)"


def control_counts(records: list[tuple[int, dict[str, Any]]], token_map: TokenMap) -> Counter:
    """Records per control token (the token that starts the last assistant turn)."""
    counts: Counter = Counter()
    tokens = sorted(token_map.tokens(), key=len, reverse=True)
    for _, rec in records:
        msgs = rec.get("messages")
        answer = ""
        if isinstance(msgs, list):
            for m in reversed(msgs):
                if isinstance(m, dict) and m.get("role") == "assistant":
                    answer = m.get("content") if isinstance(m.get("content"), str) else ""
                    break
        counts[next((t for t in tokens if answer.startswith(t)), "(none)")] += 1
    return counts


def _read_log(directory: str) -> list[dict[str, Any]]:
    path = os.path.join(directory, LOG_FILE)
    if not os.path.isfile(path):
        return []
    with open(path, "rb") as fh:
        return [orjson.loads(line) for line in fh if line.strip()]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return "–" if value is None else str(value)


def render(directory: str, name: str, records: list[tuple[int, dict[str, Any]]]) -> str:
    """The card's text, from the directory's rtools_config.json and training log."""
    with open(os.path.join(directory, CONFIG_FILE), "rb") as fh:
        config = orjson.loads(fh.read())
    training = config.get("training") or {}
    summary = config.get("summary") or {}
    identity = config.get("base_identity") or {}
    token_map = TokenMap.from_dict(config["token_map"])
    sha, of = data_digest(name, records)
    counts = control_counts(records, token_map)
    log = _read_log(directory)
    steps = [e for e in log if "loss" in e]
    evals = [e for e in log if any(k.startswith("eval_") for k in e)]
    base = config.get("base_model")
    lines = [
        "---",
        "library_name: peft",
        f"base_model: {orjson.dumps(base).decode()}",
        "tags: [rtools, refusal-tokens, lora]",
        "---",
        "",
        "# Refusal-token adapter",
        "",
        f"A LoRA adapter trained by rt-lora (rtools {config.get('rtools_version')}): the first assistant "
        "token is a control token, and the probability of the refusal token(s) there is the refusal score "
        "(Jain et al., arXiv 2412.06748). This directory is all `rt-score` and `rt-generate` need:",
        "",
        "```sh",
        "rt-score prompts.jsonl --model THIS_DIRECTORY > scored.jsonl",
        "rt-score prompts.jsonl --model THIS_DIRECTORY --base BASE_DIRECTORY  # the base has moved",
        "```",
        "",
        "## Base model",
        "",
        f"- trained on: `{base}`",
        f"- identity: {identity_summary(identity) if identity else '(not recorded)'}",
        "- if the base model moves, pass its new place with `--base DIR` (or `RT_BASE_MODEL`); a "
        "different base model is refused (`base_identity` in rtools_config.json)",
        "",
        "## Control tokens",
        "",
        f"- mode: {token_map.mode}",
        f"- tokens: {', '.join(f'`{t}`' for t in token_map.tokens())} (the token map is rtools_tokens.json)",
        "",
        "## Data",
        "",
        f"- file: `{name}`",
        f"- sha256: `{sha}` ({of})",
        f"- records: {len(records)}; by control token: "
        + ", ".join(f"`{t}` {counts[t]}" for t in [*token_map.tokens(), "(none)"] if counts[t]),
        f"- training examples: {summary.get('examples')}, held out for evaluation: "
        f"{summary.get('eval_examples')}, skipped as longer than max length: {summary.get('skipped_too_long')}",
        "",
        "## Recipe",
        "",
        "| setting | value |",
        "|---|---|",
        *(f"| {label} | {_fmt(training.get(key))} |" for key, label in RECIPE if key in training),
        "",
        "The full configuration is `training` in rtools_config.json; every step is in train_log.jsonl.",
        "",
        "## Training log",
        "",
    ]
    if steps:
        last = steps[-1]
        lines.append(
            f"- final step {last.get('step')} (epoch {_fmt(last.get('epoch'))}): "
            + ", ".join(f"{k} {_fmt(v)}" for k, v in last.items() if k.startswith("loss"))
        )
        lines.append(
            f"- optimizer steps: {summary.get('steps')}, tokens/s: {_fmt(summary.get('tokens_per_s'))}"
        )
    else:
        lines.append("- no training steps")
    if evals:
        last_eval = evals[-1]
        lines.append(
            "- held-out evaluation: "
            + ", ".join(f"{k} {_fmt(v)}" for k, v in last_eval.items() if k.startswith("eval_"))
        )
    else:
        lines.append("- held-out evaluation: none (no rows held out: --eval-fraction 0)")
    return "\n".join(lines) + "\n"


def write_model_card(directory: str, name: str, records: list[tuple[int, dict[str, Any]]]) -> None:
    """Write README.md into ``directory`` (an rt-lora output being built), replacing peft's template."""
    atomic_write_bytes(os.path.join(directory, CARD_FILE), render(directory, name, records).encode())
