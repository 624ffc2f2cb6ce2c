"""One forward pass per prompt: the refusal-token probabilities at the first assistant position.

Prompts are encoded, sorted by length inside a bounded window of records, cut into batches under
a token budget (or a fixed batch size), right-padded, and the vocabulary head is applied only at
each prompt's last real position. Results come back in input order. Probabilities are the softmax
over the full vocabulary, at temperature 1 unless asked.

The library entry point (what rt-score iterates)::

    scorer = Scorer.load("runs/adapter", ScoreConfig(device="cpu"))
    for record in scorer.score(records):   # dicts, or (line, dict) pairs
        ...                                # the record with p_refuse, p_respond (and p_cat)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import ConfigError
from ..records import RecordError, check_finite
from ..tokens import CATEGORY, TokenMap
from .batching import (
    cache_kwarg,
    control_logprobs,
    decoder_and_head,
    output_cache,
    plan_batches,
    right_pad,
    shared_prefix,
)
from .chat import ChatEncoder, context_limit, record_messages
from .loading import load_for_inference

MIN_SHARED_PREFIX = 4
#: On CPU a batch holds at most this many tokens whatever the budget: activations that stay in the
#: caches measured 1.3-1.8x faster per prompt than batches of 8192 tokens (bench/bench_score.py --sweep).
CPU_BATCH_TOKENS = 1024  # the default budget on CPU (measured fastest here: bench/README.md)
GPU_BATCH_TOKENS = 8192


def _prefix_cache(decoder: Any, prefix: list[int], device: str) -> Any:
    """The KV cache of a shared prefix (one forward pass), or None when the decoder gives none to reuse."""
    import torch

    cache = output_cache(decoder(input_ids=torch.tensor([prefix], device=device), use_cache=True))
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
        cache_kw = cache_kwarg(decoder)
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
            p = control_logprobs(head, h, sel, temperature).exp().cpu().tolist()
            for k, j in enumerate(batch):
                results[j] = p[k]
    return results


def score_fields(token_map: TokenMap, probs: Sequence[float]) -> dict[str, Any]:
    """Record fields from control-token probabilities (token_map order: refusal tokens, respond):
    ``p_refuse`` (their sum), ``p_respond`` and, in category mode, ``p_cat``."""
    *ref, resp = probs
    d: dict[str, Any] = {"p_refuse": sum(ref), "p_respond": resp}
    if token_map.mode == CATEGORY:
        d["p_cat"] = dict(zip(token_map.categories, ref, strict=True))
    return d


#: The fields computed from a model's scores: rt-score's and rt-generate's scores, rt-threshold's
#: decision and raw (uncalibrated) scores, rt-generate's decision fields. rt-score owns them all: an
#: input record's own are never trusted, but replaced by this model's or removed (:func:`disown`),
#: so that no field a user wrote can steer a decision downstream.
SCORE_FIELDS = (
    "p_refuse",
    "p_respond",
    "p_cat",
    "p_refuse_raw",
    "p_cat_raw",
    "decision",
    "decision_cat",
    "control",
    "forced",
    "consistent",
)


@dataclass(frozen=True)
class StaleFields:
    """What a command did with the fields of an input record that it owns (the first such record of
    a run): ``replaced`` by its own values, ``removed`` (stale: computed from other scores, or a
    field this model does not write), ``ignored`` (read, but not used: rt-generate's ``decision``)."""

    line: int
    replaced: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()

    def message(self, name: str | None, command: str) -> str:
        """The one warning a command gives, naming the fields and the first record that had them."""
        parts = [
            f"{', '.join(fields)} {verb}"
            for fields, verb in (
                (self.replaced, "replaced"),
                (self.ignored, "ignored (decided anew)"),
                (self.removed, "removed"),
            )
            if fields
        ]
        where = f"{name}:{self.line}" if name is not None else f"record {self.line}"
        return (
            f"{where}: the input has fields {command} owns, never trusted: {'; '.join(parts)} "
            "(said once, for the first such record)"
        )


def disown(
    record: dict[str, Any], written: Mapping[str, Any], owned: Sequence[str] = SCORE_FIELDS
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Remove from ``record`` the ``owned`` fields that ``written`` (the fields about to be written,
    replacing theirs in place) does not hold. Returns the owned fields the record had: (replaced, removed)."""
    replaced = tuple(k for k in owned if k in record and k in written)
    removed = tuple(k for k in owned if k in record and k not in written)
    for k in removed:
        del record[k]
    return replaced, removed


DTYPES = (None, "auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True, kw_only=True)
class LoadConfig:
    """How to load a model for scoring or generation (rtools.model.loading.load_for_inference):
    ``device`` (None/``auto``: CUDA when there is one), ``dtype`` (None/``auto``, ``fp32``, ``bf16``,
    ``fp16``), ``load_4bit``, ``base`` (where an adapter's base model is now, when it has moved),
    ``allow_untrained`` (add untrained control tokens to a plain model: benchmarks and tests),
    ``trust_remote_code``, ``cpu_bf16`` (whether ``dtype`` auto takes this CPU for one with bf16
    units; None: detect it, see rtools.model.precision.cpu_has_native_bf16)."""

    device: str | None = None
    dtype: str | None = None
    load_4bit: bool = False
    base: str | None = None
    allow_untrained: bool = False
    trust_remote_code: bool = False
    cpu_bf16: bool | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be auto, fp32, bf16 or fp16, got {self.dtype!r}", "dtype")

    def load_options(self) -> dict[str, Any]:
        """The keyword arguments of rtools.model.loading.load_for_inference."""
        options = {
            "device": self.device,
            "dtype": self.dtype,
            "load_4bit": self.load_4bit,
            "allow_untrained": self.allow_untrained,
            "trust_remote_code": self.trust_remote_code,
            "cpu_bf16": self.cpu_bf16,
        }
        if self.base is not None:
            options["base"] = self.base
        return options


def positive(config: Any, *names: str, optional: bool = False) -> None:
    """ConfigError unless each field is a positive integer (or, with ``optional``, None)."""
    for name in names:
        v = getattr(config, name)
        if not (optional and v is None) and not (isinstance(v, int) and v >= 1):
            raise ConfigError(f"{name} must be a positive integer, got {v!r}", name)


def check_truncate(value: Any) -> None:
    if value not in (None, "left", "right"):
        raise ConfigError(f"truncate must be None, 'left' or 'right', got {value!r}", "truncate")


@dataclass(frozen=True, kw_only=True)
class ScoreConfig(LoadConfig):
    """How to load (:class:`LoadConfig`) and score, validated when made (:class:`ConfigError`):
    ``batch_size`` (fixed prompts per batch) or ``batch_tokens`` (token budget; default by device),
    ``window`` (records read, sorted and scored together), ``temperature``, ``truncate`` (None,
    ``left`` or ``right``: drop earlier turns of a prompt past the model's context instead of failing).
    """

    batch_size: int | None = None
    batch_tokens: int | None = None
    window: int = 1024
    temperature: float = 1.0
    truncate: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self, "batch_size", "batch_tokens", optional=True)
        positive(self, "window")
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature!r}", "temperature")
        check_truncate(self.truncate)


@dataclass
class Scorer:
    """Scores records with a loaded model: :meth:`load` it, then iterate :meth:`score`.

    ``truncated`` counts the prompts of the last :meth:`score` run that lost earlier turns
    (``truncate``); ``limit`` is the model's context (tokens, and where that number comes from).
    """

    model: Any
    encoder: ChatEncoder
    token_map: TokenMap
    device: str = "cpu"
    batch_tokens: int | None = None
    batch_size: int | None = None
    max_batch: int = 64
    temperature: float = 1.0
    pad_id: int = 0
    window: int = 1024
    truncate: str | None = None
    limit: tuple[int, str] | None = None
    truncated: int = field(default=0, init=False)
    stale: StaleFields | None = field(default=None, init=False)

    @classmethod
    def load(cls, model: str | None = None, config: ScoreConfig | None = None, quiet: bool = True) -> Scorer:
        """Load ``model`` (an rt-lora output, a merged model, or None: the shipped default scorer) as
        ``config`` says. A model that cannot be loaded is a rtools.model.loading.ModelError."""
        config = config or ScoreConfig()
        import functools

        from .merged_cache import load_merged

        merged = functools.partial(load_merged, fast=True)
        lm = load_for_inference(model, quiet=quiet, cached_merge=merged, **config.load_options())
        return cls.from_loaded(lm, config)

    @classmethod
    def from_loaded(cls, lm: Any, config: ScoreConfig | None = None) -> Scorer:
        """A scorer for an already loaded model (rtools.model.loading.LoadedModel)."""
        config = config or ScoreConfig()
        return cls(
            lm.model,
            ChatEncoder(lm.tokenizer, lm.token_map.tokens()),
            lm.token_map,
            device=lm.device,
            batch_tokens=config.batch_tokens,
            batch_size=config.batch_size,
            temperature=config.temperature,
            pad_id=lm.tokenizer.pad_token_id or 0,
            window=config.window,
            truncate=config.truncate,
            limit=context_limit(lm.model, lm.tokenizer),
        )

    def score(self, records: Iterable[Any], name: str | None = None) -> Iterator[dict[str, Any]]:
        """Each record with ``p_refuse``, ``p_respond`` (and ``p_cat``) set, in input order, streaming
        window by window (a record is updated in place and yielded). The record's own fields of
        :data:`SCORE_FIELDS` are replaced or removed (:func:`disown`); ``stale`` says so for the first
        record of the run that had any.

        ``records``: dicts, or ``(line, dict)`` pairs (rtools.records.iter_records) so that an error
        names the line; ``name`` is the source shown in errors. A bad record (no prompt, a prompt past
        the context) raises its RecordError only after every record before it has been yielded: a
        reader's error inside ``records`` is deferred the same way.
        """
        for win in self.score_windows(records, name):
            yield from win

    def score_windows(
        self, records: Iterable[Any], name: str | None = None
    ) -> Iterator[list[dict[str, Any]]]:
        """:meth:`score`, one window (a list of at most ``window`` records) at a time."""
        limit, source = self.limit or (None, "")
        prompts = PromptStream(self.encoder, limit, self.truncate, f"{limit} ({source})", name)
        self.stale = None
        for win in windows(prompts.read(records), self.window):
            self.truncated = prompts.truncated
            probs = self.probabilities([p.ids for p in win])
            for p, probs_ in zip(win, probs, strict=True):
                fields = self.fields(probs_)
                for k in ("p_refuse", "p_respond"):
                    check_finite(fields[k], k, name, p.line)
                replaced, removed = disown(p.record, fields)
                if (replaced or removed) and self.stale is None:
                    self.stale = StaleFields(p.line, replaced, removed)
                p.record.update(fields)
            yield [p.record for p in win]
        self.truncated = prompts.truncated
        prompts.raise_error()

    @property
    def prompt_limit(self) -> int | None:
        """The most tokens a prompt may have (the model's context), None when unknown."""
        return self.limit[0] if self.limit else None

    def probabilities(self, sequences: list[list[int]]) -> list[list[float]]:
        """For each token sequence: the probability of each control token (token_map order)."""
        if getattr(getattr(self.model, "config", None), "fast_path", False):
            from .fastllama import control_probabilities as fast_probabilities

            return fast_probabilities(
                self.model,
                sequences,
                self.encoder.control_ids,
                self.batch_tokens or CPU_BATCH_TOKENS,
                self.batch_size,
                self.max_batch,
                self.temperature,
            )
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

    def fields(self, probs: Sequence[float]) -> dict[str, Any]:
        """Record fields from control-token probabilities (see :func:`score_fields`)."""
        return score_fields(self.token_map, probs)

    def score_messages(self, conversations: list[list[dict[str, str]]]) -> list[dict[str, Any]]:
        seqs = [self.encoder.encode_prompt(m) for m in conversations]
        return [self.fields(p) for p in self.probabilities(seqs)]


@dataclass
class Prompt:
    """A record read for a model: its position (from 0), input line, the record, what ``check`` made
    of it, and its prompt's token ids."""

    ordinal: int
    line: int
    record: dict[str, Any]
    extra: Any
    ids: list[int]


@dataclass
class PromptStream:
    """Records to :class:`Prompt` s: the conversation checked, encoded within ``limit`` tokens
    (``truncate``: drop earlier turns; ``what``: how the limit reads in an error), and ``check(record,
    line)`` applied when given. The first bad record's RecordError (or the reader's) ends the stream
    and is kept until :meth:`raise_error`, so that the caller finishes every record before it first.
    ``truncated`` counts the prompts that lost turns."""

    encoder: ChatEncoder
    limit: int | None
    truncate: str | None
    what: str | None
    name: str | None
    check: Any = None
    truncated: int = 0
    error: RecordError | None = None

    def read(self, records: Iterable[Any]) -> Iterator[Prompt]:
        try:
            for ordinal, item in enumerate(records):
                line, rec = item if isinstance(item, tuple) else (ordinal + 1, item)
                msgs = record_messages(rec, self.name, line)
                extra = self.check(rec, line) if self.check is not None else None
                ids, dropped = self.encoder.encode_prompt_within(
                    msgs, self.limit, self.truncate, self.name, line, what=self.what
                )
                self.truncated += dropped > 0
                yield Prompt(ordinal, line, rec, extra, ids)
        except RecordError as e:
            self.error = e

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error


def windows(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    buf: list[Any] = []
    for it in items:
        buf.append(it)
        if len(buf) >= size:
            yield buf
            buf = []
    if buf:
        yield buf
