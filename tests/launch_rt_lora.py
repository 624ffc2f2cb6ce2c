"""rt-lora as a launcher (torchrun) starts it, with two test hooks read from the environment.

``RT_TEST_DUMP=DIR``: after the run, each rank writes its own trainable parameters to
DIR/rank{N}.safetensors (what the rank holds in memory, whether it writes the output or not).
``RT_TEST_STOP=K``: every rank stops with KeyboardInterrupt before optimizer step K + 1 (an
interrupted run, for --resume).
"""

from __future__ import annotations

import os
import sys

import rtools.model.distributed as dd
import rtools.model.training as training
from rtools.commands.lora import main

caught: dict = {}
_wrap = dd.wrap


def wrap(objective, world, device, **kw):
    caught["objective"], caught["rank"] = objective, world.rank
    return _wrap(objective, world, device, **kw)


dd.wrap = wrap

if os.environ.get("RT_TEST_STOP"):
    stop = int(os.environ["RT_TEST_STOP"])
    _lr_factor = training.lr_factor

    def lr_factor(step, total, warmup):
        if step == stop:
            raise KeyboardInterrupt
        return _lr_factor(step, total, warmup)

    training.lr_factor = lr_factor

if __name__ == "__main__":
    try:
        main()
    finally:
        dump = os.environ.get("RT_TEST_DUMP")
        if dump and "objective" in caught:
            from safetensors.torch import save_file

            params = caught["objective"].named_parameters()
            # under FSDP (DTensor parameters) what this rank holds: its shard
            save_file(
                {
                    n: getattr(p.detach(), "to_local", p.detach)().contiguous()
                    for n, p in params
                    if p.requires_grad
                },
                os.path.join(dump, f"rank{caught['rank']}.safetensors"),
            )
        sys.stdout.flush()
