"""Answers after a forced control token, scored and started from one prefill (torch): the decoding
half of rt-generate (rtools.model.generation holds the records' half, Answerer).

The paper's code runs the prompt twice: a forward pass for the control-token probabilities, then
``generate`` on the prompt plus the chosen token. Here one forward pass over the prompt gives both
the logits at the first assistant position (the control-token probabilities, exactly as rt-score
computes them) and the KV cache; the chosen control token is then appended *by id* and the answer
is decoded from that cache.

Batches are right-padded, like rt-score: every query row attends to at least one real key, so no
fully masked row can turn into NaN on GPU. Rows of very different lengths are prefilled and decoded
as separate groups (:func:`prefill_chunks`), so that one long prompt does not pad a whole batch.
Decoding is transformers' own ``generate``, continued from the prefill's cache with the forced
token as its last input token: its position ids come from the 2-D attention mask (padding slots
masked out), so every row sees exactly what it would see unpadded, and stop strings are
transformers' ``StopStringCriteria`` (no decoding of the answer at every step). (This suits
attention models; a model with recurrent layers would see the padding in its state.)

Greedy decoding (temperature 0) is the default. Sampling uses one random generator per prompt,
seeded from ``--seed`` and the prompt's position in the input, so a sampled answer does not
depend on the batch it was generated in (a logits processor samples, ``generate`` takes its pick).
torch is imported only inside the functions that need it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .batching import (
    base_model,
    cache_kwarg,
    control_logprobs,
    decoder_and_head,
    output_cache,
    plan_batches,
    right_pad,
)
from .chat import ChatEncoder


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
        choose: Callable[[int, list[float], list[float]], int] | None,
        sampling: Sampling,
        seeds: list[int] | None = None,
    ) -> list[Generation]:
        """Generate for every token sequence; results in input order.

        ``seeds`` (one per sequence) seed the sampling generators; default: the positions.
        ``choose`` None: the model's plain answer, no control token forced, none generated
        (a Generation's ``probs`` are then empty and its ``control_id`` is -1).
        """
        if not sequences:
            return []
        seeds = list(range(len(sequences))) if seeds is None else seeds
        return _in_groups(
            plan_batches([len(s) for s in sequences], 0, self.batch_size),
            len(sequences),
            lambda batch: self._batch(
                [sequences[j] for j in batch], batch, choose, sampling, [seeds[j] for j in batch]
            ),
        )

    def _batch(
        self,
        seqs: list[list[int]],
        positions: list[int],
        choose: Callable[[int, list[float], list[float]], int] | None,
        sampling: Sampling,
        seeds: list[int],
    ) -> list[Generation]:
        """One batch, run as groups of rows of similar length (:func:`prefill_chunks`)."""
        return _in_groups(
            prefill_chunks([len(s) for s in seqs], self.prefill_slack),
            len(seqs),
            lambda rows: self._group(
                [seqs[r] for r in rows],
                [positions[r] for r in rows],
                choose,
                sampling,
                [seeds[r] for r in rows],
            ),
        )

    def _group(
        self,
        seqs: list[list[int]],
        positions: list[int],
        choose: Callable[[int, list[float], list[float]], int] | None,
        sampling: Sampling,
        seeds: list[int],
    ) -> list[Generation]:
        """Prefill, choose, force the control token and decode, for rows of similar length.

        The prefill runs the decoder alone (the logits of the last prompt position only, not the
        whole vocabulary at every position); transformers' ``generate`` then continues from its cache
        with the forced token as the last input token, so the answer starts after it.

        Plain (``choose`` None): the prefill stops one token short, and that last prompt token is
        fed as the "forced" one: the answer is the model's own continuation of the prompt.
        """
        import torch

        plain = choose is None
        if plain:
            last_tokens = [s[-1] for s in seqs]
            seqs = [s[:-1] for s in seqs]
        dev = self.device
        decoder, head = decoder_and_head(self.model)
        control_ids = self.encoder.control_ids
        sel = torch.tensor(control_ids, device=dev)
        B = len(seqs)
        lengths = torch.tensor([len(s) for s in seqs], device=dev)
        ids, mask = right_pad(seqs, self.pad_id)
        ids, mask = ids.to(dev), mask.to(dev)
        T = ids.shape[1]

        with torch.inference_mode():
            pos = torch.arange(T, device=dev).unsqueeze(0).expand(B, -1)
            out = decoder(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
            cache = output_cache(out)
            if plain:
                probs = logprobs = [[] for _ in range(B)]
                chosen = [-1] * B
                forced = torch.tensor([[t] for t in last_tokens], device=dev)
            else:
                last = out.last_hidden_state[torch.arange(B, device=dev), lengths - 1]
                logp = control_logprobs(head, last, sel)
                logprobs = logp.cpu().tolist()
                probs = logp.exp().cpu().tolist()
                chosen = [choose(j, probs[k], logprobs[k]) for k, j in enumerate(positions)]
                forced = torch.tensor([[control_ids[c]] for c in chosen], device=dev)
                del last
            del out

            answers: list[list[int]] = [[] for _ in range(B)]
            stopped = ["length"] * B
            if sampling.max_new_tokens > 0:
                answers, stopped = self._decode_from(
                    torch.cat([ids, forced], dim=1),
                    torch.cat([mask, mask.new_ones((B, 1))], dim=1),
                    cache,
                    sampling,
                    seeds,
                    suppress=control_ids,
                )
        results = []
        for k in range(B):
            text = self._decode(answers[k])
            if sampling.stop:
                text, hit = cut_at_stop(text, sampling.stop)
                if hit and stopped[k] == "length":
                    stopped[k] = "stop"  # the stop string came with the last token allowed
            results.append(
                Generation(
                    prompt_ids=list(seqs[k]) + ([last_tokens[k]] if plain else []),
                    probs=probs[k],
                    logprobs=logprobs[k],
                    control_index=chosen[k],
                    control_id=-1 if plain else control_ids[chosen[k]],
                    answer_ids=answers[k],
                    text=text.strip(),
                    stopped=stopped[k],
                )
            )
        return results

    def _decode_from(
        self,
        input_ids: Any,
        attention_mask: Any,
        cache: Any,
        sampling: Sampling,
        seeds: list[int],
        suppress: Sequence[int] = (),
    ) -> tuple[list[list[int]], list[str]]:
        """``generate`` from the prefill's cache; answers (without their end token) and why each ended.

        ``input_ids`` is the right-padded prompt block plus the forced token, ``cache`` holds the
        prompt block: ``generate`` feeds only the forced token, and its position ids, computed from
        the 2-D attention mask, are ``len(prompt)``, ``len(prompt) + 1``... as unpadded.
        ``suppress``: token ids never generated (the control tokens: an answer never holds one; the
        forced token is the only one, and a generated one would be dropped when decoded).
        """
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        B, start = input_ids.shape
        eos = set() if sampling.ignore_eos else set(self.eos_ids)
        config = GenerationConfig(
            max_new_tokens=sampling.max_new_tokens,
            do_sample=False,  # sampling is done by _RowSampler, with one generator per prompt
            num_beams=1,
            repetition_penalty=1.0,
            # ignore_eos: an id no token has, so that an end token is decoded like any other
            eos_token_id=sorted(eos) if eos else [_vocab_size(self.model)],
            pad_token_id=self.pad_id,
            **({"suppress_tokens": list(suppress)} if suppress else {}),
        )
        processors = LogitsProcessorList()
        if sampling.temperature > 0:
            processors.append(_RowSampler(sampling, seeds, self.device))
        criteria = StoppingCriteriaList()
        stops = _StopRecorder(self._stop_criteria(sampling.stop), B, start) if sampling.stop else None
        if stops is not None:
            criteria.append(stops)
        out = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            generation_config=config,
            logits_processor=processors,
            stopping_criteria=criteria,
            **{cache_kwarg(base_model(self.model)): cache},
        )
        answers: list[list[int]] = []
        stopped: list[str] = []
        for k, row in enumerate(out[:, start:].tolist()):
            end = next((i for i, t in enumerate(row) if t in eos), None)
            stop_at = stops.done_at[k] if stops is not None else None
            if stop_at is not None and (end is None or stop_at <= end):
                answers.append(row[:stop_at])
                stopped.append("stop")
            elif end is not None:
                answers.append(row[:end])
                stopped.append("eos")
            else:
                answers.append(row)
                stopped.append("length")
        return answers, stopped

    def _stop_criteria(self, stops: tuple[str, ...]) -> Any:
        """transformers' StopStringCriteria for ``stops`` (built once per stop set: it scans the vocabulary)."""
        from transformers import StopStringCriteria

        key = tuple(s for s in stops if s)
        cached = getattr(self, "_stop_cache", None)
        if cached is None or cached[0] != key:
            cached = (key, StopStringCriteria(tokenizer=self.encoder.tok, stop_strings=list(key)))
            self._stop_cache = cached
        return cached[1]

    def _decode(self, ids: list[int]) -> str:
        return self.encoder.tok.decode(ids, skip_special_tokens=True)


def _in_groups(groups: list[list[int]], n: int, run: Callable[[list[int]], list[Any]]) -> list[Any]:
    """``run`` on each group of indices (a partition of range(n)); the results back in index order."""
    results: list[Any] = [None] * n
    for group in groups:
        for j, r in zip(group, run(group), strict=True):
            results[j] = r
    return results


def _vocab_size(model: Any) -> int:
    return int(base_model(model).get_output_embeddings().weight.shape[0])


class _RowSampler:
    """A logits processor that samples each row with its own generator (:func:`_sample`), and leaves
    only the sampled token, so that ``generate``'s greedy step picks it. One generator per prompt,
    seeded from ``--seed`` and the prompt's position, keeps an answer independent of its batch."""

    def __init__(self, sampling: Sampling, seeds: list[int], device: str):
        import torch

        self.temperature, self.top_p = sampling.temperature, sampling.top_p
        self.generators = []
        for s in seeds:
            g = torch.Generator(device=device)
            g.manual_seed((sampling.seed * 1_000_003 + s) & 0x7FFF_FFFF_FFFF_FFFF)
            self.generators.append(g)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        tokens = _sample(scores.float(), self.temperature, self.top_p, self.generators)
        out = scores.new_full(scores.shape, -math.inf)
        return out.scatter_(1, tokens.unsqueeze(1), 0.0)


class _StopRecorder:
    """Wraps a stopping criterion and records, per row, how many answer tokens it had when it
    first said stop (``generate`` pads finished rows afterwards)."""

    def __init__(self, inner: Any, batch: int, start: int):
        self.inner, self.start = inner, start
        self.done_at: list[int | None] = [None] * batch

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        done = self.inner(input_ids, scores, **kwargs)
        for k in done.nonzero().flatten().tolist():
            if self.done_at[k] is None:
                self.done_at[k] = input_ids.shape[1] - self.start
        return done
