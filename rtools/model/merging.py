"""Merged models: an rt-lora adapter folded into its base, as a standalone model directory.

``merge_adapter(adapter_dir, out)`` (``rt-lora --merge-only ADAPTER --out DIR``; ``rt-lora --merge``
does the same at the end of training, into DIR/merged) writes a directory that plain
``transformers.AutoModelForCausalLM`` / ``AutoTokenizer`` load, and that serving engines such as vLLM
load (they reject adapters that carry new token rows: vllm-project/vllm#36501):

* the LoRA deltas merged into the weights, in fp32, then stored in the base model's own dtype
  (or the one asked for);
* the control tokens in the tokenizer (special tokens) and their trained rows in the embedding,
  and in the output head when the base has one of its own (peft's ``trainable_tokens_delta``
  folded in);
* tied embeddings stay tied where the base ties them (``tie_word_embeddings`` and one stored
  matrix); untied ones stay two matrices;
* no peft name anywhere (``base_layer``, ``lora_``, ``modules_to_save``, ``trainable_tokens``,
  ``token_adapter``), in the weights or in config.json: checked after writing;
* rtools' own files: the token map (rtools_tokens.json), so that ``rt-score --model DIR`` needs no
  flag, and rtools_config.json (``merged_from``: the adapter, its base's identity, its recipe).

The adapter is loaded exactly as rt-score loads it (rtools.model.loading.load_for_inference: the
base in full precision, its identity checked), so rt-score on the merged directory gives the scores
rt-score gives on the adapter (to float rounding, in fp32). A QLoRA adapter is merged into its base
in full precision too, as rt-score scores it without ``--4bit``. A base that is itself stored
quantized (a ``quantization_config`` in its config.json) is refused before anything is loaded: the
merged weights would have to be re-quantized.

The directory is written atomically (a temporary name renamed into place).
"""

from __future__ import annotations

import json
import os
from typing import Any

import orjson

from .. import __version__
from ..config import ConfigError
from ..files import check_apart
from ..records import atomic_directory, atomic_write_bytes, atomic_write_json
from ..tokens import TOKEN_MAP_FILE
from .adapter import check_writable
from .loading import (
    ADAPTER_CONFIG,
    CONFIG_FILE,
    ModelError,
    is_adapter_dir,
    load_for_inference,
    model_directory,
    quiet_transformers,
    read_rtools_config,
    resolve_model,
)

#: Substrings of parameter names and config keys that only peft writes.
PEFT_NAMES = (
    "base_layer",
    "lora_",
    "modules_to_save",
    "original_module",
    "trainable_tokens",
    "token_adapter",
)
#: config.json keys that only an adapter (or a quantized model) has.
PEFT_CONFIG_KEYS = ("peft_config", "adapter_config", "_hf_peft_config_loaded", "quantization_config")
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
CARD_FILE = "README.md"


def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            data = orjson.loads(fh.read())
    except (OSError, orjson.JSONDecodeError) as e:
        raise ModelError(f"{path}: cannot read it ({e})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object")
    return data


def adapter_base(adapter_dir: str, base: str | None = None) -> tuple[str, str]:
    """The base model spec and directory of the adapter in ``adapter_dir`` (``base``: where it is now)."""
    cfg = read_rtools_config(adapter_dir)
    spec = base or cfg.get("base_model")
    if not spec:
        spec = _read_json(os.path.join(adapter_dir, ADAPTER_CONFIG)).get("base_model_name_or_path")
    if not spec:
        raise ModelError(
            f"{adapter_dir}: the adapter does not name its base model (give it with base=DIR)", ("base",)
        )
    try:
        return spec, model_directory(resolve_model(spec))
    except ModelError as e:
        moved = "" if base else "; if the base model has moved, give its new place with base=DIR"
        raise ModelError(
            f"{adapter_dir}: its base model cannot be loaded: {e}{moved}", (*e.fields, "base")
        ) from None


def check_mergeable(base_dir: str) -> dict[str, Any]:
    """The base's config.json, or a ModelError when the base is stored quantized (4-bit, 8-bit, GPTQ...):
    merged weights would have to be quantized again, which rtools does not do."""
    config = _read_json(os.path.join(base_dir, "config.json"))
    quant = config.get("quantization_config")
    if quant:
        method = quant.get("quant_method", "quantized") if isinstance(quant, dict) else "quantized"
        raise ModelError(
            f"{base_dir}: the base model is stored quantized ({method}, quantization_config in its "
            "config.json); a merged model is written in full precision: give the full-precision base "
            "with base=DIR (an adapter trained with load_4bit=True merges into it)",
            ("base", "load_4bit"),
        )
    return config


