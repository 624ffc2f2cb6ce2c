"""The control tokens' rows, started where a probe of the frozen base model is (``rt-lora --init-rows probe``).

With the body frozen, a refusal-token model is a linear read-out of one vector: the final hidden state
h (after the final norm) at the first assistant position. Control token c gets the logit r_c . h and
the full-vocabulary softmax gives it p_c = exp(r_c . h) / (Z_vocab(h) + sum_c' exp(r_c' . h)). So
training the control rows alone *is* fitting a multinomial logistic probe on h, without an intercept,
with the vocabulary's mass Z_vocab(h) as one more "class" that is never the answer. This module fits
that probe directly (full-batch L-BFGS on the rows, the L2 strength chosen by cross-validated AUROC
of p_refuse on the training rows alone) and then adds one common vector u to every row, along the mean
hidden state, long enough that the control tokens hold the first position's mass: a common vector
leaves the decision between the control tokens as the probe made it, since it adds the same logit to
each. Training then starts from the probe's decision rather than from rt-lora's initial rows (the
mean embedding row: the same logit for every control token, a decision of chance).

Why: fine-tuned with LoRA from the mean row, a refusal token learned the training *sources* and lost
what the frozen model already separates out of distribution (0.15-0.18 AUROC under the frozen probe
on held-out families; examples/broad/README.md). Starting at the probe keeps that separation in the
rows from the first step.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..metrics import auroc
from .batching import decoder_and_head, plan_batches, right_pad
from .cache import cache_dir

#: L2 strengths tried (on features scaled to unit root-mean-square per dimension), by cross-validation
L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
#: what the vocabulary may keep of the first position's mass after the lift, on 99% of the rows
LEAK = 0.01


@dataclass
class ProbeRows:
    """Rows for the control tokens (token-map order: refusal tokens, then respond) and how they were
    chosen: the L2 strength, its cross-validated AUROC, the lift's length."""

    rows: Any  # torch tensor, controls x hidden
    l2: float
    cv_auroc: float | None
    lift: float

    def info(self) -> dict[str, Any]:
        return {"l2": self.l2, "cv_auroc": self.cv_auroc, "lift": round(self.lift, 4)}


class FeatureStore:
    """The frozen base's (h, log Z_vocab) of prompts already seen, kept in the rtools cache
    (``features/<key>.sqlite``, one file per base model identity and dtype), so that training again on
    overlapping data (a sweep, leave-one-family-out, ``--resume``) runs no prompt through the base
    twice. Rows are keyed by the sha256 of the prompt's token ids; a file that cannot be read is a
    cache miss, never an error."""

    def __init__(self, key: str):
        import sqlite3

        path = cache_dir("features", hashlib.sha256(key.encode()).hexdigest()[:32] + ".sqlite")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.db = sqlite3.connect(path, timeout=60)
        self.db.execute("CREATE TABLE IF NOT EXISTS f (k TEXT PRIMARY KEY, h BLOB, z REAL)")

    @staticmethod
    def key_of(ids: Sequence[int]) -> str:
        return hashlib.sha256(struct.pack(f"<{len(ids)}q", *ids)).hexdigest()

    def get(self, keys: list[str]) -> dict[str, tuple[bytes, float]]:
        out: dict[str, tuple[bytes, float]] = {}
        for i in range(0, len(keys), 500):
            part = keys[i : i + 500]
            rows = self.db.execute(f"SELECT k, h, z FROM f WHERE k IN ({','.join('?' * len(part))})", part)
            out.update({k: (h, z) for k, h, z in rows})
        return out

    def put(self, items: list[tuple[str, bytes, float]]) -> None:
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO f VALUES (?, ?, ?)", items)


