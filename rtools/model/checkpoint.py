"""rt-lora's checkpoints (``OUT.checkpoint``) and the checks that decide whether ``--resume`` may use one.

A checkpoint is data only, never code: tensors in safetensors files (the trainable parameters,
the optimizer's state, the torch RNG states) and everything else in JSON (progress, the optimizer's
hyper-parameters, the python and numpy RNG states, the fingerprints of the configuration and
the data). Nothing is unpickled on --resume; an old or crafted pickle (state.pt) is refused.

A resumed run is the interrupted run continued, so the checkpoint is checked before it is used:
the settings that change what is trained must be the same (:data:`RESUME_FREE` may change, and the
batch size with the number of processes when the global batch stays the same), the base model the
same by identity and the examples the same by fingerprint (rtools.model.training), and its progress
a point the run could have reached (:func:`check_progress`).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..records import atomic_directory
from .distributed import full_optimizer_state, full_trainable, local_like, shard_optimizer_state
from .examples import Schedule
from .loading import ModelError

CHECKPOINT_SUFFIX = ".checkpoint"
PARAMS_FILE = "params.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"
STATE_FILE = "state.json"
PROGRESS_FILE = "progress.json"

#: Settings a resumed run may change: they do not change what is trained.
RESUME_FREE = frozenset({"out", "save_every", "merge", "device", "trust_remote_code", "fsdp"})
#: ... and these may change together when the global batch (batch_size x world_size) stays the same.
RESUME_GLOBAL = frozenset({"batch_size", "world_size"})


@dataclass
class TrainState:
    """Where a run is: optimizer steps done, the epoch and the batches of it done, the tokens trained
    on, and the training log (one entry a step). What progress.json holds, besides the settings."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    tokens: int = 0
    log: list[dict[str, Any]] = field(default_factory=list)


# ---------------------------------------------------------------------------
# Writing


def _rng_state(all_cuda: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensors, JSON) of the torch, CUDA (``all_cuda``: every GPU's; a rank of a launched run
    saves its own GPU's state, rank_rng), numpy and python RNG states."""
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


def rank_rng(device: str) -> dict[str, Any]:
    """This rank's torch RNG states: the CPU's, and its GPU's."""
    import torch

    states = {"torch": torch.get_rng_state()}
    if device.startswith("cuda"):
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


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


def save_checkpoint(
    path: str,
    model: Any,
    opt: Any,
    state: TrainState,
    settings: dict[str, Any],
    fingerprint: dict[str, Any] | None = None,
    rank_rngs: list[dict[str, Any]] | None = None,
    whole: tuple[dict[str, Any], dict[str, Any]] | None = None,
) -> None:
    """Write the checkpoint (on several ranks: rank 0, with ``rank_rngs``, every rank's RNG states
    as rank_rng gives them; under FSDP ``whole``: the trainable parameters and the optimizer state
    gathered whole, rtools.model.distributed.full_trainable / full_optimizer_state). ``settings``:
    the run's recorded settings (TrainConfig.record), compared on --resume."""
    from safetensors.torch import save_file

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
                        "step": state.step,
                        "epoch": state.epoch,
                        "batch_in_epoch": state.batch_in_epoch,
                        "tokens": state.tokens,
                        "log": state.log,
                        "config": settings,
                        "fingerprint": fingerprint or {},
                    }
                )
            )


# ---------------------------------------------------------------------------
# Reading


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


def _optimizer_state_dict(tensors: dict[str, Any], js: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, t in tensors.items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = t
    for pid, st in js["state"].items():
        state.setdefault(int(pid), {}).update(st)
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in js["param_groups"]]
    return {"state": state, "param_groups": groups}


def check_checkpoint(path: str) -> dict[str, Any]:
    """The checkpoint's progress.json, after checking that the checkpoint is in the data-only format."""
    pickles = sorted(f for f in os.listdir(path) if f.endswith((".pt", ".pth", ".bin", ".pkl", ".pickle")))
    if pickles:
        raise ModelError(
            f"{os.path.join(path, pickles[0])}: a pickled checkpoint is never loaded (it could run code); "
            f"delete {path} and train again without resume=True"
        )
    return _read_json(os.path.join(path, PROGRESS_FILE))


def checkpoint_config(path: str) -> dict[str, Any]:
    return check_checkpoint(path)["config"]


def load_checkpoint(path: str, model: Any, opt: Any, schedule: Schedule, rank: int = 0) -> TrainState:
    """Restore the trainable weights, the optimizer and the RNG states (rank ``rank``'s own, when
    the checkpoint has them) into ``model`` and ``opt``; returns the progress, after checking that
    the run ``schedule`` describes could have reached it (:func:`check_progress`), before anything
    is loaded."""
    import torch

    progress = check_progress(check_checkpoint(path), os.path.join(path, PROGRESS_FILE), schedule)
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


