"""rt-lora's training: LoRA / QLoRA supervised fine-tuning that learns the refusal *decision*.

What plain next-token SFT gets wrong (../docs/FINDINGS): the control token is one position among
~100 answer tokens, so it receives ~1% of the gradient and the model learns the marginal rate of
refusals, not the decision. The loss here is, per example,

    answer_loss                                  mean CE over the answer tokens (after the token)
  + control_weight  * CE(control token)          full-vocabulary CE at the first assistant position
  + decision_weight * CE(restricted)             CE over the control tokens only (the decision)

with examples re-weighted so that refusal and respond rows count equally (``balance``), and the
new token rows trained at their own learning rate (``token_lr``). The defaults are the ones that
measured best (see bench/recipe.py and the README).

Loss is computed only on assistant tokens: the control token and the answer, never the prompt.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from ..config import ConfigError
from ..records import RecordError, atomic_directory, atomic_write_json
from ..tokens import CATEGORY, SINGLE, TokenMap, category_token
from .card import write_model_card
from .chat import ChatEncoder, record_messages
from .identity import IdentityError, base_identity
from .identity import fingerprint as fingerprint_of
from .loading import (
    CONFIG_FILE,
    DEFAULT_MODEL,
    ModelError,
    add_control_tokens,
    is_adapter_dir,
    load_base,
    load_tokenizer,
    model_directory,
    model_identity,
    pick_device,
    read_rtools_config,
    resolve_model,
    torch_dtype,
)

CHECKPOINT_SUFFIX = ".checkpoint"
LOG_FILE = "train_log.jsonl"


@dataclass(frozen=True)
class TrainConfig:
    """Everything rt-lora's training takes, validated when it is made (:class:`ConfigError`, a
    ValueError naming the field), so that a contradiction is refused before a model is loaded.

    ``out``: the directory to write. ``model``: the base model (None: the embedded default).
    ``load_4bit`` and ``gradient_checkpointing``: None means on with CUDA, off on CPU; ``device``
    None picks CUDA when there is one; ``dtype`` None (or ``auto``) as rtools.model.loading.torch_dtype
    (``cpu_bf16``: whether this CPU has bf16 units, None detects it; not saved: the dtype it resolves to is).
    The other fields are the recipe (see the module docstring).
    """

    out: str
    model: str | None = None
    epochs: float = 3.0
    max_steps: int | None = None
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 2e-4
    token_lr: float = 5e-3
    weight_decay: float = 0.0
    warmup: float = 0.05
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: str = "all-linear"
    control_weight: float = 2.0
    decision_weight: float = 2.0
    balance: bool = True
    max_answer_tokens: int | None = 128
    max_length: int = 1024
    eval_fraction: float = 0.1
    seed: int = 0
    load_4bit: bool | None = None  # None: on CUDA yes, on CPU no
    dtype: str | None = None
    gradient_checkpointing: bool | None = None  # None: on CUDA yes, on CPU no
    save_every: int = 0  # steps between checkpoints; 0 = every 10% of training
    device: str | None = None
    trust_remote_code: bool = False
    merge: bool = False
    cpu_bf16: bool | None = None
    fsdp: bool = False  # under a launcher: shard the model across the processes (FSDP) instead of DDP

    def __post_init__(self) -> None:
        positive = ("epochs", "batch_size", "grad_accum", "lr", "lora_r", "lora_alpha", "max_length")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)!r}", name)
        for name in ("token_lr", "weight_decay", "control_weight", "decision_weight"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}", name)
        for name in ("max_steps", "max_answer_tokens"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ConfigError(f"{name} must be positive (or None), got {v!r}", name)
        for name, hi in (("warmup", 1.0), ("lora_dropout", 1.0), ("eval_fraction", 0.5)):
            if not 0 <= getattr(self, name) <= hi:
                raise ConfigError(f"{name} must be in [0, {hi:g}], got {getattr(self, name)!r}", name)
        if self.save_every < 0:
            raise ConfigError(f"save_every must be >= 0, got {self.save_every!r}", "save_every")
        if self.dtype not in (None, "auto", "fp32", "bf16", "fp16"):
            raise ConfigError(f"dtype must be auto, fp32, bf16 or fp16, got {self.dtype!r}", "dtype")

    def resolved(self, device: str) -> dict[str, Any]:
        d = asdict(self)
        del d["cpu_bf16"]  # how "auto" was resolved: the dtype it gives is recorded
        d["device"] = device
        # 4-bit by default on CUDA, but not sharded (FSDP shards the bf16 base; 4-bit is refused there)
        d["load_4bit"] = (
            self.load_4bit if self.load_4bit is not None else device.startswith("cuda") and not self.fsdp
        )
        d["gradient_checkpointing"] = (
            self.gradient_checkpointing
            if self.gradient_checkpointing is not None
            else device.startswith("cuda")
        )
        return d


@dataclass
class Example:
    ids: list[int]
    labels_from: int  # index of the control token; loss on ids[labels_from:]
    label: str  # refuse / respond
    control: int  # index into token_map.tokens()
    line: int
    weight: float = 1.0


@dataclass
class Progress:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    tokens: int = 0
    log: list[dict[str, Any]] = field(default_factory=list)


#: Settings a resumed run may change: they do not change what is trained.
RESUME_FREE = frozenset({"out", "save_every", "merge", "device", "trust_remote_code", "fsdp"})
#: ... and these may change together when the global batch (batch_size x world_size) stays the same.
RESUME_GLOBAL = frozenset({"batch_size", "world_size"})


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


def data_fingerprint(train_ex: list[Example], eval_ex: list[Example]) -> str:
    """sha256 of the examples actually used (token ids, loss span, control token; training and held-out)."""
    h = hashlib.sha256()
    for part in (train_ex, eval_ex):
        h.update(orjson.dumps([[e.ids, e.labels_from, e.control] for e in part]))
        h.update(b"|")
    return h.hexdigest()


# ---------------------------------------------------------------------------
# Data


def infer_token_map(records: list[tuple[int, dict[str, Any]]]) -> TokenMap:
    """The token map implied by tagged data: category mode if any answer starts with [refuse:slug]."""
    slugs: list[str] = []
    for _, r in records:
        msgs = r.get("messages")
        if isinstance(msgs, list) and msgs and isinstance(msgs[-1], dict):
            c = msgs[-1].get("content")
            if isinstance(c, str) and c.startswith("[refuse:"):
                slug = c[len("[refuse:") :].split("]", 1)[0]
                if slug and slug not in slugs:
                    slugs.append(slug)
    if slugs:
        return TokenMap.category(slugs=slugs, tokens={s: category_token(s) for s in slugs})
    return TokenMap.single()


def build_examples(
    records: list[tuple[int, dict[str, Any]]],
    encoder: ChatEncoder,
    token_map: TokenMap,
    name: str,
    max_answer_tokens: int | None,
    max_length: int,
) -> tuple[list[Example], list[int]]:
    """Tagged chat records -> token ids with the loss span. Returns (examples, lines skipped as too long).

    An example longer than ``max_length`` keeps its whole prompt and its control token, and loses the
    tail of its answer. One whose prompt, control token and first answer token do not fit is never
    cut (cutting the prompt would change the request; cutting the control token would train nothing):
    it is skipped, and its line is returned so that the caller reports it.
    """
    tokens = token_map.tokens()
    n_ref = len(tokens) - 1
    out: list[Example] = []
    skipped: list[int] = []
    for line, r in records:
        msgs = r.get("messages")
        if not isinstance(msgs, list) or len(msgs) < 2:
            raise RecordError(
                "expected 'messages' ending with a tagged assistant answer (run rt-tag first)", name, line
            )
        last = msgs[-1]
        if (
            not isinstance(last, dict)
            or last.get("role") != "assistant"
            or not isinstance(last.get("content"), str)
        ):
            raise RecordError(
                "the last message must be the assistant answer {role: assistant, content}", name, line
            )
        content = last["content"]
        control = next((i for i, t in enumerate(tokens) if content.startswith(t)), None)
        if control is None:
            raise RecordError(
                f"the assistant answer does not start with a control token ({', '.join(tokens)})",
                name,
                line,
                hint="tag the data with rt-tag, or pass the token map rt-tag wrote",
            )
        answer = content[len(tokens[control]) :]
        prompt = record_messages({"messages": msgs[:-1]}, name, line)
        p_ids = encoder.encode_prompt(prompt, name, line)
        # counted as encode_answer encodes it: record text, after the control token
        truncated = (
            max_answer_tokens is not None
            and len(encoder.encode_content(answer, start=False)) > max_answer_tokens
        )
        a_ids = encoder.encode_answer(answer, max_tokens=max_answer_tokens, close=not truncated)
        ids = p_ids + [encoder.control_ids[control]] + a_ids
        if len(ids) > max_length:
            if len(p_ids) + 2 > max_length:
                skipped.append(line)
                continue
            ids = ids[:max_length]
        label = "refuse" if control < n_ref else "respond"
        out.append(Example(ids=ids, labels_from=len(p_ids), label=label, control=control, line=line))
    return out, skipped


def split_eval(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Hold out a stratified (by label) slice for evaluation."""
    if fraction <= 0:
        return examples, []
    rng = random.Random(seed + 7919)
    train, held = [], []
    for label in ("refuse", "respond"):
        group = [e for e in examples if e.label == label]
        rng.shuffle(group)
        k = int(round(len(group) * fraction))
        if len(group) >= 2:
            k = max(1, min(k, len(group) - 1))
        else:
            k = 0
        held += group[:k]
        train += group[k:]
    train.sort(key=lambda e: e.line)
    held.sort(key=lambda e: e.line)
    return train, held


