"""rt-lora's learning-rate schedule (rtools.model.training.lr_factor), and why it is not
transformers.get_scheduler: no scheduler there gives the same numbers exactly (see lr_factor)."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from transformers import get_scheduler

from rtools.model.training import lr_factor

# stepping a scheduler before the optimizer is the point of the shifted comparisons
pytestmark = pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")

#: (total steps, warm-up steps): warm-up 0, 1, the recipe's 5% of a run, long, all warm-up.
CASES = [(1, 0), (7, 0), (10, 1), (40, 2), (100, 5), (57, 11), (9, 8), (6, 6)]


def expected(step: int, total: int, warmup: int) -> Fraction:
    """The schedule in exact arithmetic."""
    if step < warmup:
        return Fraction(step + 1, warmup)
    return max(Fraction(0), Fraction(total - step, max(1, total - warmup)))


def wsd_lrs(total: int, warmup: int) -> list[float]:
    """transformers' warmup_stable_decay shifted by one, with one stable step and a linear decay
    over total - warmup: lr_factor's schedule, computed another way."""
    kwargs = {"num_stable_steps": 1, "num_decay_steps": total - warmup, "decay_type": "linear"}
    return hf_lrs("warmup_stable_decay", total, warmup, shift=1, scheduler_specific_kwargs=kwargs)


def hf_lrs(name: str, total: int, warmup: int, shift: int, **kwargs) -> list[float]:
    """The learning rate of each optimizer step under transformers' scheduler ``name``, stepped
    ``shift`` times before the first optimizer step (base rate 1)."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = get_scheduler(name, opt, num_warmup_steps=warmup, num_training_steps=total, **kwargs)
    for _ in range(shift):
        sched.step()
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


@pytest.mark.parametrize(("total", "warmup"), CASES)
def test_lr_factor_is_the_documented_schedule(total, warmup):
    got = [lr_factor(s, total, warmup) for s in range(total)]
    assert got == [float(expected(s, total, warmup)) for s in range(total)]  # correctly rounded
    if warmup:
        assert got[warmup - 1] == 1.0 and got[0] == 1 / warmup > 0  # no step at rate 0
    assert all(a >= b for a, b in zip(got[warmup:], got[warmup + 1 :], strict=False))


@pytest.mark.parametrize(("total", "warmup"), CASES)
def test_transformers_schedulers_are_not_the_same_numbers(total, warmup):
    ours = [lr_factor(s, total, warmup) for s in range(total)]
    linear = hf_lrs("linear", total, warmup, shift=0)
    if warmup == 0:  # without warm-up, transformers' linear schedule is ours exactly
        assert linear == ours
    else:  # its warm-up starts at rate 0: ours is one step ahead
        assert linear[0] == 0.0 and linear != ours
        shifted = hf_lrs("linear", total, warmup, shift=1)
        # one step ahead, its warm-up is ours (but for the last step, already in its decay branch);
        # then its decay is (total - step - 1) / (total - warmup): not ours
        assert shifted[: warmup - 1] == ours[: warmup - 1] and (total - warmup < 2 or shifted != ours)
    # warmup_stable_decay, shifted by one, with one stable step: the same schedule, within an ulp
    wsd = wsd_lrs(total, warmup)
    assert all(math.isclose(a, b, rel_tol=0, abs_tol=2.3e-16) for a, b in zip(wsd, ours, strict=True))


def test_wsd_differs_by_an_ulp_somewhere():
    """Why lr_factor stays: transformers' 1 - (s - w) / d is not (t - s) / d in floating point."""
    differ = 0
    for total, warmup in [(100, 5), (1000, 50), (57, 11)]:
        wsd = wsd_lrs(total, warmup)
        differ += sum(a != lr_factor(s, total, warmup) for s, a in enumerate(wsd))
    assert differ > 0
