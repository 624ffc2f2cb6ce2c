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

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..metrics import auroc
from .batching import decoder_and_head, plan_batches, right_pad

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


def prompt_features(
    model: Any, sequences: Sequence[Sequence[int]], device: str, pad_id: int, batch_tokens: int = 2048
) -> tuple[Any, Any]:
    """(h, log Z_vocab) at the last position of each sequence, in fp32 on the CPU, the model frozen."""
    import torch

    decoder, head = decoder_and_head(model)
    hs: list[Any] = [None] * len(sequences)
    log_z: list[Any] = [None] * len(sequences)
    with torch.inference_mode():
        for batch in plan_batches([len(s) for s in sequences], batch_tokens):
            ids, mask = right_pad([list(sequences[i]) for i in batch], pad_id)
            out = decoder(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
            h = out.last_hidden_state[torch.arange(len(batch), device=device), (mask.sum(1) - 1).to(device)]
            z = torch.logsumexp(head(h).float(), -1)
            for k, i in enumerate(batch):
                hs[i] = h[k].float().cpu()
                log_z[i] = z[k].cpu()
    return torch.stack(hs), torch.stack(log_z)


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
