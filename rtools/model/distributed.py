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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

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
    world (the last batch of an epoch): the caller then runs a weight-0 example (:func:`filler`),
    because every rank must take part in every gradient reduction."""
    return list(batch[world.rank :: world.size])


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


def wrap(objective: Any, world: World, device: str) -> Any:
    """The module the training loop calls: DDP around the objective on several ranks.

    ``broadcast_buffers=False``: the objective's buffers (control-token ids, rotary tables) are
    constants. Every trainable parameter (LoRA, control-token rows) is used by every forward, so
    ``find_unused_parameters`` stays off.
    """
    if not world.distributed:
        return objective
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
