"""Number formats on CPU: bf16 matrix products where the CPU has bf16 instructions, fp32 elsewhere.

On a CPU with native bf16 dot products (AVX512-BF16, or AMX-BF16 tiles) a bf16 matrix product
runs about twice (AVX512-BF16) to seven times (AMX) as fast as fp32. Turning the whole model to
bf16 is not the way to use that: the residual stream, the norms and the attention softmax then
round to 8 bits of mantissa in every layer, a LoRA delta merged into a bf16 weight is mostly
rounded away, and the vocabulary head's logits move by a few hundredths. Measured on the default
model (bench/README.md), that moved p_refuse by up to 0.085, and CPU attention kernels run
*slower* in bf16 than in fp32.

So "bf16 on CPU" here means mixed precision (``mix_bf16``):

* the weights of the body's ``nn.Linear`` layers (attention and MLP projections: ~80% of the
  parameters and ~95% of the FLOPs) are stored in bf16 and multiplied in bf16 (fp32 accumulation);
  a layer casts its input to bf16 and returns bf16;
* everything else stays fp32: the embedding and the vocabulary head (so the scored logits are
  fp32), the norms, rotary embeddings, the residual stream (bf16 outputs are added to it in fp32),
  and attention (``ATTENTION``: q, k, v cast to fp32 before ``scaled_dot_product_attention``);
* LoRA weights and trainable token rows stay fp32 (peft keeps adapter weights fp32 on a bf16 base).

The conversion happens after loading (and after merging an adapter, which is done in fp32), so the
files on disk never change. On CUDA the model is loaded in bf16 as before.
"""

from __future__ import annotations

import functools
from typing import Any

#: The name under which the fp32 attention is registered with transformers.
ATTENTION = "rtools_sdpa_fp32"
#: Set on a model converted by ``mix_bf16``.
MIXED_ATTR = "_rtools_mixed_bf16"


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_native_bf16(override: bool | None = None) -> bool:
    """Whether this CPU multiplies bf16 natively (AMX-BF16 or AVX512-BF16).

    Reads /proc/cpuinfo's flags, else asks torch (``torch.cpu._is_avx512_bf16_supported``).
    ``override`` (a configuration's ``cpu_bf16``; the commands take it from ``RT_CPU_BF16=0``/``=1``)
    replaces the answer: the test suite pins it to off, so that its exact comparisons do not depend
    on the CPU a test runs on. No environment variable is read here.
    """
    if override is not None:
        return bool(override)
    return _detect_native_bf16()


#: /proc/cpuinfo flags of bf16 matrix units: AMX tiles (Intel Sapphire Rapids and later) or
#: AVX512-BF16 dot products (Intel Cooper Lake, AMD Zen 4 and later).
BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


def native_bf16(flags: set[str] | frozenset[str]) -> bool:
    """Whether a CPU with these /proc/cpuinfo flags has bf16 matrix units."""
    return bool(BF16_FLAGS & set(flags))


@functools.lru_cache(maxsize=1)
def _detect_native_bf16() -> bool:
    flags = _cpu_flags()
    if flags:
        return native_bf16(flags)
    try:
        import torch

        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - another torch
        return False


def _bf16_linear_forward(self: Any, x: Any) -> Any:
    import torch.nn.functional as F

    return F.linear(x.to(self.weight.dtype), self.weight, self.bias)


@functools.lru_cache(maxsize=1)
def _bf16_linear_class() -> type:
    import torch

    return type("Bf16Linear", (torch.nn.Linear,), {"forward": _bf16_linear_forward})


def _fp32_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any):
    """transformers' sdpa attention, computed in fp32 whatever the dtypes of q, k and v."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    with torch.autocast(query.device.type, enabled=False):
        return sdpa_attention_forward(
            module, query.float(), key.float(), value.float(), attention_mask, **kwargs
        )


@functools.lru_cache(maxsize=1)
def register_attention() -> str:
    """Register ``ATTENTION`` (fp32 sdpa) with transformers' attention and mask interfaces."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, _fp32_attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)
    return ATTENTION


def is_mixed(model: Any) -> bool:
    m = model.get_base_model() if hasattr(model, "get_base_model") else model
    return bool(getattr(m, MIXED_ATTR, False))


def mix_bf16(model: Any) -> Any:
    """Convert a (fp32) causal LM in place to bf16 matrix products with fp32 everything else.

    Returns the model. Layers shared with the embedding or the head (tied weights) stay fp32.
    """
    import torch

    keep = set()
    for emb in (model.get_input_embeddings(), model.get_output_embeddings()):
        if emb is not None:
            base = emb.get_base_layer() if hasattr(emb, "get_base_layer") else emb
            keep.add(id(base.weight))
    cls = _bf16_linear_class()
    for name, module in model.named_modules():
        if ".lora_" in name or "trainable_tokens" in name:
            continue  # adapter weights stay fp32
        if type(module) is torch.nn.Linear and id(module.weight) not in keep:
            module.weight.data = module.weight.data.to(torch.bfloat16)
            if module.bias is not None:
                module.bias.data = module.bias.data.to(torch.bfloat16)
            module.__class__ = cls
    try:
        model.set_attn_implementation(register_attention())
    except (AttributeError, ValueError) as e:  # pragma: no cover - a model without the attention interface
        raise RuntimeError(f"bf16 on CPU needs a model using transformers' attention interface: {e}") from e
    setattr(model, MIXED_ATTR, True)
    return model