def apply_balance(examples: list[Example]) -> None:
    n = len(examples)
    counts = {lab: sum(e.label == lab for e in examples) for lab in ("refuse", "respond")}
    present = [lab for lab, c in counts.items() if c]
    for e in examples:
        e.weight = n / (len(present) * counts[e.label])


def epoch_batches(examples: list[Example], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Deterministic length-bucketed batches for one epoch (same seed and epoch -> same batches)."""
    rng = random.Random(seed * 1000003 + epoch)
    idx = list(range(len(examples)))
    rng.shuffle(idx)
    chunk = batch_size * 16
    batches: list[list[int]] = []
    for s in range(0, len(idx), chunk):
        group = sorted(idx[s : s + chunk], key=lambda i: len(examples[i].ids))
        batches += [group[k : k + batch_size] for k in range(0, len(group), batch_size)]
    rng.shuffle(batches)
    return batches


# ---------------------------------------------------------------------------
# Model


def _module_name(model: Any, module: Any) -> str:
    for n, m in model.named_modules():
        if m is module:
            return n.split(".")[-1]
    raise ModelError("cannot find the embedding module by name")


def make_peft_model(model: Any, token_ids: list[int], cfg: dict[str, Any]) -> Any:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if cfg["load_4bit"]:
        # use_reentrant=False: reentrant checkpointing runs the backward of a layer outside the
        # autograd graph DDP hooks into (its gradients would escape the reduction)
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=cfg["gradient_checkpointing"],
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif cfg["gradient_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    inp = model.get_input_embeddings()
    outp = model.get_output_embeddings()
    tied = outp is not None and outp.weight is inp.weight
    if tied or outp is None:
        tti: Any = list(token_ids)
    else:
        tti = {_module_name(model, inp): list(token_ids), _module_name(model, outp): list(token_ids)}
    lcfg = LoraConfig(
        r=cfg["lora_r"],
        lora_alpha=cfg["lora_alpha"],
        lora_dropout=cfg["lora_dropout"],
        target_modules=cfg["target_modules"],
        task_type="CAUSAL_LM",
        trainable_token_indices=tti,
    )
    return get_peft_model(model, lcfg)


def param_groups(model: Any, lr: float, token_lr: float, weight_decay: float) -> list[dict[str, Any]]:
    tok, other = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (tok if "trainable_tokens" in n else other).append(p)
    groups = [{"params": other, "lr": lr, "weight_decay": weight_decay, "name": "lora"}]
    if tok:
        groups.append({"params": tok, "lr": token_lr, "weight_decay": 0.0, "name": "tokens"})
    return groups


def lr_factor(step: int, total: int, warmup: int) -> float:
    """The learning rate of optimizer step ``step`` (from 0) as a fraction of the base rate: a linear
    warm-up over ``warmup`` steps that reaches 1 at its last step ((step + 1) / warmup), then a
    linear decay to 0 at ``total``.

    Kept rather than ``transformers.get_scheduler`` because no scheduler there gives these numbers
    exactly (tests/test_schedule.py checks both claims against the installed transformers):
    ``linear`` warms up as step / warmup (its first step has rate 0), and shifting its steps by one
    then leaves the decay's denominator off by one; ``warmup_stable_decay`` with the shift (one
    stable step, linear decay over total - warmup) is the same schedule, but computes the decay as
    1 - (step - warmup) / (total - warmup), which is an ulp away from (total - step) / (total - warmup)
    on about a quarter of the steps, so a run would not reproduce the measured recipe bit for bit.
    """
    if warmup and step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def _token_adapter(module: Any) -> Any:
    """peft's trainable-token layer inside a wrapper, when it is active, unmerged and simple."""
    adapter = getattr(module, "token_adapter", None)
    if adapter is None or getattr(adapter, "merged", False) or getattr(adapter, "disable_adapters", False):
        return None
    names = adapter.active_adapters
    if len(names) != 1 or names[0] not in adapter.trainable_tokens_delta:
        return None
    base = adapter.get_base_layer()
    if getattr(base, "bias", None) is not None or hasattr(base, "embed_scale"):
        return None
    return adapter, names[0]