def check_progress(progress: Any, path: str, schedule: Schedule) -> TrainState:
    """The progress a checkpoint recorded (``progress``, read from ``path``) as a TrainState, refused
    unless the run ``schedule`` describes could have reached it: ``step``, ``epoch``,
    ``batch_in_epoch`` and ``tokens`` whole numbers >= 0; ``step`` at most the run's total and the
    step that ``epoch`` and ``batch_in_epoch`` give (an epoch has ``schedule.per_epoch`` batches);
    ``log`` one entry a step, each a JSON object of numbers (or null: orjson writes a NaN loss so)
    whose ``step`` is its place.

    Without this, an edited or damaged progress.json resumes a run that never was: a "step" of
    100000 in a run of 12 steps trains nothing and reports 100000 steps.
    """

    def impossible(what: str) -> ModelError:
        return ModelError(
            f"{path}: {what}: not a point this run can reach; the checkpoint is damaged or was "
            "edited (train again without resume=True)"
        )

    if not isinstance(progress, dict):
        raise impossible("not a JSON object")
    counts = {}
    for key in ("step", "epoch", "batch_in_epoch", "tokens"):
        value = progress.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise impossible(f"{key} must be a whole number >= 0, got {value!r}")
        counts[key] = value
    step, epoch, done = counts["step"], counts["epoch"], counts["batch_in_epoch"]
    if step > schedule.total:
        raise impossible(f"step {step} of a run of {schedule.total} steps")
    if done > schedule.per_epoch:
        raise impossible(f"batch_in_epoch {done} of an epoch of {schedule.per_epoch} batches")
    if schedule.step_at(epoch, done) != step:
        raise impossible(
            f"step {step} at epoch {epoch}, batch {done} (which is step {schedule.step_at(epoch, done)})"
        )
    log = progress.get("log")
    if not isinstance(log, list) or len(log) != step:
        got = f"{len(log)} entries" if isinstance(log, list) else type(log).__name__
        raise impossible(f"the log must hold one entry a step ({step}), it has {got}")
    for place, entry in enumerate(log, 1):
        if (
            not isinstance(entry, dict)
            or entry.get("step") != place
            or any(isinstance(v, bool) or not isinstance(v, (int, float, type(None))) for v in entry.values())
        ):
            raise impossible(f"log entry {place} is not the numbers of step {place}")
    return TrainState(step=step, epoch=epoch, batch_in_epoch=done, tokens=counts["tokens"], log=log)


# ---------------------------------------------------------------------------
# May --resume use it?


def check_resume(path: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Refuse a checkpoint at ``path`` that another run wrote: ``settings`` (this run's, as
    TrainConfig.record gives them) must match its own but for :data:`RESUME_FREE` and a global batch
    split differently (:data:`RESUME_GLOBAL`). Returns the checkpoint's fingerprints (the base
    model's identity, the data's sha256), which the caller compares once it has them."""
    if not os.path.isdir(path):
        raise ModelError(f"nothing to resume: no checkpoint at {path}")
    saved = checkpoint_config(path)
    saved.setdefault("world_size", 1)  # a checkpoint from before distributed training
    for key in settings:
        if key in RESUME_FREE or key in RESUME_GLOBAL or key == "model":
            continue  # the base model is compared by its identity (rtools.model.training)
        if key not in saved or saved[key] != settings[key]:
            raise ModelError(
                f"resume=True with a different setting: {key}={settings[key]!r}, "
                f"checkpoint has {saved.get(key, '(nothing)')!r}"
            )
    _check_global_batch(saved, settings)
    fingerprint = check_checkpoint(path).get("fingerprint") or {}
    if "base" not in fingerprint and saved.get("model") != settings["model"]:
        raise ModelError(  # a checkpoint from before the base identity was recorded: by path
            f"resume=True with a different setting: model={settings['model']!r}, "
            f"checkpoint has {saved.get('model', '(nothing)')!r}"
        )
    return fingerprint


def _check_global_batch(saved: dict[str, Any], settings: dict[str, Any]) -> None:
    """Resuming on another number of processes is the same run when the global batch is the same."""
    was = saved.get("batch_size", 0) * saved["world_size"]
    now = settings["batch_size"] * settings["world_size"]
    if was != now:
        raise ModelError(
            f"resume=True with a different setting: batch_size={settings['batch_size']} on "
            f"{settings['world_size']} process(es) is a global batch of {now}, the checkpoint has "
            f"batch_size={saved.get('batch_size')} on {saved['world_size']} process(es), a global batch "
            f"of {was}; resume on {saved['world_size']} process(es), or with batch_size x processes = {was}"
        )


__all__ = ["TrainState", "save_checkpoint", "load_checkpoint", "check_progress", "check_resume"]