def saved_dtype(config: dict[str, Any], dtype: str | None) -> str:
    """The dtype the merged weights are stored in: ``dtype`` (fp32, bf16, fp16), else the base's own."""
    if dtype not in (None, "auto"):
        if dtype not in DTYPES:
            raise ModelError(f"unknown dtype {dtype!r} for the merged weights (use auto, fp32, bf16 or fp16)")
        return DTYPES[dtype]
    own = config.get("dtype") or config.get("torch_dtype") or "float32"
    return own if own in DTYPES.values() else "float32"


def peft_leftovers(directory: str) -> list[str]:
    """Names in ``directory``'s weights and config.json that only peft (or a quantizer) writes."""
    from safetensors import safe_open

    found: list[str] = []
    for f in sorted(os.listdir(directory)):
        if f.endswith(".safetensors"):
            with safe_open(os.path.join(directory, f), framework="pt") as fh:
                found += [f"{f}: {k}" for k in fh.keys() if any(p in k for p in PEFT_NAMES)]  # noqa: SIM118
    config = _read_json(os.path.join(directory, "config.json"))
    found += [f"config.json: {k}" for k in config if k in PEFT_CONFIG_KEYS or any(p in k for p in PEFT_NAMES)]
    if os.path.exists(os.path.join(directory, ADAPTER_CONFIG)):
        found.append(ADAPTER_CONFIG)
    return found


def _tie(model: Any, tied: bool) -> None:
    """Keep the base's tying: one matrix for embedding and head when tied (equal rows required)."""
    import torch

    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    if out is None:
        return
    if tied:
        if out.weight is not inp.weight:
            if out.weight.shape != inp.weight.shape or not torch.equal(out.weight, inp.weight):
                raise ModelError("merging gave a head that differs from the tied embedding (a peft change?)")
            out.weight = inp.weight
    elif out.weight.data_ptr() == inp.weight.data_ptr():
        raise ModelError("merging tied an untied head to the embedding (a peft change?)")


def merged_model(lm: Any) -> Any:
    """The peft model of ``lm`` (loaded with merge=False) with its LoRA and token rows merged in."""
    model = lm.model
    if not hasattr(model, "merge_and_unload"):
        raise ModelError(f"{lm.directory}: not an adapter (nothing to merge)")
    tied = bool(getattr(model.get_base_model().config, "tie_word_embeddings", False))
    merged = model.merge_and_unload()  # folds lora_A/B and trainable_tokens_delta into the base weights
    leftovers = [n for n, _ in merged.named_parameters() if any(p in n for p in PEFT_NAMES)]
    leftovers += [
        n for n, m in merged.named_modules() if hasattr(m, "base_layer") or hasattr(m, "token_adapter")
    ]
    if leftovers:
        raise ModelError(f"merging left peft modules in the model: {leftovers[:3]}")
    _tie(merged, tied)
    return merged


def _card(config: dict[str, Any], adapter_dir: str) -> str:
    tokens = (config.get("token_map") or {}).get("refuse"), (config.get("token_map") or {}).get("respond")
    base = config.get("base_model")
    return "\n".join(
        [
            "---",
            "library_name: transformers",
            f"base_model: {orjson.dumps(base).decode()}",
            "tags: [rtools, refusal-tokens, merged]",
            "---",
            "",
            "# Refusal-token model (merged)",
            "",
            f"The rt-lora adapter `{adapter_dir}` merged into its base `{base}`: a standalone model that "
            "plain transformers and serving engines (vLLM) load. The first assistant token is a control "
            "token, and the probability of the refusal token(s) there is the refusal score "
            "(Jain et al., arXiv 2412.06748).",
            "",
            "```sh",
            "rt-score prompts.jsonl --model THIS_DIRECTORY > scored.jsonl",
            "rt-score prompts.jsonl --model THIS_DIRECTORY --engine vllm > scored.jsonl   # on a GPU host",
            "```",
            "",
            f"- control tokens: {tokens} (the token map is rtools_tokens.json)",
            "- the recipe, the training summary and the base model's identity: `merged_from` in "
            "rtools_config.json",
            "",
        ]
    )