def fast_embed(model: Any, ids: Any) -> Any:
    """Input embeddings: the frozen table, with the trainable control-token rows put in place.

    Same values as peft's wrapper, which rebuilds the whole table and makes a dense gradient for it
    on every step; here only the few control-token rows carry a gradient.
    """
    import torch

    emb = model.get_input_embeddings()
    found = _token_adapter(emb)
    if found is None:
        return emb(ids)
    adapter, name = found
    out = torch.nn.functional.embedding(ids, adapter.get_base_layer().weight)
    rows = adapter.trainable_tokens_delta[name]
    for j, tid in enumerate(adapter.token_indices[name]):
        out = torch.where((ids == tid).unsqueeze(-1), rows[j].to(out.dtype), out)
    return out


def _bf16_copy(layer: Any) -> Any:
    """A bf16 copy of a frozen layer's weight, made once and kept on the layer."""
    import torch

    W = layer.weight
    cached = getattr(layer, "_rtools_bf16_weight", None)
    if cached is None or cached[0] != (W.data_ptr(), W._version):
        cached = ((W.data_ptr(), W._version), W.detach().to(torch.bfloat16))
        layer._rtools_bf16_weight = cached
    return cached[1]


def fast_head(head: Any, h: Any, bf16: bool = False) -> Any:
    """Vocabulary logits: a matmul with the frozen head, then the control-token columns from their rows.

    Same values as peft's wrapper, without the full-vocabulary weight gradient it computes. With
    ``bf16`` (mixed precision on CPU) the frozen head's product runs in bf16 (a copy of its
    weight); the control-token columns, whose logits the decision is made of, stay fp32.
    """
    import torch

    found = _token_adapter(head)
    if found is None:
        return head(h)
    adapter, name = found
    base = adapter.get_base_layer()
    if bf16 and h.dtype == torch.float32:
        logits = torch.nn.functional.linear(h.to(torch.bfloat16), _bf16_copy(base)).float()
    else:
        logits = torch.nn.functional.linear(h, base.weight)
    rows = adapter.trainable_tokens_delta[name]
    cols = torch.nn.functional.linear(h, rows.to(h.dtype))
    idx = torch.tensor(adapter.token_indices[name], device=logits.device)
    return logits.index_copy(-1, idx, cols.to(logits.dtype))


