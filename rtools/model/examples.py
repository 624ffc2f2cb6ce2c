"""rt-lora's training data: tagged records as token ids with their loss span, the held-out split,
the class balance, and the deterministic batches and step schedule of every epoch.

Nothing here touches a model or torch: an :class:`Example` is plain token ids, so that the data a
run trained on can be fingerprinted (:func:`data_fingerprint`, compared on ``--resume``) and the
batches of any epoch recomputed from the seed alone (:func:`epoch_batches`), which is what makes a
resumed run continue exactly where the interrupted one stopped.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from typing import Any

import orjson

from ..records import RecordError
from ..tokens import TokenMap, category_token
from .chat import ChatEncoder, record_messages


@dataclass
class Example:
    ids: list[int]
    labels_from: int  # index of the control token; loss on ids[labels_from:]
    label: str  # refuse / respond
    control: int  # index into token_map.tokens()
    line: int
    weight: float = 1.0
    keep: list[float] | None = None  # the initial rows' decision over the control tokens (keep_weight)


def numbered(records: Any) -> list[tuple[int, dict[str, Any]]]:
    """``(line, record)`` pairs from records or pairs (a record's line: its position from 1)."""
    return [item if isinstance(item, tuple) else (n, item) for n, item in enumerate(records, 1)]


def infer_token_map(records: list[tuple[int, dict[str, Any]]]) -> TokenMap:
    """The token map implied by tagged data: category mode if any answer starts with [refuse:slug]."""
    slugs: list[str] = []
    for _, r in records:
        msgs = r.get("messages")
        if isinstance(msgs, list) and msgs and isinstance(msgs[-1], dict):
            c = msgs[-1].get("content")
            if isinstance(c, str) and c.startswith("[refuse:"):
                slug = c[len("[refuse:") :].split("]", 1)[0]
                if slug and slug not in slugs:
                    slugs.append(slug)
    if slugs:
        return TokenMap.category(slugs=slugs, tokens={s: category_token(s) for s in slugs})
    return TokenMap.single()


def build_examples(
    records: list[tuple[int, dict[str, Any]]],
    encoder: ChatEncoder,
    token_map: TokenMap,
    name: str,
    max_answer_tokens: int | None,
    max_length: int,
) -> tuple[list[Example], list[int]]:
    """Tagged chat records -> token ids with the loss span. Returns (examples, lines skipped as too long).

    An example longer than ``max_length`` keeps its whole prompt and its control token, and loses the
    tail of its answer. One whose prompt, control token and first answer token do not fit is never
    cut (cutting the prompt would change the request; cutting the control token would train nothing):
    it is skipped, and its line is returned so that the caller reports it.
    """
    tokens = token_map.tokens()
    n_ref = len(tokens) - 1
    out: list[Example] = []
    skipped: list[int] = []
    for line, r in records:
        msgs = r.get("messages")
        if not isinstance(msgs, list) or len(msgs) < 2:
            raise RecordError(
                "expected 'messages' ending with a tagged assistant answer (run rt-tag first)", name, line
            )
        last = msgs[-1]
        if (
            not isinstance(last, dict)
            or last.get("role") != "assistant"
            or not isinstance(last.get("content"), str)
        ):
            raise RecordError(
                "the last message must be the assistant answer {role: assistant, content}", name, line
            )
        content = last["content"]
        control = next((i for i, t in enumerate(tokens) if content.startswith(t)), None)
        if control is None:
            raise RecordError(
                f"the assistant answer does not start with a control token ({', '.join(tokens)})",
                name,
                line,
                hint="tag the data with rt-tag, or pass the token map rt-tag wrote",
            )
        answer = content[len(tokens[control]) :]
        prompt = record_messages({"messages": msgs[:-1]}, name, line)
        p_ids = encoder.encode_prompt(prompt, name, line)
        # counted as encode_answer encodes it: record text, after the control token
        truncated = (
            max_answer_tokens is not None
            and len(encoder.encode_content(answer, start=False)) > max_answer_tokens
        )
        a_ids = encoder.encode_answer(answer, max_tokens=max_answer_tokens, close=not truncated)
        ids = p_ids + [encoder.control_ids[control]] + a_ids
        if len(ids) > max_length:
            if len(p_ids) + 2 > max_length:
                skipped.append(line)
                continue
            ids = ids[:max_length]
        label = "refuse" if control < n_ref else "respond"
        out.append(Example(ids=ids, labels_from=len(p_ids), label=label, control=control, line=line))
    return out, skipped


def split_eval(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Hold out a stratified (by label) slice for evaluation."""
    if fraction <= 0:
        return examples, []
    rng = random.Random(seed + 7919)
    train, held = [], []
    for label in ("refuse", "respond"):
        group = [e for e in examples if e.label == label]
        rng.shuffle(group)
        k = int(round(len(group) * fraction))
        if len(group) >= 2:
            k = max(1, min(k, len(group) - 1))
        else:
            k = 0
        held += group[:k]
        train += group[k:]
    train.sort(key=lambda e: e.line)
    held.sort(key=lambda e: e.line)
    return train, held


def apply_balance(examples: list[Example]) -> None:
    """Weight the examples so that the refusal rows and the respond rows count equally."""
    n = len(examples)
    counts = {lab: sum(e.label == lab for e in examples) for lab in ("refuse", "respond")}
    present = [lab for lab, c in counts.items() if c]
    for e in examples:
        e.weight = n / (len(present) * counts[e.label])


def data_fingerprint(train_ex: list[Example], eval_ex: list[Example]) -> str:
    """sha256 of the examples actually used (token ids, loss span, control token; training and held-out)."""
    h = hashlib.sha256()
    for part in (train_ex, eval_ex):
        h.update(orjson.dumps([[e.ids, e.labels_from, e.control] for e in part]))
        h.update(b"|")
    return h.hexdigest()


def epoch_batches(examples: list[Example], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Deterministic length-bucketed batches for one epoch (same seed and epoch -> same batches)."""
    rng = random.Random(seed * 1000003 + epoch)
    idx = list(range(len(examples)))
    rng.shuffle(idx)
    chunk = batch_size * 16
    batches: list[list[int]] = []
    for s in range(0, len(idx), chunk):
        group = sorted(idx[s : s + chunk], key=lambda i: len(examples[i].ids))
        batches += [group[k : k + batch_size] for k in range(0, len(group), batch_size)]
    rng.shuffle(batches)
    return batches


@dataclass(frozen=True)
class Schedule:
    """A run's steps over its batches: ``global_batch`` examples a batch (all processes together),
    ``per_epoch`` batches an epoch, ``grad_accum`` batches an optimizer step (the last step of an
    epoch takes what is left), ``total`` steps, ``warmup`` of them warming up, a checkpoint every
    ``save_every``."""

    global_batch: int
    per_epoch: int
    grad_accum: int
    total: int
    warmup: int
    save_every: int

    @classmethod
    def plan(cls, config: Any, n_examples: int, world_size: int) -> Schedule:
        """The schedule of ``n_examples`` on ``world_size`` processes as ``config`` (a TrainConfig:
        its batch_size, grad_accum, epochs, max_steps, warmup, save_every) asks."""
        global_batch = config.batch_size * world_size
        per_epoch = math.ceil(n_examples / global_batch)
        steps_per_epoch = math.ceil(per_epoch / config.grad_accum)
        if config.max_steps is not None:  # 0: no step (rt-lora --init-rows probe --max-steps 0)
            total = config.max_steps
        else:
            total = max(1, math.ceil(steps_per_epoch * config.epochs))
        return cls(
            global_batch=global_batch,
            per_epoch=per_epoch,
            grad_accum=config.grad_accum,
            total=total,
            warmup=int(total * config.warmup),
            save_every=config.save_every or max(1, total // 10),
        )

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.per_epoch / self.grad_accum)

    def step_at(self, epoch: int, batch_in_epoch: int) -> int:
        """The optimizer steps done when ``batch_in_epoch`` batches of epoch ``epoch`` are."""
        return epoch * self.steps_per_epoch + math.ceil(batch_in_epoch / self.grad_accum)
