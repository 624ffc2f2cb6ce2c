"""rt-lora's loss as one ``nn.Module``: the whole computation inside ``forward``.

:class:`DecisionLoss` holds the peft model and computes, per example,

    answer_loss + control_weight * CE(control token) + decision_weight * CE(restricted)

(see rtools.model.training), weighted by the examples' balance weights. Everything that touches
the model (the embedding with its trainable control-token rows, the decoder, the vocabulary head
applied on the assistant span only) runs inside ``forward``, so that a data-parallel wrapper
(DDP, FSDP) that wraps this module sees every parameter use and reduces every gradient.
:func:`collate` turns examples into the tensors ``forward`` takes; :func:`batch_loss` is one
batch's loss from its examples.

The embedding and the head are computed here by two kernels (:func:`fast_embed`, :func:`fast_head`)
rather than through peft's trainable-token wrappers: the same values, but only the few control-token
rows carry a gradient, instead of a dense gradient for the whole vocabulary table on every step.
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
    if all(e.keep is not None for e in examples):  # the initial decision, kept by keep_weight
        batch["keep"] = torch.tensor([e.keep for e in examples], dtype=torch.float32)
    return {k: v.to(device) for k, v in batch.items()}


# ---------------------------------------------------------------------------
# The embedding and the head, with the trainable control-token rows of peft's wrappers


def _token_adapter(module: Any) -> Any:
    """peft's trainable-token layer inside a wrapper, when it is active, unmerged and simple."""
    adapter = getattr(module, "token_adapter", None)
    if adapter is None or getattr(adapter, "merged", False) or getattr(adapter, "disable_adapters", False):
        return None
    names = adapter.active_adapters
    if len(names) != 1 or names[0] not in adapter.trainable_tokens_delta:
        return None
    base = adapter.get_base_layer()
    if getattr(base, "bias", None) is not None or hasattr(base, "embed_scale"):
        return None
    return adapter, names[0]


def fast_embed(model: Any, ids: Any) -> Any:
    """Input embeddings: the frozen table, with the trainable control-token rows put in place.

    Same values as peft's wrapper, which rebuilds the whole table and makes a dense gradient for it
    on every step; here only the few control-token rows carry a gradient.
    """
    emb = model.get_input_embeddings()
    found = _token_adapter(emb)
    if found is None:
        return emb(ids)
    adapter, name = found
    out = F.embedding(ids, adapter.get_base_layer().weight)
    rows = adapter.trainable_tokens_delta[name]
    for j, tid in enumerate(adapter.token_indices[name]):
        out = torch.where((ids == tid).unsqueeze(-1), rows[j].to(out.dtype), out)
    return out


def _bf16_copy(layer: Any) -> Any:
    """A bf16 copy of a frozen layer's weight, made once and kept on the layer."""
    W = layer.weight
    cached = getattr(layer, "_rtools_bf16_weight", None)
    if cached is None or cached[0] != (W.data_ptr(), W._version):
        cached = ((W.data_ptr(), W._version), W.detach().to(torch.bfloat16))
        layer._rtools_bf16_weight = cached
    return cached[1]


def fast_head(head: Any, h: Any, bf16: bool = False) -> Any:
    """Vocabulary logits: a matmul with the frozen head, then the control-token columns from their rows.

    Same values as peft's wrapper, without the full-vocabulary weight gradient it computes. With
    ``bf16`` (mixed precision on CPU) the frozen head's product runs in bf16 (a copy of its
    weight); the control-token columns, whose logits the decision is made of, stay fp32.
    """
    found = _token_adapter(head)
    if found is None:
        return head(h)
    adapter, name = found
    base = adapter.get_base_layer()
    if bf16 and h.dtype == torch.float32:
        logits = F.linear(h.to(torch.bfloat16), _bf16_copy(base)).float()
    else:
        logits = F.linear(h, base.weight)
    rows = adapter.trainable_tokens_delta[name]
    cols = F.linear(h, rows.to(h.dtype))
    idx = torch.tensor(adapter.token_indices[name], device=logits.device)
    return logits.index_copy(-1, idx, cols.to(logits.dtype))


class DecisionLoss(torch.nn.Module):
    """The training objective around a (peft) causal LM. ``forward(**collate(...))`` returns
    ``(loss, parts)``: the weighted loss and, detached, the batch means of its three parts
    (assistant, control, decision) as a tensor of 3.

    With ``total_weight`` and ``total_count`` (the weight and size of the global batch this batch is
    one rank's shard of) it returns the shard's share instead: ``sum(w * loss) / total_weight`` and
    the parts' sums over ``total_count``, which the ranks' shares add up to.
    """

    def __init__(
        self,
        model: Any,
        control_ids: Sequence[int],
        control_weight: float,
        decision_weight: float,
        answer_weight: float = 1.0,
        keep_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.model = model
        self.register_buffer(
            "control_ids", torch.tensor(list(control_ids), dtype=torch.long), persistent=False
        )
        self.control_weight = control_weight
        self.decision_weight = decision_weight
        self.answer_weight = answer_weight
        self.keep_weight = keep_weight

    def forward(
        self,
        input_ids: Any,
        attention_mask: Any,
        positions: Any,
        targets: Any,
        span: Any,
        control: Any,
        weight: Any,
        keep: Any = None,
        total_weight: float | None = None,
        total_count: int | None = None,
    ) -> tuple[Any, Any]:
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
        per_ex = self.answer_weight * assistant + self.control_weight * ctrl + self.decision_weight * dec
        if self.keep_weight and keep is not None:
            # KL(initial decision || this decision) over the control tokens: the probe's decision,
            # which holds out of distribution, moves only where the labels pay for it
            kl = F.kl_div(F.log_softmax(sel, -1), keep.to(sel.device), reduction="none").sum(-1)
            per_ex = per_ex + self.keep_weight * kl
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


def batch_loss(
    model: Any,
    examples: Sequence[Any],
    batch: list[int],
    control_ids: Any,
    config: Any,
    pad_id: int,
    device: str,
    objective: Any = None,
    totals: tuple[float, int] | None = None,
) -> tuple[Any, dict[str, float], int]:
    """Weighted loss of one batch (the examples ``batch`` indexes). Returns (loss, parts, tokens).

    ``objective``: the DecisionLoss around ``model`` (made here, with ``config``'s
    ``control_weight`` and ``decision_weight``, when not given; rt-lora's training makes one and
    calls it for every batch), or the DDP wrapper around it. ``totals``: (weight, size) of the
    global batch when ``batch`` is one rank's shard of it (see DecisionLoss).
    """
    if objective is None:
        objective = DecisionLoss(
            model,
            control_ids.tolist() if hasattr(control_ids, "tolist") else control_ids,
            config.control_weight,
            config.decision_weight,
            getattr(config, "answer_weight", 1.0),
            getattr(config, "keep_weight", 0.0),
        )
    inputs = collate([examples[i] for i in batch], pad_id, device)
    if totals is None:
        loss, parts = objective(**inputs)
    else:
        loss, parts = objective(**inputs, total_weight=totals[0], total_count=totals[1])
    return loss, dict(zip(PARTS, parts.tolist(), strict=True)), int(inputs["attention_mask"].sum())
