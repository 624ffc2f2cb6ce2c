"""rt-generate's library half: records in, records with their answers out (:class:`Answerer`, configured by
:class:`GenerateConfig`). The answers themselves, scored and started from one prefill after a forced
control token, are decoded by :class:`~rtools.model.decoding.Generator` (rtools.model.decoding, which
says how).

Choosing the control token (:class:`~rtools.model.choice.ControlChooser`) is plain Python built on
the decision rules of :mod:`rtools.thresholds` (rtools.model.choice); torch is imported only inside
the functions that need it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from ..config import ConfigError
from ..records import RecordError, check_finite
from ..refusal_detector import RefusalDetector
from ..tagging import DEFAULT_REFUSAL_TEXTS, GENERIC_REFUSAL_TEXT
from ..thresholds import Thresholds
from ..tokens import CATEGORY
from .chat import ChatEncoder, context_limit
from .choice import Choice, ControlChooser, record_decision
from .decoding import (  # noqa: F401 (Generation, cut_at_stop, prefill_chunks: importable from here as before)
    Generation,
    Generator,
    Sampling,
    cut_at_stop,
    end_ids,
    prefill_chunks,
)
from .loading import ModelError, load_for_inference
from .scoring import LoadConfig, PromptStream, StaleFields, check_truncate, disown, positive, windows

# ---------------------------------------------------------------------------
# The library entry point: records in, records with their answers out.

#: Fields an Answerer writes besides the answer (``output_field`` cannot be one of them).
WRITTEN_FIELDS = (
    "p_refuse",
    "p_respond",
    "p_cat",
    "decision",
    "decision_cat",
    "control",
    "forced",
    "refusal",
    "consistent",
)


#: A record's own decision: followed with ``use_decision`` (``--use-decision``), else decided anew.
DECISION_FIELDS = ("decision", "decision_cat")


@dataclass(frozen=True, kw_only=True)
class GenerateConfig(LoadConfig):
    """How to load (:class:`~rtools.model.scoring.LoadConfig`), choose and generate, validated when
    made (:class:`ConfigError`).

    Choosing (see :class:`ControlChooser`): ``rule`` (a rtools.thresholds.Thresholds),
    ``logit_bias`` ({control token: B}) or ``use_decision`` (the record's own ``decision`` and
    ``decision_cat``, e.g. from rt-threshold; a record without one gets the model's own choice), one
    of them at most; none: the model's own choice. Without ``use_decision`` a record's ``decision``
    is never read: it is decided anew and replaced. Decoding: ``max_new_tokens``, ``temperature`` (0: greedy), ``top_p``,
    ``seed``, ``stop`` strings. Records: the answer goes to ``output_field``; ``detector``
    (text -> bool, default rtools.refusal_detector.RefusalDetector()) fills ``refusal``;
    ``batch_size`` prompts are generated together, ``window`` records read at a time;
    ``truncate`` as rt-score's. ``plain``: the model's own answer, no control token chosen, forced
    or generated, and no scores: only ``output_field`` is written (e.g. the base model's answers, as
    the self-distilled respond answers of a training mix, rtools.datasets.mix).
    """

    rule: Thresholds | None = None
    logit_bias: Mapping[str, float] = field(default_factory=dict)
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    output_field: str = "generation"
    detector: Callable[[str], bool] | None = None
    batch_size: int = 16
    window: int = 256
    truncate: str | None = None
    plain: bool = False
    use_decision: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self, "batch_size", "window")
        if self.use_decision and (
            (self.rule is not None and self.rule.mode != "own") or self.logit_bias or self.plain
        ):
            other = "plain" if self.plain else "rule" if not self.logit_bias else "logit_bias"
            given = "plain=True" if self.plain else other
            raise ConfigError(
                f"use_decision follows the record's own decision: it cannot be combined with {given}",
                ("use_decision", other),
            )
        if self.plain and ((self.rule is not None and self.rule.mode != "own") or self.logit_bias):
            raise ConfigError(
                "plain=True forces no control token: a threshold rule or logit_bias does not apply",
                ("plain", "rule", "logit_bias"),
            )
        if not (isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 0):
            raise ConfigError(f"max_new_tokens must be >= 0, got {self.max_new_tokens!r}", "max_new_tokens")
        check_truncate(self.truncate)
        for stop in self.stop:
            if not isinstance(stop, str) or not stop:
                raise ConfigError(
                    f"stop={stop!r}: a stop string must be non-empty text (an empty one would end every answer at once)",
                    "stop",
                )
        if not (isinstance(self.temperature, (int, float)) and self.temperature >= 0):
            raise ConfigError(f"temperature must be >= 0, got {self.temperature!r}", "temperature")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p!r}", "top_p")
        if self.logit_bias and self.rule is not None and self.rule.mode != "own":
            raise ConfigError("logit_bias cannot be combined with a threshold rule", ("logit_bias", "rule"))
        for token, b in self.logit_bias.items():
            if not math.isfinite(b):
                raise ConfigError(f"logit_bias for {token!r} must be finite, got {b!r}", "logit_bias")
        if not self.output_field:
            raise ConfigError("output_field is empty", "output_field")
        if self.output_field in WRITTEN_FIELDS:
            raise ConfigError(
                f"output_field {self.output_field!r} is a field rt-generate writes itself; choose another name",
                "output_field",
            )

    def sampling(self) -> Sampling:
        return Sampling(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=self.seed,
            stop=tuple(self.stop),
        )


@dataclass
class Answerer:
    """Generates each record's answer after a forced control token: :meth:`load`, then iterate
    :meth:`answer` (records in, in input order, each with the scores, the decision, the control
    token, the answer in ``output_field``, ``refusal`` and ``consistent``).

    ``truncated`` counts the prompts of the last run that lost earlier turns; ``limit`` is the
    prompt budget (the context less the answer and the control token), ``what`` how it reads.
    """

    generator: Generator
    chooser: ControlChooser
    config: GenerateConfig
    detector: Callable[[str], bool]
    limit: int | None = None
    what: str | None = None
    #: the model's body is the base's, untrained (rt-lora --max-steps 0: a probe reader): it never
    #: learned to write after a control token, so answers are the base's own (the control token kept
    #: out of the context) and refusals rt-tag's refusal text of the chosen category
    reader: bool = False
    truncated: int = field(default=0, init=False)
    stale: StaleFields | None = field(default=None, init=False)

    @classmethod
    def load(
        cls, model: str | None = None, config: GenerateConfig | None = None, quiet: bool = True
    ) -> Answerer:
        """Load ``model`` (an rt-lora output, a merged model, or None: the shipped default scorer)."""
        config = config or GenerateConfig()
        return cls.from_loaded(load_for_inference(model, quiet=quiet, **config.load_options()), config)

    @classmethod
    def from_loaded(cls, lm: Any, config: GenerateConfig | None = None) -> Answerer:
        """An answerer for a loaded model. A rule that does not fit the model (per-category thresholds
        on a single-token model, an unknown category, a prompt budget the answer leaves no room for)
        is a rtools.model.loading.ModelError; a logit bias for a token the model lacks a ConfigError."""
        config = config or GenerateConfig()
        token_map, rule = lm.token_map, config.rule
        if rule is not None and rule.mode == "category":
            if token_map.mode != CATEGORY:
                raise ModelError(
                    "per-category thresholds need a category-token model "
                    f"(this one has the single refusal token {token_map.refuse})"
                )
            try:
                rule = rule.resolve(token_map.categories, seen_in="the model")
            except RecordError as e:
                raise ModelError(e.message) from None
        try:
            chooser = ControlChooser(token_map, rule=rule, bias=dict(config.logit_bias))
        except ValueError as e:
            raise ConfigError(str(e), "logit_bias") from None
        encoder = ChatEncoder(lm.tokenizer, token_map.tokens())
        pad_id = lm.tokenizer.pad_token_id
        generator = Generator(
            lm.model,
            encoder,
            device=lm.device,
            pad_id=0 if pad_id is None else pad_id,
            eos_ids=end_ids(lm.model, lm.tokenizer, encoder),
            batch_size=config.batch_size,
        )
        limit = what = None
        context = context_limit(lm.model, lm.tokenizer)
        if context is not None:
            n = config.max_new_tokens
            limit = context[0] - n - 1  # the answer and its forced control token must fit too
            what = f"{limit} ({context[1]} {context[0]}, less {n} for max_new_tokens and 1 for the control token)"
            if limit < 1:
                raise ModelError(
                    f"max_new_tokens {n} leaves no room for a prompt in {what}", ("max_new_tokens",)
                )
        if config.detector is None:
            detector: Callable[[str], bool] = RefusalDetector()
        else:
            detector = config.detector
        return cls(generator, chooser, config, detector, limit, what, untrained_body(lm.directory))

    def answer(self, records: Iterable[Any], name: str | None = None) -> Iterator[dict[str, Any]]:
        """Each record with its answer, in input order (updated in place and yielded). ``records``:
        dicts or ``(line, dict)`` pairs; a bad record's RecordError comes after every record before it."""
        for win in self.answer_windows(records, name):
            yield from win

    def answer_windows(
        self, records: Iterable[Any], name: str | None = None
    ) -> Iterator[list[dict[str, Any]]]:
        """:meth:`answer`, one window (at most ``window`` records) at a time."""
        token_map = self.chooser.token_map
        cfg = self.config
        tokens = token_map.tokens()
        prompts = PromptStream(
            self.generator.encoder,
            self.limit,
            cfg.truncate,
            self.what,
            name,
            check=(lambda rec, line: record_decision(rec, token_map, name, line))
            if cfg.use_decision
            else None,
        )
        sampling = cfg.sampling()
        self.stale = None
        for win in windows(prompts.read(records), cfg.window):
            self.truncated = prompts.truncated
            choices: dict[int, Choice] = {}
            fields: dict[int, dict[str, Any]] = {}

            def choose(
                j: int, probs: list[float], logprobs: list[float], win=win, choices=choices, fields=fields
            ) -> int:
                line, recorded = win[j].line, win[j].extra
                f = self.chooser.fields(probs)
                for k in ("p_refuse", "p_respond"):
                    check_finite(f[k], k, name, line)
                try:
                    c = self.chooser.choose(f, logprobs, recorded)
                except RecordError as e:
                    raise RecordError(e.message, path=name, line=line, hint=e.hint) from None
                fields[j], choices[j] = f, c
                return c.index

            if self.reader and not cfg.plain:
                gens = self._read_then_answer(win, choose, choices, sampling)
            else:
                gens = self.generator.generate(
                    [p.ids for p in win],
                    None if cfg.plain else choose,
                    sampling,
                    seeds=[p.ordinal for p in win],
                )
            if cfg.plain:
                for p, g in zip(win, gens, strict=True):
                    p.record[cfg.output_field] = g.text
                yield [p.record for p in win]
                continue
            for j, (p, g) in enumerate(zip(win, gens, strict=True)):
                c, rec = choices[j], p.record
                refusal = self.detector(g.text)
                ignored = (
                    () if cfg.use_decision else tuple(k for k in DECISION_FIELDS if rec.get(k) is not None)
                )
                written = {**dict.fromkeys(k for k in WRITTEN_FIELDS if not k.startswith("p_")), **fields[j]}
                _, removed = disown(rec, written)
                if (ignored or removed) and self.stale is None:
                    self.stale = StaleFields(p.line, removed=removed, ignored=ignored)
                rec.update(fields[j])
                rec["decision"] = c.decision
                rec["decision_cat"] = c.decision_cat
                rec["control"] = tokens[c.index]
                rec["forced"] = c.forced
                rec[cfg.output_field] = g.text
                rec["refusal"] = refusal
                rec["consistent"] = refusal == (c.decision == "refuse")
            yield [p.record for p in win]
        self.truncated = prompts.truncated
        prompts.raise_error()

    def _read_then_answer(
        self, win: list[Any], choose: Callable[..., int], choices: dict[int, Choice], sampling: Sampling
    ) -> list[Generation]:
        """For a probe reader: score and choose (a prefill, nothing decoded), then the base's own
        answer to the prompts answered and the refusal text of the category to those refused."""
        gens = self.generator.generate(
            [p.ids for p in win], choose, replace(sampling, max_new_tokens=0), seeds=[p.ordinal for p in win]
        )
        answered = [j for j in range(len(win)) if choices[j].decision != "refuse"]
        plain = self.generator.generate(
            [win[j].ids for j in answered], None, sampling, seeds=[win[j].ordinal for j in answered]
        )
        texts = {j: g.text for j, g in zip(answered, plain, strict=True)}
        for j, g in enumerate(gens):
            slug = choices[j].decision_cat
            g.text = texts.get(
                j, DEFAULT_REFUSAL_TEXTS.get(slug, GENERIC_REFUSAL_TEXT) if slug else GENERIC_REFUSAL_TEXT
            )
        return gens

    @property
    def prompt_limit(self) -> int | None:
        """The most tokens a prompt may have (the context less the answer and the control token)."""
        return self.limit


def untrained_body(directory: str | None) -> bool:
    """Whether the rt-lora output in ``directory`` took no training step (--max-steps 0: the base's
    body read by a probe's control rows), from its rtools_config.json; False when it says otherwise
    or has none."""
    if not directory:
        return False
    try:
        with open(os.path.join(directory, "rtools_config.json"), "rb") as fh:
            summary = orjson.loads(fh.read()).get("summary")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(summary, dict) and summary.get("steps") == 0 and summary.get("steps").__class__ is int
