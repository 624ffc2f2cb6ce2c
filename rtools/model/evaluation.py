"""rt-lora's held-out evaluation, after the last step: the loss on the held-out examples, and the
decision as rt-score would make it (AUROC of p(refusal tokens), and how often each class refuses).

The decision is scored with the inference code path (rtools.model.scoring.control_probabilities:
rt-score's batching, the last prompt position), not with the training forward, so that the numbers
in the summary are the numbers rt-score will give. Importing this module imports no torch.
"""

from __future__ import annotations

from typing import Any

from .distributed import gathered_root
from .scoring import control_probabilities


def evaluate(
    model: Any,
    examples: list[Any],
    control_ids: Any,
    config: Any,
    pad_id: int,
    device: str,
    batch_size: int,
    objective: Any = None,
) -> dict[str, float]:
    """Held-out loss, and the decision's AUROC from p(refusal tokens) at the control position.
    ``examples``: the held-out Examples (rtools.model.examples); none gives ``{}``."""
    import torch

    from .objective import batch_loss  # torch at import: loaded when a run evaluates, not by rt-lora --help

    if not examples:
        return {}
    model.eval()
    losses, wsum, scores, gold = 0.0, 0.0, [], []
    n_ref = len(control_ids) - 1
    with torch.no_grad():
        for s in range(0, len(examples), batch_size):
            batch = list(range(s, min(len(examples), s + batch_size)))
            loss, _, _ = batch_loss(model, examples, batch, control_ids, config, pad_id, device, objective)
            w = sum(examples[i].weight for i in batch)
            losses += float(loss) * w
            wsum += w
    with gathered_root(objective):  # under FSDP the model is called here, not through the objective
        probs = control_probabilities(
            model,
            [e.ids[: e.labels_from] for e in examples],
            control_ids.tolist(),
            device=device,
            pad_id=pad_id,
        )
    for e, p in zip(examples, probs, strict=True):
        scores.append(sum(p[:n_ref]))
        gold.append(1 if e.label == "refuse" else 0)
    model.train()
    out = {"eval_loss": losses / max(wsum, 1e-12)}
    from ..metrics import auroc  # scikit-learn's, the one AUROC of rtools (imported when needed: heavy)

    auc = auroc(gold, scores)
    if auc is not None:
        out["eval_auroc"] = auc
    out["eval_refusal_rate_refuse"] = _mean([s >= 0.5 for s, g in zip(scores, gold, strict=True) if g == 1])
    out["eval_refusal_rate_respond"] = _mean([s >= 0.5 for s, g in zip(scores, gold, strict=True) if g == 0])
    return {k: v for k, v in out.items() if v is not None}


def _mean(xs: list[bool]) -> float | None:
    return sum(xs) / len(xs) if xs else None
