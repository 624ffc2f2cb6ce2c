"""One forward pass per prompt: the refusal-token probabilities at the first assistant position.

Prompts are encoded, sorted by length inside a bounded window of records, cut into batches under
a token budget (or a fixed batch size), left-padded with correct position ids, and run with logits
kept only at the last position. Results come back in input order. Probabilities are the softmax
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


def control_probabilities(
    model: Any,
    sequences: list[list[int]],
    control_ids: list[int],
    device: str = "cpu",
    pad_id: int = 0,
    batch_tokens: int = 8192,
    batch_size: int | None = None,
    max_batch: int = 64,
    temperature: float = 1.0,
) -> list[list[float]]:
    """For each token sequence: the full-softmax probability of each control token at its last position."""
    import torch

    results: list[list[float]] = [[] for _ in sequences]
    if not sequences:
        return results
    sel = torch.tensor(control_ids, device=device)
    _, head = decoder_and_head(model)
    lengths = [len(s) for s in sequences]
    with torch.inference_mode():
        for batch in plan_batches(lengths, batch_tokens, batch_size, max_batch):
            ids, mask = right_pad([sequences[j] for j in batch], pad_id)
            last = torch.tensor([[lengths[j] - 1] for j in batch])
            h = hidden_at(model, ids.to(device), mask.to(device), last.to(device))
            logits = head(h)[:, 0].float()
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
    batch_tokens: int = 8192
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
