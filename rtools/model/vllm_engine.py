"""rt-score on vLLM (``rt-score --engine vllm``): serving-grade throughput on GPU hosts, same records.

vLLM is an optional extra (``pip install 'rtools[vllm]'``); nothing here imports it until a scorer
is loaded, and CI never needs it. It serves *merged* models only: vLLM rejects LoRA adapters that
carry new token rows (vllm-project/vllm#36501), so an rt-lora adapter directory is refused with a
pointer to ``rt-lora --merge-only``.

What is computed is what the local engine computes (rtools.model.scoring): for each prompt, the
full-vocabulary softmax at the first assistant position, read at the control tokens, not
renormalised over them. How:

* Prompts are encoded by the library's own ChatEncoder (the chat template with typed control
  tokens neutralised, the context limit and ``--truncate`` as in the local engine) and handed to
  vLLM as token ids: vLLM's own chat templating is never used.
* One request per prompt, ``max_tokens=1``: one prefill (vLLM's prefix cache shares the chat
  template's system turn between prompts), then the sampler's log-probabilities of the first
  generated position.
* The control tokens' log-probabilities come from ``SamplingParams(logprob_token_ids=[...])``
  (vLLM's explicit token-id logprobs), under the engine's default ``logprobs_mode="raw_logprobs"``:
  ``log_softmax`` of the raw logits over the whole vocabulary, before temperature, penalties or
  any logits processor. The cost is a gather of a few values per prompt.
* On a vLLM without ``logprob_token_ids``, the fallback asks for the full distribution
  (``logprobs=-1``, the engine built with ``max_logprobs=-1``) and reads the control tokens from
  it: the same numbers, but a vocabulary-sized dict per prompt crosses from the GPU to Python
  (~49k entries for SmolLM2, ~128k for Llama 3: several MB and tens of ms per prompt), so it is
  much slower; upgrade vLLM rather than rely on it. Top-k ``logprobs=k`` is never used: a control
  token outside the top k would have no value, and filling one in would be a guess.

``temperature`` other than 1, ``load_4bit``, ``base``, ``allow_untrained``, ``batch_size`` and
``batch_tokens`` have no meaning for this engine and are refused (ConfigError) rather than ignored.

The pure parts (the sampling and engine options, the record from returned log-probabilities) need
no vLLM and are tested on CPU; bench/vllm_check.py compares the two engines on a GPU.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from ..config import ConfigError
from ..tokens import TOKEN_MAP_FILE, TokenMap
from .chat import ChatEncoder, context_limit
from .loading import (
    DEFAULT_MODEL,
    ModelError,
    is_adapter_dir,
    load_tokenizer,
    model_directory,
    resolve_model,
)
from .scoring import ScoreConfig, Scorer

EXTRA = "pip install 'rtools[vllm]'"
#: rt-score --dtype -> vLLM's dtype (auto: the model's own, as vLLM decides).
VLLM_DTYPES = {None: "auto", "auto": "auto", "fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def import_vllm() -> Any:
    """The vllm module, or a ModelError that names the extra to install."""
    try:
        import vllm
    except ImportError as e:
        raise ModelError(
            f"the vllm engine needs vLLM, which is not installed ({e}): {EXTRA} on a CUDA host "
            "(or use the local engine)"
        ) from None
    return vllm


def check_config(config: ScoreConfig) -> None:
    """ConfigError for the settings the vLLM engine cannot honour (they would be ignored silently)."""
    if config.load_4bit:
        raise ConfigError("load_4bit: the vllm engine serves the merged model as it is stored", "load_4bit")
    if config.base:
        raise ConfigError(
            "base=DIR: the vllm engine scores a merged model, which has no separate base", "base"
        )
    if config.allow_untrained:
        raise ConfigError(
            "allow_untrained: the vllm engine cannot add control tokens to a model", "allow_untrained"
        )
    if config.temperature != 1.0:
        raise ConfigError(
            f"temperature={config.temperature:g}: the vllm engine reads the model's own (temperature 1) "
            "log-probabilities; use the local engine for another temperature",
            "temperature",
        )
    for name in ("batch_size", "batch_tokens"):
        if getattr(config, name) is not None:
            raise ConfigError(f"{name}: vLLM schedules its own batches", name)
    if config.device not in (None, "auto", "cuda") and not str(config.device).startswith("cuda:"):
        raise ConfigError(f"device={config.device}: the vllm engine runs where vLLM runs (a GPU)", "device")


def merged_model_dir(spec: str | None) -> str:
    """The local directory of a merged rt-lora model; a ModelError for an adapter or a model without
    control tokens, saying what to do."""
    spec = resolve_model(spec)
    if spec == DEFAULT_MODEL:
        raise ModelError(
            "the vllm engine needs a merged rt-lora model (model=DIR): the embedded default "
            "has no control tokens",
            ("model",),
        )
    directory = model_directory(spec)
    if is_adapter_dir(directory):
        raise ModelError(
            f"{spec} is an rt-lora adapter: vLLM does not load adapters that add token rows "
            f"(vllm-project/vllm#36501); merge it first (rtools.model.merging.merge_adapter: "
            f"`rt-lora --merge-only {spec} --out MERGED`, or `rt-lora --merge` when training: DIR/merged), "
            "then score the merged model"
        )
    if not os.path.isfile(os.path.join(directory, TOKEN_MAP_FILE)):
        raise ModelError(
            f"{spec}: no {TOKEN_MAP_FILE}: not a merged rt-lora model (`rt-lora --merge-only` writes one)"
        )
    return directory


def struct_fields(cls: Any) -> set[str]:
    """The keyword names a vLLM options class accepts (msgspec Struct, dataclass or plain class)."""
    names = set(getattr(cls, "__struct_fields__", ()) or ())
    if dataclasses.is_dataclass(cls):
        names |= {f.name for f in dataclasses.fields(cls)}
    if not names:
        try:
            names = set(inspect.signature(cls).parameters)
        except (TypeError, ValueError):  # pragma: no cover
            pass
    return names


def sampling_options(control_ids: Sequence[int], accepted: set[str]) -> dict[str, Any]:
    """SamplingParams keywords: one generated position, the control tokens' full-vocabulary
    log-probabilities (explicit token ids where vLLM has them, else the whole distribution)."""
    options: dict[str, Any] = {"n": 1, "max_tokens": 1, "temperature": 0.0}
    if "detokenize" in accepted:
        options["detokenize"] = False
    if "logprob_token_ids" in accepted:
        options["logprob_token_ids"] = list(control_ids)
    else:
        options["logprobs"] = -1  # every token of the vocabulary: see the module docstring for the cost
    return options


def engine_options(
    directory: str, dtype: str | None, trust_remote_code: bool, accepted: set[str], full_vocab: bool
) -> dict[str, Any]:
    """LLM keywords for ``directory`` (``accepted``: the engine arguments this vLLM knows)."""
    options: dict[str, Any] = {
        "model": directory,
        "tokenizer": directory,
        "dtype": VLLM_DTYPES[dtype],
        "trust_remote_code": trust_remote_code,
        "seed": 0,
    }
    if "logprobs_mode" in accepted:
        options["logprobs_mode"] = "raw_logprobs"  # log_softmax of the raw logits (vLLM's default)
    if full_vocab:
        options["max_logprobs"] = -1
    return options


def _value(logprob: Any) -> float:
    return float(getattr(logprob, "logprob", logprob))


def control_probabilities(step: Mapping[int, Any], control_ids: Sequence[int]) -> list[float]:
    """The control tokens' probabilities (token-map order) from one generated position's
    log-probabilities as vLLM returns them (token id -> Logprob, or -> float). Nothing is renormalised:
    these are full-vocabulary probabilities, whatever else ``step`` holds."""
    out = []
    for i in control_ids:
        if i not in step:
            raise ModelError(
                f"vLLM returned no log-probability for control token id {i} (it returned {len(step)} ids)"
            )
        out.append(math.exp(_value(step[i])))
    return out


def output_probabilities(output: Any, prompt: Sequence[int], control_ids: Sequence[int]) -> list[float]:
    """The control tokens' probabilities from one vLLM RequestOutput for the prompt ``prompt``."""
    got = getattr(output, "prompt_token_ids", None)
    if got is not None and list(got) != list(prompt):
        raise ModelError("vLLM returned the outputs in another order than the prompts")
    completions = getattr(output, "outputs", None) or []
    logprobs = getattr(completions[0], "logprobs", None) if completions else None
    if not logprobs:
        raise ModelError("vLLM returned no log-probabilities (a vLLM without logprob support?)")
    return control_probabilities(logprobs[0], control_ids)


