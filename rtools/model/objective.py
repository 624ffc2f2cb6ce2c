"""rt-lora's loss as one ``nn.Module``: the whole computation inside ``forward``.

:class:`DecisionLoss` holds the peft model and computes, per example,

    answer_loss + control_weight * CE(control token) + decision_weight * CE(restricted)

(see rtools.model.training), weighted by the examples' balance weights. Everything that touches
the model (the embedding with its trainable control-token rows, the decoder, the vocabulary head
applied on the assistant span only) runs inside ``forward``, so that a data-parallel wrapper
(DDP, FSDP) that wraps this module sees every parameter use and reduces every gradient.
:func:`collate` turns examples into the tensors ``forward`` takes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .batching import decoder_and_head, right_pad
from .precision import is_mixed


def collate(examples: Sequence[Any], pad_id: int, device: Any = "cpu") -> dict[str, Any]:
    """The inputs of :meth:`DecisionLoss.forward` for a batch of training examples.

    ``positions``/``targets``/``span``: the positions predicting the control token and every answer
    token ([labels_from - 1, len - 1)) and the tokens they predict; ``control``: the index of each
    example's control token; ``weight``: its balance weight.
    """
    B = len(examples)
    ids, mask = right_pad([e.ids for e in examples], pad_id)
    K = max(len(e.ids) - e.labels_from for e in examples)
    pos = torch.zeros((B, K), dtype=torch.long)
    tgt = torch.zeros((B, K), dtype=torch.long)
    span = torch.zeros((B, K), dtype=torch.bool)
    for k, e in enumerate(examples):
        n = len(e.ids) - e.labels_from
        pos[k, :n] = torch.arange(e.labels_from - 1, len(e.ids) - 1)
        tgt[k, :n] = torch.tensor(e.ids[e.labels_from :])
        span[k, :n] = True
    batch = {
        "input_ids": ids,
        "attention_mask": mask,
        "positions": pos,
        "targets": tgt,
        "span": span,
        "control": torch.tensor([e.control for e in examples], dtype=torch.long),
        "weight": torch.tensor([e.weight for e in examples]),
    }
    return {k: v.to(device) for k, v in batch.items()}


class DecisionLoss(torch.nn.Module):
    """The training objective around a (peft) causal LM. ``forward(**collate(...))`` returns
    ``(loss, parts)``: the weighted loss and, detached, the batch means of its three parts
    (assistant, control, decision) as a tensor of 3.

    With ``total_weight`` and ``total_count`` (the weight and size of the global batch this batch is
    one rank's shard of) it returns the shard's share instead: ``sum(w * loss) / total_weight`` and
    the parts' sums over ``total_count``, which the ranks' shares add up to.
    """

    def __init__(
        self, model: Any, control_ids: Sequence[int], control_weight: float, decision_weight: float
    ) -> None:
        super().__init__()
        self.model = model
        self.register_buffer(
            "control_ids", torch.tensor(list(control_ids), dtype=torch.long), persistent=False
        )
        self.control_weight = control_weight
        self.decision_weight = decision_weight

    def forward(
        self,
        input_ids: Any,
        attention_mask: Any,
        positions: Any,
        targets: Any,
        span: Any,
        control: Any,
        weight: Any,
        total_weight: float | None = None,
        total_count: int | None = None,
    ) -> tuple[Any, Any]:
        from .training import fast_embed, fast_head

        model = self.model
        B, K = targets.shape
        decoder, head = decoder_and_head(model)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=input_ids.device.type == "cuda"):
            h = decoder(
                inputs_embeds=fast_embed(model, input_ids), attention_mask=attention_mask, use_cache=False
            ).last_hidden_state
            # the vocabulary head runs only on the assistant span (control token + answer)
            h = torch.gather(h, 1, positions.unsqueeze(-1).expand(-1, -1, h.shape[-1]))
            logits = fast_head(head, h, bf16=is_mixed(model))
        logits = logits.float()
        V = logits.shape[-1]
        ce = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), reduction="none").view(B, K)
        ce = torch.where(span, ce, torch.zeros_like(ce))
        rows = torch.arange(B, device=ce.device)
        ctrl_at = torch.zeros(B, dtype=torch.long, device=ce.device)
        assistant = ce.sum(1) / span.sum(1)  # mean over control token + answer (plain SFT)
        ctrl = ce[rows, ctrl_at]
        sel = logits[rows, ctrl_at].index_select(-1, self.control_ids.to(logits.device))
        dec = F.cross_entropy(sel, control.to(sel.device), reduction="none")
        w = weight.to(ce.device)
        per_ex = assistant + self.control_weight * ctrl + self.decision_weight * dec
        if total_weight is None:
            loss = (w * per_ex).sum() / w.sum()
            parts = torch.stack([assistant.mean(), ctrl.mean(), dec.mean()]).detach()
            return loss, parts
        # this rank's share of a global batch (rtools.model.distributed): normalised by the global
        # batch's weight and size, so that the ranks' shares add up to the global batch's loss; an
        # example of weight 0 (a rank's filler when the batch is shorter than the world) adds nothing
        real = (w > 0).to(per_ex.dtype)
        loss = (w * per_ex).sum() / total_weight
        parts = torch.stack([(assistant * real).sum(), (ctrl * real).sum(), (dec * real).sum()])
        return loss, (parts / total_count).detach()


PARTS = ("assistant", "control", "decision")