def batch_loss(
    model: Any,
    examples: list[Example],
    batch: list[int],
    control_ids: Any,
    cfg: dict[str, Any],
    pad_id: int,
    device: str,
    objective: Any = None,
    totals: tuple[float, int] | None = None,
) -> tuple[Any, dict[str, float], int]:
    """Weighted loss of one batch (objective.DecisionLoss). Returns (loss, parts, tokens).

    ``objective``: the DecisionLoss around ``model`` (made here when not given; train() makes one
    and calls it for every batch), or the DDP wrapper around it. ``totals``: (weight, size) of the
    global batch when ``batch`` is one rank's shard of it (see DecisionLoss).
    """
    from .objective import PARTS, DecisionLoss, collate

    if objective is None:
        objective = DecisionLoss(
            model,
            control_ids.tolist() if hasattr(control_ids, "tolist") else control_ids,
            cfg["control_weight"],
            cfg["decision_weight"],
        )
    inputs = collate([examples[i] for i in batch], pad_id, device)
    if totals is None:
        loss, parts = objective(**inputs)
    else:
        loss, parts = objective(**inputs, total_weight=totals[0], total_count=totals[1])
    return loss, dict(zip(PARTS, parts.tolist(), strict=True)), int(inputs["attention_mask"].sum())


# ---------------------------------------------------------------------------
# Checkpoints
#
# A checkpoint is data only, never code: tensors in safetensors files (the trainable parameters,
# the optimizer's state, the torch RNG states) and everything else in JSON (progress, the optimizer's
# hyper-parameters, the python and numpy RNG states, the fingerprints of the configuration and
# the data). Nothing is unpickled on --resume; an old or crafted pickle (state.pt) is refused.

PARAMS_FILE = "params.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"
STATE_FILE = "state.json"
PROGRESS_FILE = "progress.json"