def prompt_features(
    model: Any,
    sequences: Sequence[Sequence[int]],
    device: str,
    pad_id: int,
    exclude: Sequence[int] = (),
    store: FeatureStore | None = None,
    batch_tokens: int = 2048,
    report: Callable[[str], None] | None = None,
    every: float = 30.0,
) -> tuple[Any, Any]:
    """(h, log Z_vocab) at the last position of each sequence, in fp32 on the CPU, the model frozen:
    Z_vocab over the vocabulary less the ids ``exclude`` (the control tokens, whose rows are being
    chosen). With a ``store``, prompts it holds are not run again, and new ones are added to it.
    ``report`` gets a line saying how many come from the store, then one every ``every`` seconds
    while prompts run (a long silent gap looks like a hang)."""
    import torch

    keys = [FeatureStore.key_of(s) for s in sequences]
    known = store.get(sorted(set(keys))) if store is not None else {}
    todo = sorted({k: i for i, k in enumerate(keys) if k not in known}.values())
    say = report or (lambda line: None)
    if store is not None:
        say(f"{len(keys) - len(todo)} of {len(keys)} prompts from the feature cache, {len(todo)} to run")
    new: dict[str, tuple[Any, Any]] = {}
    if todo:
        decoder, head = decoder_and_head(model)
    started = last = time.monotonic()
    with torch.inference_mode():
        for batch in plan_batches([len(sequences[i]) for i in todo], batch_tokens):
            now = time.monotonic()
            if now - last >= every and new:
                rate = len(new) / (now - started)
                say(
                    f"{len(new)}/{len(todo)} prompts run ({rate:.1f}/s, ETA {(len(todo) - len(new)) / rate:.0f}s)"
                )
                last = now
            rows = [todo[j] for j in batch]
            ids, mask = right_pad([list(sequences[i]) for i in rows], pad_id)
            out = decoder(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
            h = out.last_hidden_state[torch.arange(len(rows), device=device), (mask.sum(1) - 1).to(device)]
            logits = head(h).float()
            if exclude:
                logits[:, list(exclude)] = float("-inf")
            z = torch.logsumexp(logits, -1)
            for k, i in enumerate(rows):
                new[keys[i]] = (h[k].float().cpu(), float(z[k]))
    if store is not None and new:
        store.put([(k, h.numpy().tobytes(), z) for k, (h, z) in new.items()])
    hs, zs = [], []
    for k in keys:
        if k in new:
            h, z = new[k]
        else:
            blob, z = known[k]
            h = torch.frombuffer(bytearray(blob), dtype=torch.float32)
        hs.append(h)
        zs.append(z)
    return torch.stack(hs), torch.tensor(zs, dtype=torch.float32)


def _fit(x: Any, y: Any, w: Any, n_classes: int, l2: float, iters: int = 200) -> Any:
    """Multinomial logistic regression without intercept: minimise the weighted mean cross-entropy
    plus l2 * ||W||^2 (features scaled); returns W (classes x dim)."""
    import torch

    W = torch.zeros(n_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([W], lr=1.0, max_iter=iters, history_size=20, line_search_fn="strong_wolfe")
    total = w.sum()

    def closure() -> Any:
        opt.zero_grad()
        ce = torch.nn.functional.cross_entropy(x @ W.T, y, reduction="none")
        loss = (w * ce).sum() / total + l2 * (W * W).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return W.detach()


def _p_refuse(x: Any, W: Any, respond: int) -> Any:
    p = (x @ W.T).softmax(-1)
    return 1.0 - p[:, respond]


def fit_probe_rows(
    h: Any,
    log_z: Any,
    classes: Sequence[int],
    weights: Sequence[float],
    n_controls: int,
    seed: int = 0,
    folds: int = 5,
) -> ProbeRows:
    """Control rows from a probe of ``h`` (n x dim): ``classes`` index the control tokens (the last one
    is respond), ``weights`` are the rows' training weights (rt-lora's class balance). A control
    token no row trains keeps a row that is never chosen."""
    import torch

    x = h.double()
    scale = x.pow(2).mean(0).sqrt().clamp_min(1e-6)  # no centring: a token row has no intercept
    xs = x / scale
    y = torch.tensor(list(classes))
    w = torch.tensor(list(weights), dtype=torch.float64)
    respond = n_controls - 1
    refuse = (y != respond).long()
    present = sorted(set(y.tolist()))
    best: tuple[float, float] = (-1.0, L2_GRID[0])
    if refuse.min() != refuse.max() and len(y) >= 2 * folds:
        g = torch.Generator().manual_seed(seed)
        fold = torch.empty(len(y), dtype=torch.long)
        for label in (0, 1):  # folds stratified by refuse / respond
            idx = torch.nonzero(refuse == label)[:, 0]
            idx = idx[torch.randperm(len(idx), generator=g)]
            fold[idx] = torch.arange(len(idx)) % folds
        for l2 in L2_GRID:
            scores = torch.zeros(len(y), dtype=torch.float64)
            for k in range(folds):
                tr, te = fold != k, fold == k
                W = _fit(xs[tr], y[tr], w[tr], n_controls, l2)
                scores[te] = _p_refuse(xs[te], W, respond)
            a = auroc(refuse.tolist(), scores.tolist())
            if a is not None and a > best[0]:
                best = (a, l2)
    cv_auroc = best[0] if best[0] >= 0 else None
    W = _fit(xs, y, w, n_controls, best[1], iters=500) / scale  # back to raw h
    logits = x @ W.T
    absent = [c for c in range(n_controls) if c not in present]
    # the lift: a common vector u along the mean hidden state, so that the control tokens hold the
    # first position (Z_vocab <= LEAK of the mass) on 99% of the rows
    mu = x.mean(0)
    u = mu / mu.norm()
    proj = (x @ u).clamp_min(1e-6)
    lse = torch.logsumexp(logits[:, present], -1)
    need = (log_z.double() + math.log((1 - LEAK) / LEAK) - lse) / proj
    alpha = max(float(torch.quantile(need, 0.99)), 0.0)
    rows = W + alpha * u
    if absent:  # 20 logits under the lowest present token on every row
        drop = 20.0 / float(proj.min())
        rows[absent] = rows[present].mean(0) - drop * u
    return ProbeRows(rows=rows.float(), l2=best[1], cv_auroc=cv_auroc, lift=alpha)


def set_control_rows(model: Any, control_ids: Sequence[int], rows: Any) -> None:
    """Write ``rows`` into the control tokens' output rows (with tied embeddings, one tensor with their
    input rows; untied input rows keep their initialisation: they steer the answer, not the decision)."""
    import torch

    head = model.get_output_embeddings()
    idx = torch.tensor(list(control_ids), device=head.weight.device)
    with torch.no_grad():
        head.weight[idx] = rows.to(head.weight.device, head.weight.dtype)
