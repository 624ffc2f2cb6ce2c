"""rt-lora across processes: data parallel (torch DDP) under torchrun or ``accelerate launch``.

The launcher starts N copies of the same command; each is one rank of a :class:`World`. Every rank
holds a full copy of the (4-bit) base model and of the trainable weights, and the engine (torch's
DistributedDataParallel around :class:`rtools.model.objective.DecisionLoss`, whose ``forward``
computes the whole loss) averages the gradients. What rtools adds is the bookkeeping that makes a
run on N processes the same run as one process with N times the batch:

* **one global batch, sharded.** ``--batch-size`` is per process. Every rank draws the same
  length-bucketed global batches (``batch_size x world size`` examples, the batches one process
  with that batch size draws) and takes its own deterministic slice of each (:func:`shard`);
* **one loss.** Each rank's loss is normalised by the global batch's total weight, and the ranks'
  shares are summed (the gradient is scaled by the world size, since DDP averages), so the step is
  the step of the global batch;
* **one writer.** Rank 0 alone writes checkpoints, the output directory, logs and progress;
* **one resume.** A checkpoint records the world size and the global batch; resuming with another
  world size is allowed when the global batch stays the same, and refused otherwise.

The launcher's environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``...) is read at
the CLI boundary (rtools.commands.lora) and handed to :func:`start`; torch reads the rendezvous
variables itself when the process group is made.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .batching import decoder_and_head
from .loading import ModelError


@dataclass(frozen=True)
class World:
    """This process's place among the launched ones (one process: ``World()``)."""

    size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this rank writes (files, logs, progress, stdout)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


SINGLE = World()


def check_world(size: int, rank: int, local_rank: int) -> World:
    if size < 1 or not 0 <= rank < size or local_rank < 0:
        raise ModelError(
            f"bad launcher environment: WORLD_SIZE={size}, RANK={rank}, LOCAL_RANK={local_rank} "
            "(start rt-lora with torchrun or accelerate launch, or without either)"
        )
    return World(size=size, rank=rank, local_rank=local_rank)


def rank_device(device: str, world: World) -> str:
    """The device of this rank: ``cuda`` becomes the rank's own GPU, ``cuda:LOCAL_RANK``."""
    if world.distributed and device == "cuda":
        return f"cuda:{world.local_rank}"
    return device


@contextlib.contextmanager
def start(world: World, device: str) -> Iterator[World]:
    """Join the launcher's process group for the duration of the block (nothing for one process).

    gloo on CPU, nccl on CUDA (each rank on its ``LOCAL_RANK`` GPU). A group made by the caller
    (torch.distributed already initialised, e.g. by accelerate) is used as it is and left alone.
    """
    if not world.distributed:
        yield world
        return
    import torch
    import torch.distributed as dist

    own = not dist.is_initialized()
    if own:
        cuda = device.startswith("cuda")
        if cuda:
            torch.cuda.set_device(world.local_rank)
        try:
            dist.init_process_group(backend="nccl" if cuda else "gloo")
        except (ValueError, RuntimeError) as e:  # no MASTER_ADDR/PORT, an unreachable rank 0
            raise ModelError(
                f"cannot join the launcher's process group (rank {world.rank} of {world.size}): {e}; "
                "start rt-lora with torchrun or accelerate launch, which set MASTER_ADDR and MASTER_PORT"
            ) from None
    if dist.get_world_size() != world.size or dist.get_rank() != world.rank:
        raise ModelError(
            f"the process group (rank {dist.get_rank()} of {dist.get_world_size()}) is not the "
            f"launcher's (rank {world.rank} of {world.size})"
        )
    try:
        yield world
    finally:
        if own and dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()


def shard(batch: Sequence[int], world: World) -> list[int]:
    """This rank's slice of a global batch: every ``size``-th example from ``rank`` (a batch ordered
    by length gives each rank a similar mix of lengths). Empty when the batch is shorter than the
    world (the last batch of an epoch): the caller then runs a weight-0 example (:func:`rank_batch`),
    because every rank must take part in every gradient reduction."""
    return list(batch[world.rank :: world.size])


def rank_batch(
    examples: Sequence[Any], batch: list[int], world: World
) -> tuple[Sequence[Any], list[int], Any]:
    """This rank's examples of a global batch (``examples``, the indices of its slice), and the
    global batch's (weight, size).

    A rank whose slice is empty (a last batch shorter than the world) runs the batch's first example
    with weight 0: it adds nothing, but the rank takes part in the gradient reduction.
    """
    totals = (sum(examples[i].weight for i in batch), len(batch))
    local = shard(batch, world)
    if not local:
        return [dataclasses.replace(examples[batch[0]], weight=0.0)], [0], totals
    return examples, local, totals


def reduce_sum(values: Sequence[float], world: World, device: str) -> list[float]:
    """The sum over the ranks of a few numbers (losses, token counts) for the log."""
    if not world.distributed:
        return list(values)
    import torch
    import torch.distributed as dist

    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def barrier(world: World) -> None:
    if world.distributed:
        import torch.distributed as dist

        dist.barrier()


