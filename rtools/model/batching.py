"""What every forward pass of rtools shares: padded batches, the model's body and head, the KV cache's
name, and the control-token log-probabilities.

rt-score (scoring), rt-generate (generation), rt-lora's loss (objective) and its held-out evaluation
all batch token sequences the same way and read the same first assistant position; the pieces they
share live here, so that none of them imports another for a helper. torch is imported inside the
functions, so that importing this module stays light.
"""

from __future__ import annotations

from typing import Any


def right_pad(sequences: list[list[int]], pad_id: int) -> tuple[Any, Any]:
    """Right-padded ids and attention mask.

    Right padding keeps every query row attending to at least one real key (left padding makes
    fully masked rows, which some fused attention kernels on GPU turn into NaN), and the real
    positions see exactly what they would see unpadded.
    """
    import torch

    T = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), T), dtype=torch.long)
    for k, s in enumerate(sequences):
        ids[k, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[k, : len(s)] = 1
    return ids, mask


def shared_prefix(sequences: list[list[int]]) -> int:
    """Length of the token prefix every sequence starts with, leaving each at least one token of its own."""
    first = sequences[0]
    n = min(len(s) for s in sequences) - 1
    for s in sequences[1:]:
        if n <= 0:
            return 0
        k = 0
        while k < n and s[k] == first[k]:
            k += 1
        n = k
    return max(0, n)


def plan_batches(
    lengths: list[int], batch_tokens: int, batch_size: int | None = None, max_batch: int = 64
) -> list[list[int]]:
    """Indices grouped into length-sorted batches under a token budget (or of a fixed size)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    out: list[list[int]] = []
    i = 0
    while i < len(order):
        bs = batch_size or max(1, min(max_batch, batch_tokens // max(1, lengths[order[i]])))
        out.append(order[i : i + bs])
        i += bs
    return out


def base_model(model: Any) -> Any:
    """The transformers model under a peft wrapper (the model itself when it has none)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_and_head(model: Any) -> tuple[Any, Any]:
    """The transformer body (returns normed hidden states) and the vocabulary head of a causal LM."""
    m = base_model(model)
    decoder = m.get_decoder() if hasattr(m, "get_decoder") else getattr(m, m.base_model_prefix)
    return decoder, m.get_output_embeddings()


def cache_kwarg(decoder: Any) -> str:
    """The name the decoder's forward takes a KV cache by (``cache`` in transformers 5.x)."""
    import inspect

    try:
        params = inspect.signature(decoder.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def output_cache(out: Any) -> Any:
    """The KV cache a forward pass returned (``cache`` in transformers 5.x), or None."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def control_logprobs(head: Any, hidden: Any, control_ids: Any, temperature: float = 1.0) -> Any:
    """Log-probabilities of the control tokens (``control_ids``, a tensor of token ids) at the
    positions whose final hidden states are ``hidden`` (B x d): the softmax over the full
    vocabulary (in fp32, at ``temperature``), then the control tokens' columns. rt-score's
    probabilities and rt-generate's choice are both this number."""
    import torch

    logits = head(hidden).float()
    if temperature != 1.0:
        logits = logits / temperature
    return torch.log_softmax(logits, dim=-1).index_select(1, control_ids)