@dataclass
class VllmScorer(Scorer):
    """rt-score's scorer on a vLLM engine: :class:`Scorer`'s reading, windows, errors and records,
    with :meth:`probabilities` computed by vLLM. ``model`` is the ``vllm.LLM``."""

    sampling: Any = None

    @classmethod
    def load(
        cls,
        model: str | None = None,
        config: ScoreConfig | None = None,
        quiet: bool = True,
        engine_args: dict[str, Any] | None = None,
    ) -> VllmScorer:
        """A vLLM engine for the merged model ``model``. ConfigError: a setting this engine cannot
        honour; ModelError: an adapter, a model without control tokens, or no vLLM installed.
        ``engine_args``: more ``vllm.LLM`` keywords (``gpu_memory_utilization``,
        ``tensor_parallel_size``, ``max_model_len``...), passed as they are."""
        config = config or ScoreConfig()
        check_config(config)
        directory = merged_model_dir(model)
        vllm = import_vllm()
        tok = load_tokenizer(directory, config.trust_remote_code)
        token_map = TokenMap.load(directory)
        try:
            encoder = ChatEncoder(tok, token_map.tokens())
        except ValueError as e:
            raise ModelError(f"{directory}: {e}") from None
        from transformers import AutoConfig

        hf_config = AutoConfig.from_pretrained(directory, trust_remote_code=config.trust_remote_code)
        vocab = getattr(hf_config.get_text_config(), "vocab_size", None)
        if isinstance(vocab, int) and max(encoder.control_ids) >= vocab:
            raise ModelError(
                f"{directory}: control token id {max(encoder.control_ids)} is past the model's "
                f"vocabulary ({vocab} rows): the tokenizer and the weights do not belong together"
            )
        sampling_fields = struct_fields(vllm.SamplingParams)
        sampling = sampling_options(encoder.control_ids, sampling_fields)
        options = engine_options(
            directory,
            config.dtype,
            config.trust_remote_code,
            struct_fields(getattr(vllm, "EngineArgs", object)),
            full_vocab="logprob_token_ids" not in sampling,
        )
        llm = vllm.LLM(**{**options, **(engine_args or {})})
        return cls(
            llm,
            encoder,
            token_map,
            device="vllm",
            temperature=1.0,
            pad_id=tok.pad_token_id or 0,
            window=config.window,
            truncate=config.truncate,
            limit=context_limit(SimpleNamespace(config=hf_config), tok),
            sampling=vllm.SamplingParams(**sampling),
        )

    def probabilities(self, sequences: list[list[int]]) -> list[list[float]]:
        """One request per prompt (token ids, max_tokens=1); the control tokens' probabilities."""
        if not sequences:
            return []
        prompts = [{"prompt_token_ids": list(s)} for s in sequences]
        outputs = self.model.generate(prompts, self.sampling, use_tqdm=False)
        if len(outputs) != len(sequences):
            raise ModelError(f"vLLM returned {len(outputs)} outputs for {len(sequences)} prompts")
        return [
            output_probabilities(o, s, self.encoder.control_ids)
            for o, s in zip(outputs, sequences, strict=True)
        ]


__all__ = ["VllmScorer", "check_config", "sampling_options", "engine_options", "control_probabilities"]
