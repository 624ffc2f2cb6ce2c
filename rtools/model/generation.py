"""Answers after a forced control token, scored and started from one prefill.

The paper's code runs the prompt twice: a forward pass for the control-token probabilities, then
``generate`` on the prompt plus the chosen token. Here one forward pass over the prompt gives both
the logits at the first assistant position (the control-token probabilities, exactly as rt-score
computes them) and the KV cache; the chosen control token is then appended *by id* and the answer
is decoded from that cache.

Batches are right-padded, like rt-score: every query row attends to at least one real key, so no
fully masked row can turn into NaN on GPU. Decoding then appends each new token after the padded
block, with the padding slots masked out of the 2-D attention mask and explicit position ids
(``len(prompt) + step``), so every row sees exactly what it would see unpadded. (This suits
attention models; a model with recurrent layers would see the padding in its state.)

Greedy decoding (temperature 0) is the default. Sampling uses one random generator per prompt,
seeded from ``--seed`` and the prompt's position in the input, so a sampled answer does not
depend on the batch it was generated in.

Choosing the control token (:class:`ControlChooser`) is plain Python built on the decision
rules of :mod:`rtools.thresholds`; torch is imported only inside the functions that need it.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..records import RecordError
from ..thresholds import REFUSE, RESPOND, Thresholds, argmax_slug, own_choice, own_choice_category
from ..tokens import CATEGORY, TokenMap
from .chat import ChatEncoder
from .scoring import decoder_and_head, plan_batches, right_pad

# ---------------------------------------------------------------------------
# Choosing the control token (pure Python).


def parse_logit_bias(text: str) -> tuple[str, float]:
    """``TOKEN=B`` -> (token, B); ValueError when malformed. B must be a finite number."""
    token, sep, value = text.rpartition("=")
    token = token.strip()
    if not sep or not token:
        raise ValueError(f"expected TOKEN=B (e.g. '[refuse]=2.0'), got {text!r}")
    try:
        bias = float(value)
    except ValueError:
        raise ValueError(f"bias for {token!r} is not a number: {value!r}") from None
    if not math.isfinite(bias):
        raise ValueError(f"bias for {token!r} must be finite, got {value!r}")
    return token, bias


def record_decision(
    record: Mapping[str, Any], token_map: TokenMap, name: str | None = None, line: int | None = None
) -> tuple[str, str | None] | None:
    """A record's own ``decision``/``decision_cat`` checked against the token map; None if absent.

    In single mode ``decision_cat`` is ignored. In category mode a refusal names its category, or
    leaves it null for the model's most likely category.
    """
    decision = record.get("decision")
    if decision is None:
        return None
    if decision not in (REFUSE, RESPOND):
        raise RecordError(
            f'decision must be "refuse" or "respond", got {decision!r}',
            path=name,
            line=line,
            hint="or give --threshold/--cat/--thresholds/--logit-bias to decide anew",
        )
    if decision == RESPOND or token_map.mode != CATEGORY:
        return decision, None
    cat = record.get("decision_cat")
    if cat is None:
        return REFUSE, None
    if not isinstance(cat, str) or cat not in token_map.categories:
        raise RecordError(
            f"decision_cat {cat!r} is not a category of this model (it has: {', '.join(token_map.categories)})",
            path=name,
            line=line,
        )
    return REFUSE, cat


@dataclass
class Choice:
    """The control token chosen for one prompt, and why."""

    decision: str
    decision_cat: str | None
    index: int  # into token_map.tokens()
    token: str
    forced: bool


@dataclass
class ControlChooser:
    """Which control token to force, in this order of precedence:

    1. ``rule`` (``--threshold``/``--cat``/``--thresholds``) on the model's own probabilities;
    2. ``bias`` (``--logit-bias``): the model's own choice after adding B to a token's logit;
    3. the record's own ``decision``/``decision_cat`` (e.g. from rt-threshold);
    4. the model's own choice (the most likely control token), which is the only unforced case.

    ``rule`` must already be resolved to the model's category slugs (``Thresholds.resolve``).
    """

    token_map: TokenMap
    rule: Thresholds | None = None
    bias: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        tokens = self.token_map.tokens()
        unknown = [t for t in self.bias if t not in tokens]
        if unknown:
            raise ValueError(
                f"--logit-bias: {', '.join(map(repr, unknown))} "
                f"{'is not a control token' if len(unknown) == 1 else 'are not control tokens'} "
                f"of this model (it has: {' '.join(tokens)})"
            )
        if self.rule is not None and self.rule.mode == "own":
            self.rule = None

    def fields(self, probs: Sequence[float]) -> dict[str, Any]:
        """``p_refuse``/``p_respond``/``p_cat`` from control-token probabilities (token_map order)."""
        *ref, resp = probs
        d: dict[str, Any] = {"p_refuse": sum(ref), "p_respond": resp}
        if self.token_map.mode == CATEGORY:
            d["p_cat"] = dict(zip(self.token_map.categories, ref, strict=True))
        return d

    def index_of(self, decision: str, slug: str | None) -> int:
        if decision == RESPOND:
            return len(self.token_map.tokens()) - 1
        if self.token_map.mode != CATEGORY:
            return 0
        return list(self.token_map.categories).index(slug)  # type: ignore[arg-type]

    def choose(
        self,
        fields: Mapping[str, Any],
        logprobs: Sequence[float],
        recorded: tuple[str, str | None] | None = None,
    ) -> Choice:
        """The choice for one prompt from its score fields and control-token log-probabilities."""
        cat_mode = self.token_map.mode == CATEGORY
        forced = True
        if self.rule is not None:
            decision, slug = self.rule.decide(fields)
        elif self.bias:
            tokens = self.token_map.tokens()
            biased = [lp + self.bias.get(t, 0.0) for lp, t in zip(logprobs, tokens, strict=True)]
            if cat_mode:
                decision, slug = own_choice_category(
                    dict(zip(self.token_map.categories, biased[:-1], strict=True)), biased[-1]
                )
            else:
                decision, slug = own_choice(biased[0], biased[1])
        elif recorded is not None:
            decision, slug = recorded
            if decision == REFUSE and cat_mode and slug is None:
                slug = argmax_slug(fields["p_cat"])
        else:
            forced = False
            if cat_mode:
                decision, slug = own_choice_category(fields["p_cat"], fields["p_respond"])
            else:
                decision, slug = own_choice(fields["p_refuse"], fields["p_respond"])
        if not cat_mode:
            slug = None
        index = self.index_of(decision, slug)
        return Choice(decision, slug, index, self.token_map.tokens()[index], forced)


# ---------------------------------------------------------------------------
# Generation (torch).


@dataclass
class Sampling:
    """How answers are decoded. ``max_new_tokens`` counts answer tokens, not the control token."""

    max_new_tokens: int = 128
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # benchmarks: always decode max_new_tokens


@dataclass
class Generation:
    """One prompt's result: its control-token probabilities, the forced token and the answer."""

    prompt_ids: list[int]
    probs: list[float]  # control tokens, token_map order, full-vocabulary softmax at temperature 1
    logprobs: list[float]
    control_index: int
    control_id: int
    answer_ids: list[int]  # after the control token; end-of-turn token excluded
    text: str  # special tokens skipped, cut at the first stop string, whitespace stripped
    stopped: str  # "eos", "stop" or "length"

    @property
    def ids(self) -> list[int]:
        """The whole sequence: prompt, control token, answer."""
        return [*self.prompt_ids, self.control_id, *self.answer_ids]


