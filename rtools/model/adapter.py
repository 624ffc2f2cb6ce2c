"""The adapter rt-lora trains and writes: peft's LoRA around the base model with trainable
control-token rows (:func:`make_peft_model`), the optimizer's parameter groups, and the adapter
directory (:func:`write_adapter`), whose place is checked before any work (:func:`check_writable`).

An adapter directory holds peft's adapter (the LoRA weights and the trained token rows, without the
resized embedding, which is rebuilt exactly at load time), the tokenizer, the token map, rtools'
own configuration (rtools_config.json: the base model's place and identity, the recipe, the summary),
the training log and a model card. rt-score, rt-generate and rt-lora --merge-only load it.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import orjson

from ..records import atomic_write_json
from ..tokens import TokenMap
from .card import LOG_FILE, write_model_card
from .loading import CONFIG_FILE, ModelError


def check_writable(out: str) -> None:
    """Fail before any work when ``out`` cannot be written: its nearest existing ancestor must be a
    directory in which a file can really be created (a probe, so that it holds for root too)."""
    parent = os.path.dirname(os.path.abspath(out))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ModelError(f"cannot write {out}: {parent} is not a directory")
    try:
        probe = tempfile.mkdtemp(prefix=".rtools-probe.", dir=parent)
    except OSError as e:
        raise ModelError(f"cannot write {out}: {parent} is not writable ({e.strerror or e})") from None
    os.rmdir(probe)


def _module_name(model: Any, module: Any) -> str:
    for n, m in model.named_modules():
        if m is module:
            return n.split(".")[-1]
    raise ModelError("cannot find the embedding module by name")


def make_peft_model(model: Any, token_ids: list[int], config: Any) -> Any:
    """peft's LoRA around ``model``, with the rows of ``token_ids`` (the control tokens) trainable in
    the embedding (and in the head, when it is not tied to it). ``config``: a TrainConfig resolved
    for its device (TrainConfig.resolved: ``load_4bit`` and ``gradient_checkpointing`` decided)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if config.load_4bit:
        # use_reentrant=False: reentrant checkpointing runs the backward of a layer outside the
        # autograd graph DDP hooks into (its gradients would escape the reduction)
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=config.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    inp = model.get_input_embeddings()
    outp = model.get_output_embeddings()
    tied = outp is not None and outp.weight is inp.weight
    if tied or outp is None:
        tti: Any = list(token_ids)
    else:
        tti = {_module_name(model, inp): list(token_ids), _module_name(model, outp): list(token_ids)}
    layers: dict[str, Any] = {}
    targets = config.target_modules
    if config.lora_layers:  # the top N decoder layers only: the layers below them stay the base's
        n = _num_layers(model)
        layers["layers_to_transform"] = list(range(max(0, n - config.lora_layers), n))
        if targets == "all-linear":  # peft takes layers_to_transform with a list of names only
            targets = _linear_names(model)
    lcfg = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
        trainable_token_indices=tti,
        **layers,
    )
    model = get_peft_model(model, lcfg)
    if config.token_lr == 0:  # rows frozen where they start (a probe's: init_rows='probe'): no gradient
        for n, p in model.named_parameters():
            if "trainable_tokens" in n:
                p.requires_grad_(False)
    return model


def _linear_names(model: Any) -> list[str]:
    """What peft's "all-linear" means, as names: every linear layer's name but the vocabulary head's."""
    import torch

    head = model.get_output_embeddings()
    return sorted(
        {
            n.split(".")[-1]
            for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and m is not head
        }
    )


def _num_layers(model: Any) -> int:
    cfg = model.config
    cfg = getattr(cfg, "text_config", None) or cfg
    n = getattr(cfg, "num_hidden_layers", None)
    if not isinstance(n, int) or n < 1:
        raise ModelError("lora_layers: the model's config names no num_hidden_layers", ("lora_layers",))
    return n


def param_groups(model: Any, lr: float, token_lr: float, weight_decay: float) -> list[dict[str, Any]]:
    """The LoRA weights at ``lr`` with ``weight_decay``, the control-token rows at their own ``token_lr``
    without decay (new rows start far from where they must go)."""
    tok, other = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (tok if "trainable_tokens" in n else other).append(p)
    groups = [{"params": other, "lr": lr, "weight_decay": weight_decay, "name": "lora"}]
    if tok:
        groups.append({"params": tok, "lr": token_lr, "weight_decay": 0.0, "name": "tokens"})
    return groups


def write_adapter(
    directory: str,
    model: Any,
    tokenizer: Any,
    token_map: TokenMap,
    base_spec: str,
    config: dict[str, Any],
    log: list[dict[str, Any]],
    name: str,
    records: list[tuple[int, dict[str, Any]]],
    state_dict: dict[str, Any] | None = None,
) -> None:
    """Write the adapter directory into ``directory`` (an atomic_directory being built): the peft
    ``model``'s adapter (``state_dict``: its trainable weights gathered whole, under FSDP), the
    tokenizer and the token map, ``config`` as rtools_config.json, the training ``log`` and the
    model card of the data (``name``, ``records``). ``base_spec``: the base model as named
    (adapter_config.json records it, not a cache path)."""
    # the resized embedding is rebuilt exactly at load time; the trained rows travel in the adapter
    model.save_pretrained(
        directory, safe_serialization=True, save_embedding_layers=False, state_dict=state_dict
    )
    _fix_adapter_base(directory, base_spec)
    tokenizer.save_pretrained(directory)
    token_map.save(directory)
    atomic_write_json(os.path.join(directory, CONFIG_FILE), config)
    with open(os.path.join(directory, LOG_FILE), "wb") as fh:
        for e in log:
            fh.write(orjson.dumps(e, option=orjson.OPT_APPEND_NEWLINE))
    write_model_card(directory, name, records)  # README.md, over peft's empty template


def _fix_adapter_base(directory: str, spec: str) -> None:
    """Record the portable base-model spec (not a cache path) in adapter_config.json."""
    p = os.path.join(directory, "adapter_config.json")
    with open(p) as fh:
        d = json.load(fh)
    d["base_model_name_or_path"] = spec
    with open(p, "w") as fh:
        json.dump(d, fh, indent=2, sort_keys=True)
