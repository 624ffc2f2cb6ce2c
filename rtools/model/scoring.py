"""One forward pass per prompt: the refusal-token probabilities at the first assistant position.

Prompts are encoded, sorted by length inside a bounded window of records, cut into batches under
a token budget (or a fixed batch size), right-padded, and the vocabulary head is applied only at
each prompt's last real position. Results come back in input order. Probabilities are the softmax
over the full vocabulary, at temperature 1 unless asked.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ..tokens import CATEGORY, TokenMap
from .chat import ChatEncoder


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


def decoder_and_head(model: Any) -> tuple[Any, Any]:
    """The transformer body (returns normed hidden states) and the vocabulary head of a causal LM."""
    m = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = m.get_decoder() if hasattr(m, "get_decoder") else getattr(m, m.base_model_prefix)
    return decoder, m.get_output_embeddings()


def hidden_at(model: Any, ids: Any, mask: Any, positions: Any) -> Any:
    """Final hidden states at ``positions`` (B x K indices) of each row."""
    import torch

    decoder, _ = decoder_and_head(model)
    h = decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    idx = positions.unsqueeze(-1).expand(-1, -1, h.shape[-1])
    return torch.gather(h, 1, idx)


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


MIN_SHARED_PREFIX = 4
#: On CPU a batch holds at most this many tokens whatever the budget: activations that stay in the
#: caches measured 1.3-1.8x faster per prompt than batches of 8192 tokens (bench/bench_score.py --sweep).
CPU_BATCH_TOKENS = 1024  # the default budget on CPU (measured fastest here: bench/README.md)
GPU_BATCH_TOKENS = 8192


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


def _cache_kwarg(decoder: Any) -> str:
    """The name the decoder's forward takes a KV cache by (``cache`` in transformers 5.x)."""
    import inspect

    try:
        params = inspect.signature(decoder.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def _prefix_cache(decoder: Any, prefix: list[int], device: str) -> Any:
    """The KV cache of a shared prefix (one forward pass), or None when the decoder gives none to reuse."""
    import torch

    out = decoder(input_ids=torch.tensor([prefix], device=device), use_cache=True)
    cache = getattr(out, "cache", None)
    if cache is None:
        cache = getattr(out, "past_key_values", None)
    if cache is None or not hasattr(cache, "batch_repeat_interleave"):
        return None
    return cache


def control_probabilities(
    model: Any,
    sequences: list[list[int]],
    control_ids: list[int],
    device: str = "cpu",
    pad_id: int = 0,
    batch_tokens: int | None = None,
    batch_size: int | None = None,
    max_batch: int = 64,
    temperature: float = 1.0,
    share_prefix: bool = True,
) -> list[list[float]]:
    """For each token sequence: the full-softmax probability of each control token at its last position.

    A prefix that every sequence shares (the chat template's system turn: about half the tokens of a
    short prompt) is run once and its KV cache reused by every batch (``share_prefix``); the
    probabilities are the same as without it, to float rounding. The token budget defaults to
    ``CPU_BATCH_TOKENS`` on CPU and ``GPU_BATCH_TOKENS`` elsewhere (batch sizes never change the scores).
    """
    import copy

    import torch

    results: list[list[float]] = [[] for _ in sequences]
    if not sequences:
        return results
    sel = torch.tensor(control_ids, device=device)
    decoder, head = decoder_and_head(model)
    if batch_tokens is None:
        batch_tokens = CPU_BATCH_TOKENS if str(device) == "cpu" else GPU_BATCH_TOKENS
    with torch.inference_mode():
        P, cache = 0, None
        if share_prefix and len(sequences) > 1:
            P = shared_prefix(sequences)
            if P >= MIN_SHARED_PREFIX:
                cache = _prefix_cache(decoder, sequences[0][:P], device)
            if cache is None:
                P = 0
        cache_kw = _cache_kwarg(decoder)
        lengths = [len(s) - P for s in sequences]
        for batch in plan_batches(lengths, batch_tokens, batch_size, max_batch):
            ids, mask = right_pad([sequences[j][P:] for j in batch], pad_id)
            B, T = ids.shape
            last = torch.tensor([lengths[j] - 1 for j in batch], device=device)
            if cache is None:
                h = decoder(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
            else:
                c = copy.deepcopy(cache)  # the forward pass appends to it
                c.batch_repeat_interleave(B)
                mask = torch.cat([torch.ones((B, P), dtype=mask.dtype), mask], dim=1)
                pos = torch.arange(P, P + T, device=device).unsqueeze(0).expand(B, -1)
                h = decoder(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    position_ids=pos,
                    use_cache=True,
                    **{cache_kw: c},
                )
            h = h.last_hidden_state[torch.arange(B, device=device), last]
            logits = head(h).float()
            if temperature != 1.0:
                logits = logits / temperature
            p = torch.log_softmax(logits, dim=-1).index_select(1, sel).exp().cpu().tolist()
            for k, j in enumerate(batch):
                results[j] = p[k]
    return results


@dataclass
class Scorer:
    model: Any
    encoder: ChatEncoder
    token_map: TokenMap
    device: str = "cpu"
    batch_tokens: int | None = None
    batch_size: int | None = None
    max_batch: int = 64
    temperature: float = 1.0
    pad_id: int = 0

    def probabilities(self, sequences: list[list[int]]) -> list[list[float]]:
        """For each token sequence: the probability of each control token (token_map order)."""
        return control_probabilities(
            self.model,
            sequences,
            self.encoder.control_ids,
            self.device,
            self.pad_id,
            self.batch_tokens,
            self.batch_size,
            self.max_batch,
            self.temperature,
        )

    def fields(self, probs: list[float]) -> dict[str, Any]:
        """Record fields from control-token probabilities (token_map order: refusal tokens, respond)."""
        *ref, resp = probs
        d: dict[str, Any] = {"p_refuse": sum(ref), "p_respond": resp}
        if self.token_map.mode == CATEGORY:
            d["p_cat"] = dict(zip(self.token_map.categories, ref, strict=True))
        return d

    def score_messages(self, conversations: list[list[dict[str, str]]]) -> list[dict[str, Any]]:
        seqs = [self.encoder.encode_prompt(m) for m in conversations]
        return [self.fields(p) for p in self.probabilities(seqs)]


def windows(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    buf: list[Any] = []
    for it in items:
        buf.append(it)
        if len(buf) >= size:
            yield buf
            buf = []
    if buf:
        yield buf