def wrap(objective: Any, world: World, device: str, fsdp: bool = False) -> Any:
    """The module the training loop calls: DDP around the objective on several ranks, or with
    ``fsdp`` the objective sharded in place (:func:`shard_model`).

    ``broadcast_buffers=False``: the objective's buffers (control-token ids, rotary tables) are
    constants. Every trainable parameter (LoRA, control-token rows) is used by every forward, so
    ``find_unused_parameters`` stays off.
    """
    if not world.distributed:
        return objective
    if fsdp:
        return shard_model(objective, world, device)
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    ids = [int(device.split(":", 1)[1])] if device.startswith("cuda:") else None
    # torch 2.13 renamed broadcast_buffers to forward_sync_buffers (2.4 knows only the old name)
    known = inspect.signature(DistributedDataParallel.__init__).parameters
    sync = "forward_sync_buffers" if "forward_sync_buffers" in known else "broadcast_buffers"
    return DistributedDataParallel(objective, device_ids=ids, **{sync: False})


def no_sync(module: Any, skip: bool) -> Any:
    """DDP's ``no_sync`` (no gradient reduction) for all but the last micro-batch of a step."""
    if skip and hasattr(module, "no_sync"):
        return module.no_sync()
    return contextlib.nullcontext()


def gather_rng(world: Any, state: Any) -> list[Any]:
    """Every rank's torch RNG state (CPU, and this rank's GPU), for an exact resume with dropout."""
    if not world.distributed:
        return [state]
    import torch.distributed as dist

    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, state)
    return out


# ---------------------------------------------------------------------------
# FSDP: the base model sharded across the ranks (torch's fully_shard, "FSDP2")


def shard_model(objective: Any, world: World, device: str) -> Any:
    """Shard ``objective`` (a DecisionLoss) across the ranks with torch's ``fully_shard``: one unit
    per decoder layer, and the root unit (the objective itself) holding the rest: the embedding and
    the head with their trainable control-token rows, and the final norm. Every rank then keeps
    1/N of each parameter (frozen base, LoRA, token rows); a unit's parameters are gathered for its
    forward and backward and freed after (FULL_SHARD), and the gradients are reduce-scattered.

    The embedding and the head stay in the root unit on purpose: DecisionLoss reads their weights
    directly in its forward (fast_embed / fast_head), which sees whole tensors only while the root
    unit is gathered (during the forward of the objective), and a tied embedding must not be split
    across two units. Works on CPU (gloo) as on CUDA (nccl)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    decoder, _ = decoder_and_head(objective.model)
    layers = getattr(decoder, "layers", None)
    if layers is None or not hasattr(layers, "__iter__"):
        raise ModelError(
            f"cannot shard {type(decoder).__name__} (fsdp=True): it has no list of decoder layers "
            "(.layers); train it data parallel (without fsdp=True)",
            ("fsdp",),
        )
    mesh = init_device_mesh("cuda" if device.startswith("cuda") else "cpu", (dist.get_world_size(),))
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(objective, mesh=mesh)
    return objective


def is_sharded(t: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def full_tensor(t: Any) -> Any:
    """A whole tensor from a sharded one (a collective: every rank calls it, in the same order)."""
    return t.full_tensor() if is_sharded(t) else t


def local_like(full: Any, param: Any) -> Any:
    """``full`` (a whole tensor, the same on every rank) cut as ``param`` is: this rank's shard of
    it for a sharded parameter (no communication), ``full`` itself otherwise."""
    if not is_sharded(param):
        return full
    from torch.distributed.tensor import distribute_tensor

    full = full.to(param.device_mesh.device_type, param.dtype)
    return distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None)


def full_trainable(model: Any) -> dict[str, Any]:
    """The trainable parameters by name, whole, on the CPU (under FSDP a collective: every rank)."""
    return {
        n: full_tensor(p.detach()).cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad
    }


def full_optimizer_state(opt: Any) -> dict[str, Any]:
    """``opt.state_dict()`` with every sharded state tensor whole (a collective under FSDP)."""
    sd = opt.state_dict()
    state = {pid: {k: full_tensor(v) for k, v in st.items()} for pid, st in sd["state"].items()}
    return {"state": state, "param_groups": sd["param_groups"]}


def shard_optimizer_state(sd: dict[str, Any], opt: Any) -> dict[str, Any]:
    """A whole optimizer state (as :func:`full_optimizer_state` gives it) cut for ``opt``'s sharded
    parameters, so that ``opt.load_state_dict`` takes it."""
    params = [p for g in opt.param_groups for p in g["params"]]
    state = {}
    for pid, st in sd["state"].items():
        p = params[int(pid)] if int(pid) < len(params) else None
        state[pid] = {
            k: local_like(v, p)
            if p is not None and is_sharded(p) and getattr(v, "shape", None) == p.shape
            else v
            for k, v in st.items()
        }
    return {"state": state, "param_groups": sd["param_groups"]}


@contextlib.contextmanager
def gathered_root(objective: Any) -> Iterator[None]:
    """The root unit's parameters (embedding, head, norm) whole for the block, so that code calling
    the model directly (not through the objective's forward) can run; nothing without FSDP."""
    if not hasattr(objective, "unshard") or not hasattr(objective, "reshard"):
        yield
        return
    objective.unshard()
    try:
        yield
    finally:
        objective.reshard()