def _cache_kwarg(decoder: Any) -> str:
    """The name the decoder's forward takes the KV cache by (``cache`` in transformers 5.x)."""
    try:
        params = inspect.signature(decoder.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def _output_cache(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """Text up to the first occurrence of any stop string; whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def _sample(logits: Any, temperature: float, top_p: float, generators: list[Any]) -> Any:
    """One token per row: greedy at temperature 0, else top-p sampling with each row's generator."""
    import torch

    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(dim=-1) - sorted_p > top_p  # keep the smallest set reaching top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
    return torch.cat([torch.multinomial(probs[r], 1, generator=g) for r, g in enumerate(generators)]).to(
        logits.device
    )


def end_ids(model: Any, tokenizer: Any, encoder: ChatEncoder | None = None) -> set[int]:
    """Token ids that end an answer: eos of the tokenizer and generation config, and the end of turn."""
    ids: set[int] = set()
    for value in (
        getattr(tokenizer, "eos_token_id", None),
        getattr(getattr(model, "generation_config", None), "eos_token_id", None),
    ):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(v for v in value if isinstance(v, int))
    if encoder is not None and encoder._suffix.strip():
        suffix = encoder.encode_text(encoder._suffix.strip())
        if len(suffix) == 1:
            ids.add(suffix[0])
    return ids


def prefill_chunks(lengths: Sequence[int], slack: float = 1.25) -> list[list[int]]:
    """Rows of one batch grouped for the prefill so that padding stays small.

    Rows are taken longest first; a group grows while its padded size (rows x longest) stays within
    ``slack`` x its real tokens. One long prompt then no longer pads a whole batch to its length.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    for i in order:
        if groups:
            g = groups[-1]
            longest = lengths[g[0]]
            if (len(g) + 1) * longest <= slack * (sum(lengths[j] for j in g) + lengths[i]):
                g.append(i)
                continue
        groups.append([i])
    return groups


def _plain_layers(cache: Any) -> list[Any] | None:
    """The cache's layers when every one is a plain growing key/value layer, else None."""
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:  # pragma: no cover
        return None
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):
        return None
    return list(layers)


def _merge_caches(parts: list[tuple[list[int], Any]], batch: int, length: int) -> Any:
    """One right-padded cache of ``batch`` rows and ``length`` slots from the caches of row groups."""
    import torch

    cache = parts[0][1]
    layers = _plain_layers(cache)
    assert layers is not None
    others = [(rows, _plain_layers(c)) for rows, c in parts]
    for i, layer in enumerate(layers):
        for attr in ("keys", "values"):
            first = getattr(layer, attr)
            merged = first.new_zeros((batch, first.shape[1], length, first.shape[3]))
            for rows, lays in others:
                t = getattr(lays[i], attr)  # type: ignore[index]
                merged[torch.tensor(rows, device=t.device), :, : t.shape[2]] = t
            setattr(layer, attr, merged)
    return cache


@dataclass
class Generator:
    """Scores each prompt and generates its answer after the chosen control token.

    ``choose(j, probs, logprobs) -> token index`` is called once per prompt ``j`` (its position in
    the list given to :meth:`generate`) with the control-token probabilities and log-probabilities
    in token_map order, and returns which control token to force.
    """

    model: Any
    encoder: ChatEncoder
    device: str = "cpu"
    pad_id: int = 0
    eos_ids: set[int] = field(default_factory=set)
    batch_size: int = 16
    #: padded / real tokens allowed in one prefill forward (see :func:`prefill_chunks`)
    prefill_slack: float = 1.25

    def generate(
        self,
        sequences: list[list[int]],
        choose: Callable[[int, list[float], list[float]], int],
        sampling: Sampling,
        seeds: list[int] | None = None,
    ) -> list[Generation]:
        """Generate for every token sequence; results in input order.

        ``seeds`` (one per sequence) seed the sampling generators; default: the positions.
        """
        results: list[Generation | None] = [None] * len(sequences)
        if not sequences:
            return []
        seeds = list(range(len(sequences))) if seeds is None else seeds
        lengths = [len(s) for s in sequences]
        for batch in plan_batches(lengths, 0, self.batch_size):
            out = self._batch(
                [sequences[j] for j in batch], batch, choose, sampling, [seeds[j] for j in batch]
            )
            for j, g in zip(batch, out, strict=True):
                results[j] = g
        return results  # type: ignore[return-value]

    def _batch(
        self,
        seqs: list[list[int]],
        positions: list[int],
        choose: Callable[[int, list[float], list[float]], int],
        sampling: Sampling,
        seeds: list[int],
    ) -> list[Generation]:
        import torch

        dev = self.device
        decoder, head = decoder_and_head(self.model)
        cache_kw = _cache_kwarg(decoder)
        control_ids = self.encoder.control_ids
        sel = torch.tensor(control_ids, device=dev)
        B = len(seqs)
        lengths = torch.tensor([len(s) for s in seqs], device=dev)
        ids, mask = right_pad(seqs, self.pad_id)
        mask = mask.to(dev)

        with torch.inference_mode():
            # the prefill: control-token probabilities and the cache from one forward pass per prompt
            last, cache = self._prefill(decoder, seqs, ids, mask, lengths)
            logp = torch.log_softmax(head(last).float(), dim=-1).index_select(1, sel)
            logprobs = logp.cpu().tolist()
            probs = logp.exp().cpu().tolist()
            chosen = [choose(j, probs[k], logprobs[k]) for k, j in enumerate(positions)]
            forced = torch.tensor([control_ids[c] for c in chosen], device=dev)

            answers: list[list[int]] = [[] for _ in range(B)]
            stopped = ["length"] * B
            texts: list[str | None] = [None] * B
            generators: list[Any] = []
            if sampling.temperature > 0:
                for s in seeds:
                    g = torch.Generator(device=dev)
                    g.manual_seed((sampling.seed * 1_000_003 + s) & 0x7FFF_FFFF_FFFF_FFFF)
                    generators.append(g)
            eos = set() if sampling.ignore_eos else self.eos_ids
            live = list(range(B))  # rows still decoding, in cache order
            next_ids = forced
            next_pos = lengths.clone()
            mask = torch.cat([mask, torch.ones((B, 1), dtype=mask.dtype, device=dev)], dim=1)
            for _step in range(sampling.max_new_tokens):
                out = decoder(
                    input_ids=next_ids.unsqueeze(1),
                    attention_mask=mask,
                    position_ids=next_pos.unsqueeze(1),
                    use_cache=True,
                    **{cache_kw: cache},
                )
                cache = _output_cache(out)
                logits = head(out.last_hidden_state[:, -1]).float()
                gens = [generators[r] for r in live] if generators else []
                tokens = _sample(logits, sampling.temperature, sampling.top_p, gens)
                keep: list[int] = []
                for k, (r, t) in enumerate(zip(live, tokens.tolist(), strict=True)):
                    if t in eos:
                        stopped[r] = "eos"
                        continue
                    answers[r].append(t)
                    if sampling.stop:
                        text, hit = cut_at_stop(self._decode(answers[r]), sampling.stop)
                        if hit:
                            stopped[r], texts[r] = "stop", text
                            continue
                    keep.append(k)
                if not keep:
                    break
                if len(keep) < len(live):
                    idx = torch.tensor(keep, device=dev)
                    cache.reorder_cache(idx)
                    tokens, mask, next_pos = tokens[idx], mask[idx], next_pos[idx]
                    live = [live[k] for k in keep]
                next_ids = tokens
                next_pos = next_pos + 1
                mask = torch.cat([mask, torch.ones((len(live), 1), dtype=mask.dtype, device=dev)], dim=1)
        results = []
        for k in range(B):
            text = texts[k] if texts[k] is not None else self._decode(answers[k])
            if sampling.stop and texts[k] is None:
                text = cut_at_stop(text, sampling.stop)[0]
            results.append(
                Generation(
                    prompt_ids=list(seqs[k]),
                    probs=probs[k],
                    logprobs=logprobs[k],
                    control_index=chosen[k],
                    control_id=control_ids[chosen[k]],
                    answer_ids=answers[k],
                    text=text.strip(),
                    stopped=stopped[k],
                )
            )
        return results

    def _prefill(
        self, decoder: Any, seqs: list[list[int]], ids: Any, mask: Any, lengths: Any
    ) -> tuple[Any, Any]:
        """Hidden states at each prompt's last position and a right-padded cache for the batch.

        Rows of very different lengths are run in groups (:func:`prefill_chunks`) and their caches
        merged, when the model's cache is made of plain key/value layers; else one forward pass.
        """
        import torch

        dev = self.device
        B, T = ids.shape
        groups = prefill_chunks([len(s) for s in seqs], self.prefill_slack)
        parts: list[tuple[list[int], Any]] = []
        last = None
        for rows in groups if len(groups) > 1 else [list(range(B))]:
            sub_len = max(len(seqs[r]) for r in rows)
            sub_ids = ids[rows, :sub_len].to(dev)
            sub_mask = mask[rows, :sub_len]
            pos = torch.arange(sub_len, device=dev).unsqueeze(0).expand(len(rows), -1)
            out = decoder(input_ids=sub_ids, attention_mask=sub_mask, position_ids=pos, use_cache=True)
            cache = _output_cache(out)
            if len(groups) > 1 and _plain_layers(cache) is None:
                self.prefill_slack = math.inf  # e.g. sliding-window layers: prefill whole batches
                return self._prefill(decoder, seqs, ids, mask, lengths)
            h = out.last_hidden_state[torch.arange(len(rows), device=dev), lengths[rows] - 1]
            if last is None:
                last = h.new_empty((B, h.shape[-1]))
            last[torch.tensor(rows, device=dev)] = h
            parts.append((rows, cache))
        cache = parts[0][1] if len(parts) == 1 else _merge_caches(parts, B, T)
        return last, cache

    def _decode(self, ids: list[int]) -> str:
        return self.encoder.tok.decode(ids, skip_special_tokens=True)