def write_merged(
    adapter_dir: str,
    target: str,
    base: str | None = None,
    dtype: str | None = None,
    device: str = "cpu",
    trust_remote_code: bool = False,
    quiet: bool = True,
) -> dict[str, Any]:
    """Write the merged model of ``adapter_dir`` into ``target`` (a directory that need not exist yet,
    e.g. inside an atomic_directory being built). Returns a summary. See :func:`merge_adapter`."""
    import torch

    spec, base_dir = adapter_base(adapter_dir, base)
    base_config = check_mergeable(base_dir)
    store = saved_dtype(base_config, dtype)
    cfg = read_rtools_config(adapter_dir)
    lm = load_for_inference(
        adapter_dir,
        device=device,
        dtype="fp32",
        merge=False,
        base=base,
        trust_remote_code=trust_remote_code,
        quiet=quiet,
    )
    model = merged_model(lm)
    model.to(getattr(torch, store))
    model.config.dtype = store
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    quiet_transformers()  # no "Writing model shards" bar
    os.makedirs(target, exist_ok=True)
    model.save_pretrained(target, safe_serialization=True)
    lm.tokenizer.save_pretrained(target)
    lm.token_map.save(target)
    control_ids = lm.tokenizer.convert_tokens_to_ids(lm.token_map.tokens())
    meta = {
        "base_model": cfg.get("base_model") or spec,
        "control_token_ids": control_ids,
        "token_map": lm.token_map.to_dict(),
        "dtype": store,
        "tie_word_embeddings": tied,
        "merged_from": {
            "adapter": os.path.abspath(adapter_dir),
            "base_model": spec,
            "base_identity": cfg.get("base_identity"),
            "training": cfg.get("training"),
            "summary": cfg.get("summary"),
            "rtools_version": cfg.get("rtools_version"),
        },
        "rtools_version": __version__,
    }
    atomic_write_json(os.path.join(target, CONFIG_FILE), meta)
    atomic_write_bytes(os.path.join(target, CARD_FILE), _card(meta, adapter_dir).encode())
    _strip_config(target)
    leftovers = peft_leftovers(target)
    if leftovers:
        raise ModelError(f"the merged model still holds peft names: {leftovers[:5]}")
    if not os.path.isfile(os.path.join(target, TOKEN_MAP_FILE)):  # pragma: no cover - token_map.save wrote it
        raise ModelError(f"{target}: no {TOKEN_MAP_FILE}")
    return {
        "merged_from": adapter_dir,
        "base_model": spec,
        "dtype": store,
        "tie_word_embeddings": tied,
        "vocab_size": int(model.get_input_embeddings().weight.shape[0]),
        "control_token_ids": control_ids,
    }


def _strip_config(directory: str) -> None:
    """Drop keys from config.json that a merged model must not carry (none are written today by
    transformers 5.24; kept so that a future peft/transformers version cannot leak them)."""
    path = os.path.join(directory, "config.json")
    with open(path, "rb") as fh:
        config = json.loads(fh.read())
    bad = [k for k in config if k in PEFT_CONFIG_KEYS]
    if bad:
        for k in bad:
            del config[k]
        atomic_write_bytes(path, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())


def merge_adapter(
    adapter_dir: str,
    out: str,
    base: str | None = None,
    dtype: str | None = None,
    device: str = "cpu",
    overwrite: bool = False,
    trust_remote_code: bool = False,
    quiet: bool = True,
) -> dict[str, Any]:
    """Merge the rt-lora adapter in ``adapter_dir`` into its base and write the standalone model to
    ``out``, atomically (``overwrite`` replaces an existing ``out``). ``base``: where the adapter's base
    model is now, if it has moved; ``dtype``: of the stored weights (fp32, bf16, fp16; default the
    base's own); ``device``: where the merge runs (the base is loaded there in fp32: 4 bytes a
    parameter). Returns a summary (``out``, ``merged_from``, ``base_model``, ``dtype``,
    ``tie_word_embeddings``, ``vocab_size``, ``control_token_ids``). CLI: ``rt-lora --merge-only``.
    An ``out`` that is, holds or lies inside the adapter or its base is a ConfigError (field ``out``),
    before anything is written.
    """
    try:
        directory = model_directory(adapter_dir)
    except ModelError as e:
        raise ModelError(f"cannot merge: {e}") from None
    if not is_adapter_dir(directory):
        raise ModelError(
            f"{adapter_dir} is not an rt-lora adapter (no {ADAPTER_CONFIG}): nothing to merge "
            "(a merged model can be used as it is)"
        )
    _, base_dir = adapter_base(directory, base)
    apart = check_apart(out, [("the adapter", directory), ("its base model", base_dir)], shown=f"out={out}")
    if apart is not None:  # before anything is written
        raise ConfigError(apart, "out")
    if os.path.exists(out) and not overwrite:
        raise ModelError(f"{out} already exists (set overwrite=True to replace it)")
    check_writable(out)
    check_mergeable(base_dir)  # before anything is loaded
    with atomic_directory(out, overwrite=overwrite) as tmp:
        summary = write_merged(
            directory,
            tmp,
            base=base,
            dtype=dtype,
            device=device,
            trust_remote_code=trust_remote_code,
            quiet=quiet,
        )
    return {"out": out, **summary}


__all__ = ["merge_adapter", "write_merged", "peft_leftovers", "PEFT_NAMES"]