def _rng_state(all_cuda: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensors, JSON) of the torch, CUDA (``all_cuda``: every GPU's; a rank of a launched run
    saves its own GPU's state, _rank_rng), numpy and python RNG states."""
    import numpy as np
    import torch

    tensors = {"torch": torch.get_rng_state()}
    if all_cuda and torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    js = {
        "python": {"version": version, "state": list(internal), "gauss_next": gauss},
        "numpy": {
            "kind": kind,
            "keys": [int(k) for k in keys],
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
    }
    return tensors, js


def _set_rng_state(tensors: dict[str, Any], js: dict[str, Any]) -> None:
    import numpy as np
    import torch

    py = js["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    n = js["numpy"]
    np.random.set_state(
        (n["kind"], np.array(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(tensors["torch"])
    cuda = [
        tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k[5:]))
    ]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def _optimizer_state(sd: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """An optimizer's state_dict split into (tensors, JSON)."""
    import torch

    tensors: dict[str, Any] = {}
    other: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                other.setdefault(str(pid), {})[k] = v
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "state": other}


def _optimizer_state_dict(tensors: dict[str, Any], js: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, t in tensors.items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = t
    for pid, st in js["state"].items():
        state.setdefault(int(pid), {}).update(st)
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in js["param_groups"]]
    return {"state": state, "param_groups": groups}


def save_checkpoint(
    path: str,
    model: Any,
    opt: Any,
    progress: Progress,
    cfg: dict[str, Any],
    fingerprint: dict[str, Any] | None = None,
    rank_rngs: list[dict[str, Any]] | None = None,
    whole: tuple[dict[str, Any], dict[str, Any]] | None = None,
) -> None:
    """Write the checkpoint (on several ranks: rank 0, with ``rank_rngs``, every rank's RNG states
    as _rank_rng gives them; under FSDP ``whole``: the trainable parameters and the optimizer state
    gathered whole, rtools.model.distributed.full_trainable / full_optimizer_state)."""
    from safetensors.torch import save_file

    from .distributed import full_optimizer_state, full_trainable

    params, opt_sd = whole if whole is not None else (full_trainable(model), full_optimizer_state(opt))
    with atomic_directory(path, overwrite=True) as tmp:
        save_file(params, os.path.join(tmp, PARAMS_FILE))
        opt_tensors, opt_js = _optimizer_state(opt_sd)
        save_file(opt_tensors, os.path.join(tmp, OPTIMIZER_FILE))
        rng_tensors, rng_js = _rng_state(all_cuda=rank_rngs is None)
        for r, states in enumerate(rank_rngs or []):
            rng_tensors.update({f"rank{r}.{k}": v for k, v in states.items()})
        save_file(rng_tensors, os.path.join(tmp, RNG_FILE))
        with open(os.path.join(tmp, STATE_FILE), "wb") as fh:
            fh.write(orjson.dumps({"optimizer": opt_js, "rng": rng_js}))
        with open(os.path.join(tmp, PROGRESS_FILE), "wb") as fh:
            fh.write(
                orjson.dumps(
                    {
                        "step": progress.step,
                        "epoch": progress.epoch,
                        "batch_in_epoch": progress.batch_in_epoch,
                        "tokens": progress.tokens,
                        "log": progress.log,
                        "config": cfg,
                        "fingerprint": fingerprint or {},
                    }
                )
            )


def _read_json(path: str) -> Any:
    try:
        with open(path, "rb") as fh:
            return orjson.loads(fh.read())
    except FileNotFoundError:
        raise ModelError(
            f"{path}: missing: the checkpoint is incomplete (start again without resume=True)"
        ) from None
    except (OSError, orjson.JSONDecodeError) as e:
        raise ModelError(f"{path}: cannot read the checkpoint: {e}") from None


def _read_tensors(path: str) -> dict[str, Any]:
    from safetensors.torch import load_file

    if not os.path.isfile(path):
        raise ModelError(f"{path}: missing: the checkpoint is incomplete (start again without resume=True)")
    try:
        return load_file(path)
    except Exception as e:  # SafetensorError, OSError: a truncated, corrupt or foreign file
        raise ModelError(
            f"{path}: not a valid safetensors file ({e}); the checkpoint is not loaded"
        ) from None


def check_checkpoint(path: str) -> dict[str, Any]:
    """The checkpoint's progress.json, after checking that the checkpoint is in the data-only format."""
    pickles = sorted(f for f in os.listdir(path) if f.endswith((".pt", ".pth", ".bin", ".pkl", ".pickle")))
    if pickles:
        raise ModelError(
            f"{os.path.join(path, pickles[0])}: a pickled checkpoint is never loaded (it could run code); "
            f"delete {path} and train again without resume=True"
        )
    return _read_json(os.path.join(path, PROGRESS_FILE))


def _rank_rng(device: str) -> dict[str, Any]:
    """This rank's torch RNG states: the CPU's, and its GPU's."""
    import torch

    states = {"torch": torch.get_rng_state()}
    if device.startswith("cuda"):
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def load_checkpoint(path: str, model: Any, opt: Any, rank: int = 0) -> Progress:
    """Restore the trainable weights, the optimizer and the RNG states (rank ``rank``'s own, when
    the checkpoint has them) into ``model`` and ``opt``; returns the progress."""
    import torch

    from .distributed import local_like, shard_optimizer_state

    pr = check_checkpoint(path)
    saved = _read_tensors(os.path.join(path, PARAMS_FILE))
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(saved) != set(params) or any(saved[n].shape != params[n].shape for n in params):
        raise ModelError(
            f"{os.path.join(path, PARAMS_FILE)}: the checkpoint does not match the model being trained"
        )
    state = _read_json(os.path.join(path, STATE_FILE))
    try:
        opt_sd = _optimizer_state_dict(_read_tensors(os.path.join(path, OPTIMIZER_FILE)), state["optimizer"])
        opt.load_state_dict(shard_optimizer_state(opt_sd, opt))
        rng = _read_tensors(os.path.join(path, RNG_FILE))
        _set_rng_state(rng, state["rng"])
        if f"rank{rank}.torch" in rng:
            torch.set_rng_state(rng[f"rank{rank}.torch"])
            if f"rank{rank}.cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state(rng[f"rank{rank}.cuda"], torch.cuda.current_device())
        progress = Progress(
            step=int(pr["step"]),
            epoch=int(pr["epoch"]),
            batch_in_epoch=int(pr["batch_in_epoch"]),
            tokens=int(pr["tokens"]),
            log=list(pr["log"]),
        )
    except ModelError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ModelError(
            f"{path}: a damaged checkpoint ({type(e).__name__}: {e}); train again without resume=True"
        ) from None
    with torch.no_grad():
        for n, t in saved.items():
            p = params[n]
            part = local_like(t, p)  # under FSDP: this rank's shard of the whole tensor
            if part is t:
                p.copy_(t.to(p.device, p.dtype))
            else:
                p.to_local().copy_(part.to_local())
    return progress


def checkpoint_config(path: str) -> dict[str, Any]:
    return check_checkpoint(path)["config"]


# ---------------------------------------------------------------------------
# The run


def evaluate(
    model: Any,
    examples: list[Example],
    control_ids: Any,
    cfg: dict[str, Any],
    pad_id: int,
    device: str,
    batch_size: int,
    objective: Any = None,
) -> dict[str, float]:
    """Held-out loss, and the decision's AUROC from p(refusal tokens) at the control position."""
    import torch

    if not examples:
        return {}
    model.eval()
    losses, wsum, scores, gold = 0.0, 0.0, [], []
    n_ref = len(control_ids) - 1
    with torch.no_grad():
        for s in range(0, len(examples), batch_size):
            batch = list(range(s, min(len(examples), s + batch_size)))
            loss, _, _ = batch_loss(model, examples, batch, control_ids, cfg, pad_id, device, objective)
            w = sum(examples[i].weight for i in batch)
            losses += float(loss) * w
            wsum += w
    # decision scores with the inference code path (rt-score's batching, last prompt position)
    from .distributed import gathered_root
    from .scoring import control_probabilities

    with gathered_root(objective):  # under FSDP the model is called here, not through the objective
        probs = control_probabilities(
            model,
            [e.ids[: e.labels_from] for e in examples],
            control_ids.tolist(),
            device=device,
            pad_id=pad_id,
        )
    for e, p in zip(examples, probs, strict=True):
        scores.append(sum(p[:n_ref]))
        gold.append(1 if e.label == "refuse" else 0)
    model.train()
    out = {"eval_loss": losses / max(wsum, 1e-12)}
    from ..metrics import auroc  # scikit-learn's, the one AUROC of rtools

    auc = auroc(gold, scores)
    if auc is not None:
        out["eval_auroc"] = auc
    out["eval_refusal_rate_refuse"] = _mean([s >= 0.5 for s, g in zip(scores, gold, strict=True) if g == 1])
    out["eval_refusal_rate_respond"] = _mean([s >= 0.5 for s, g in zip(scores, gold, strict=True) if g == 0])
    return {k: v for k, v in out.items() if v is not None}


def _mean(xs: list[bool]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def train(
    records: Iterable[Any],
    config: TrainConfig,
    name: str = "<input>",
    token_map: TokenMap | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress_bar: Callable[[int, int], Any] | None = None,
    log: Callable[[str], None] | None = None,
    world: Any = None,
) -> dict[str, Any]:
    """Train on tagged records and write ``config.out`` (the adapter directory rt-score loads).
    Returns the summary (steps, examples, tokens_per_s, the evaluation).

    ``records``: tagged records (rtools.tag's output), or ``(line, record)`` pairs so that errors name
    their line in ``name``. ``token_map``: default, inferred from the data. ``resume`` continues from
    ``config.out`` + ".checkpoint"; ``overwrite`` replaces an existing ``config.out``.
    ``progress_bar(total, initial)``, when given, returns the reporter of the run's steps (an
    object with ``update(n, **stats)`` and ``close()``, rtools.cli.progress_bar); ``log`` receives
    warnings. Without either the run is silent.

    ``world``: this process's rank among those a launcher started (rtools.model.distributed.World,
    inside distributed.start). ``config.batch_size`` is then per process: every rank trains on its
    shard of the same global batches of ``batch_size x world.size`` examples, and the run equals one
    process with that batch size. Rank 0 alone writes (``config.out``, checkpoints) and reports
    (``progress_bar``, ``log``); every rank returns the summary.
    """
    import torch

    from . import distributed as dd

    world = world or dd.SINGLE
    if not world.main:
        progress_bar, log = None, None
    sharded = config.fsdp and world.distributed
    say = log or (lambda s: None)
    records = [item if isinstance(item, tuple) else (n, item) for n, item in enumerate(records, 1)]
    out = os.path.abspath(config.out)
    ckpt = out + CHECKPOINT_SUFFIX
    # everything that can be known before the model is loaded is checked first
    if os.path.exists(out) and not overwrite:
        raise ModelError(f"{config.out} already exists (set overwrite=True to replace it)")
    if world.main:
        check_writable(config.out)
    spec = resolve_model(config.model)
    device = dd.rank_device(pick_device(config.device), world)
    cfg = config.resolved(device)
    cfg["world_size"] = world.size
    cfg["model"] = model_identity(spec)
    dtype = torch_dtype(config.dtype, device, config.cpu_bf16)
    # bf16 on CPU: bf16 matrix products in the frozen body, fp32 LoRA, token rows, norms and loss
    cfg["dtype"] = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    saved_fingerprint: dict[str, Any] = {}
    if resume:
        if not os.path.isdir(ckpt):
            raise ModelError(f"nothing to resume: no checkpoint at {ckpt}")
        saved = checkpoint_config(ckpt)
        saved.setdefault("world_size", 1)  # a checkpoint from before distributed training
        for key in cfg:
            if key in RESUME_FREE or key in RESUME_GLOBAL or key == "model":
                continue  # the base model is compared by its identity, below
            if key not in saved or saved[key] != cfg[key]:
                raise ModelError(
                    f"resume=True with a different setting: {key}={cfg[key]!r}, "
                    f"checkpoint has {saved.get(key, '(nothing)')!r}"
                )
        _check_global_batch(saved, cfg)
        saved_fingerprint = check_checkpoint(ckpt).get("fingerprint") or {}
        if "base" not in saved_fingerprint and saved.get("model") != cfg["model"]:
            raise ModelError(  # a checkpoint from before the base identity was recorded: by path
                f"resume=True with a different setting: model={cfg['model']!r}, "
                f"checkpoint has {saved.get('model', '(nothing)')!r}"
            )

    torch.manual_seed(config.seed)
    random.seed(config.seed)

    base_dir = model_directory(spec, quiet=progress_bar is None)
    if is_adapter_dir(base_dir):
        raise ModelError(
            f"{spec} is an rt-lora adapter, not a base model: train on its base model "
            f"({read_rtools_config(base_dir).get('base_model') or 'named in its adapter_config.json'})"
        )
    if sharded and cfg["load_4bit"]:
        raise ModelError(
            "fsdp=True with a 4-bit base is not supported: bitsandbytes' 4-bit weights can be sharded "
            "only when quantized with bnb_4bit_quant_storage equal to the compute dtype, and rtools "
            "quantizes for one device; shard the bf16 base (load_4bit=False: 2 bytes a parameter over "
            f"{world.size} processes), or train the 4-bit base data parallel (without fsdp=True)",
            ("fsdp", "load_4bit"),
        )
    identity = _identity_of(base_dir, spec)
    if resume and "base" in saved_fingerprint and saved_fingerprint["base"] != fingerprint_of(identity):
        raise ModelError(
            f"resume=True with a different base model: {spec} is not the base the checkpoint {ckpt} was "
            "trained on (its configuration or weights differ); resume with that base, wherever it is now, "
            "or train again without resume=True"
        )
    if config.merge:  # a base stored quantized cannot be merged into: say so before training
        from .merging import check_mergeable

        check_mergeable(base_dir)
    tok = load_tokenizer(base_dir, config.trust_remote_code)
    if token_map is None:
        token_map = infer_token_map(records)
    # sharded: each rank reads the base into host memory, and FSDP moves its shards to the device
    model = load_base(base_dir, device, dtype, cfg["load_4bit"], config.trust_remote_code, host=sharded)
    control_ids = add_control_tokens(model, tok, token_map)
    encoder = ChatEncoder(tok, token_map.tokens())

    examples, skipped = build_examples(
        records, encoder, token_map, name, config.max_answer_tokens, config.max_length
    )
    if skipped:
        shown = ", ".join(map(str, skipped[:20])) + (", ..." if len(skipped) > 20 else "")
        say(
            f"{name}: skipped {len(skipped)} of {len(records)} examples longer than max_length "
            f"{config.max_length} (prompt + control token + one answer token do not fit): lines {shown}"
        )
    if not examples:
        if skipped:
            raise ModelError(
                f"{name}: no training examples: all {len(skipped)} are longer than max_length {config.max_length}"
            )
        raise ModelError("no training examples (empty input?)")
    train_ex, eval_ex = split_eval(examples, config.eval_fraction, config.seed)
    fingerprint = {
        "data": data_fingerprint(train_ex, eval_ex),
        "examples": len(train_ex) + len(eval_ex),
        "base": fingerprint_of(identity),
    }
    if resume and saved_fingerprint.get("data") != fingerprint["data"]:
        raise ModelError(
            f"resume=True with different training data: the checkpoint was trained on "
            f"{saved_fingerprint.get('examples', '?')} examples (sha256 {str(saved_fingerprint.get('data'))[:12]}), "
            f"{name} gives {fingerprint['examples']} (sha256 {fingerprint['data'][:12]}); "
            "train with the same data and settings, or again without resume=True"
        )
    if config.balance:
        apply_balance(train_ex)
        apply_balance(eval_ex)
    counts = {lab: sum(e.label == lab for e in train_ex) for lab in ("refuse", "respond")}
    if min(counts.values()) == 0:
        say(f"warning: the training rows have only one class ({counts}); the decision cannot be learned")

    model = make_peft_model(model, control_ids, cfg)
    from .objective import DecisionLoss

    # the whole loss in one module's forward (what a DDP/FSDP wrapper would wrap)
    objective = DecisionLoss(model, control_ids, config.control_weight, config.decision_weight)
    # DDP around the objective on several ranks: the gradients of its forward are reduced
    # or, with fsdp, the objective sharded in place (one unit per decoder layer)
    module = dd.wrap(objective, world, device, fsdp=sharded)
    opt = torch.optim.AdamW(
        param_groups(model, config.lr, config.token_lr, config.weight_decay), betas=(0.9, 0.999)
    )
    base_lrs = [g["lr"] for g in opt.param_groups]
    global_batch = config.batch_size * world.size
    per_epoch = math.ceil(len(train_ex) / global_batch)
    steps_per_epoch = math.ceil(per_epoch / config.grad_accum)
    total = config.max_steps if config.max_steps else max(1, math.ceil(steps_per_epoch * config.epochs))
    warmup = int(total * config.warmup)
    save_every = config.save_every or max(1, total // 10)
    ctrl_ids_t = torch.tensor(control_ids, device=device)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0

    progress = Progress()
    if world.rank > 0:  # the same LoRA initialisation on every rank, its own dropout masks
        torch.manual_seed(config.seed * 1000003 + world.rank)
    if resume:
        progress = load_checkpoint(ckpt, model, opt, rank=world.rank)
        say(f"resuming at step {progress.step}/{total}")

    model.train()
    bar = progress_bar(total, progress.step) if progress_bar is not None else None
    t_start = time.perf_counter()
    tok_start = progress.tokens
    epoch = progress.epoch
    batch_in_epoch = progress.batch_in_epoch
    done = progress.step >= total
    while not done:
        batches = epoch_batches(train_ex, global_batch, config.seed, epoch)
        while batch_in_epoch < len(batches) and not done:
            t0 = time.perf_counter()
            group = batches[batch_in_epoch : batch_in_epoch + config.grad_accum]
            f = lr_factor(progress.step, total, warmup)
            for g, base in zip(opt.param_groups, base_lrs, strict=True):
                g["lr"] = base * f
            loss_v, ntok = 0.0, 0
            parts_acc: dict[str, float] = {}
            for j, b in enumerate(group):
                with dd.no_sync(module, j < len(group) - 1):
                    if world.distributed:
                        exs, local, totals = _shard(train_ex, b, world)
                    else:
                        exs, local, totals = train_ex, b, None
                    loss, parts, nt = batch_loss(
                        model, exs, local, ctrl_ids_t, cfg, pad_id, device, module, totals
                    )
                    # DDP averages the ranks' gradients: their shares are to be summed
                    (loss * (world.size / len(group))).backward()
                vals = dd.reduce_sum([float(loss), *parts.values(), nt], world, device)
                loss_v += vals[0] / len(group)
                ntok += int(vals[-1])
                for k, v in zip(parts, vals[1:-1], strict=True):
                    parts_acc[k] = parts_acc.get(k, 0.0) + v / len(group)
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            batch_in_epoch += len(group)
            progress.step += 1
            progress.tokens += ntok
            dt = time.perf_counter() - t0
            entry = {
                "step": progress.step,
                "epoch": epoch + batch_in_epoch / len(batches),
                "loss": round(loss_v, 6),
                **{f"loss_{k}": round(v, 6) for k, v in parts_acc.items()},
                "lr": opt.param_groups[0]["lr"],
                "tokens_per_s": round(ntok / max(dt, 1e-9), 1),
            }
            progress.log.append(entry)
            if bar is not None:
                bar.update(1, epoch=entry["epoch"], loss=loss_v, tokens=ntok)
            if progress.step >= total:
                done = True
            elif progress.step % save_every == 0:
                progress.epoch, progress.batch_in_epoch = epoch, batch_in_epoch
                rngs = dd.gather_rng(world, _rank_rng(device)) if world.distributed else None
                # under FSDP every rank takes part in gathering the shards, rank 0 writes
                whole = (dd.full_trainable(model), dd.full_optimizer_state(opt)) if sharded else None
                if world.main:
                    save_checkpoint(ckpt, model, opt, progress, cfg, fingerprint, rank_rngs=rngs, whole=whole)
        if batch_in_epoch >= len(batches):
            epoch += 1
            batch_in_epoch = 0
    if bar is not None:
        bar.close()
    elapsed = time.perf_counter() - t_start
    adapter_state = None
    if sharded:  # every rank runs the (sharded) evaluation and gathers the trained weights
        ev = evaluate(model, eval_ex, ctrl_ids_t, cfg, pad_id, device, config.batch_size, objective)
        adapter_state = dd.full_trainable(model)
    if not world.main:  # rank 0 evaluates and writes; the others wait for it (and write nothing)
        dd.barrier(world)
        return {"steps": progress.step, "examples": len(train_ex), "rank": world.rank}
    if not sharded:
        ev = evaluate(model, eval_ex, ctrl_ids_t, cfg, pad_id, device, config.batch_size, objective)
    if ev:
        progress.log.append({"step": progress.step, **{k: round(v, 6) for k, v in ev.items()}})
    summary = {
        "steps": progress.step,
        "examples": len(train_ex),
        "eval_examples": len(eval_ex),
        "skipped_too_long": len(skipped),
        "skipped_lines": skipped,
        "tokens_per_s": round((progress.tokens - tok_start) / max(elapsed, 1e-9), 1),
        **ev,
    }

    with atomic_directory(out, overwrite=overwrite) as tmp:
        # the resized embedding is rebuilt exactly at load time; the trained rows travel in the adapter
        model.save_pretrained(
            tmp, safe_serialization=True, save_embedding_layers=False, state_dict=adapter_state
        )
        _fix_adapter_base(tmp, spec)
        tok.save_pretrained(tmp)
        token_map.save(tmp)
        atomic_write_json(
            os.path.join(tmp, CONFIG_FILE),
            {
                "base_model": spec if spec == DEFAULT_MODEL else os.path.abspath(base_dir),
                "base_identity": identity,
                "control_token_ids": control_ids,
                "token_map": token_map.to_dict(),
                "training": {k: v for k, v in cfg.items() if k != "out"},
                "summary": summary,
                "rtools_version": _version(),
            },
        )
        with open(os.path.join(tmp, LOG_FILE), "wb") as fh:
            for e in progress.log:
                fh.write(orjson.dumps(e, option=orjson.OPT_APPEND_NEWLINE))
        write_model_card(tmp, name, records)  # README.md, over peft's empty template
        if config.merge:
            # from the adapter just written, as rt-score loads it: the base in fp32 on the CPU
            # (also after QLoRA or bf16 training), LoRA and token rows folded in (merging.py)
            from .merging import write_merged

            model = objective = module = opt = None  # the trained copy is no longer needed: free it first
            write_merged(tmp, os.path.join(tmp, "merged"), trust_remote_code=config.trust_remote_code)
    shutil.rmtree(ckpt, ignore_errors=True)
    dd.barrier(world)
    return summary


def _shard(examples: list[Example], batch: list[int], world: Any) -> tuple[list[Example], list[int], Any]:
    """This rank's examples of a global batch, and the global batch's (weight, size).

    A rank whose slice is empty (a last batch shorter than the world) runs the batch's first example
    with weight 0: it adds nothing, but the rank takes part in the gradient reduction.
    """
    from dataclasses import replace

    from .distributed import shard

    totals = (sum(examples[i].weight for i in batch), len(batch))
    local = shard(batch, world)
    if not local:
        return [replace(examples[batch[0]], weight=0.0)], [0], totals
    return examples, local, totals


def _check_global_batch(saved: dict[str, Any], cfg: dict[str, Any]) -> None:
    """Resuming on another number of processes is the same run when the global batch is the same."""
    was = saved.get("batch_size", 0) * saved["world_size"]
    now = cfg["batch_size"] * cfg["world_size"]
    if was != now:
        raise ModelError(
            f"resume=True with a different setting: batch_size={cfg['batch_size']} on {cfg['world_size']} "
            f"process(es) is a global batch of {now}, the checkpoint has batch_size={saved.get('batch_size')} "
            f"on {saved['world_size']} process(es), a global batch of {was}; resume on "
            f"{saved['world_size']} process(es), or with batch_size x processes = {was}"
        )


def _identity_of(base_dir: str, spec: str) -> dict[str, Any]:
    """The base model's identity (rtools.model.identity), recorded with the adapter and the checkpoints."""
    try:
        return base_identity(base_dir)
    except IdentityError as e:
        raise ModelError(f"{spec}: cannot take the base model's identity: {e}") from None


def _fix_adapter_base(directory: str, spec: str) -> None:
    """Record the portable base-model spec (not a cache path) in adapter_config.json."""
    p = os.path.join(directory, "adapter_config.json")
    with open(p) as fh:
        d = json.load(fh)
    d["base_model_name_or_path"] = spec
    with open(p, "w") as fh:
        json.dump(d, fh, indent=2, sort_keys=True)


def _version() -> str:
    from .. import __version__

    return __version__


__all__ = ["TrainConfig", "train", "SINGLE", "CATEGORY"]
