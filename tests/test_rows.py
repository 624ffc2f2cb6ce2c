"""Control rows started at a probe of the frozen base (rtools.model.rows, rt-lora --init-rows probe)."""

from __future__ import annotations

import math

import torch

from rtools.metrics import auroc
from rtools.model.rows import LEAK, fit_probe_rows


def synthetic(n: int = 240, dim: int = 16, seed: int = 0):
    """Hidden states with a large common component (as after a final norm) and three classes
    (two refusal tokens and respond) told apart by three directions; log Z_vocab near 12."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    centres = torch.randn(3, dim, generator=g) * 1.5
    common = torch.zeros(dim)
    common[0] = 8.0
    h = common + centres[y] + torch.randn(n, dim, generator=g)
    log_z = 12.0 + 0.5 * torch.randn(n, generator=g)
    return h, log_z, y


def full_softmax(rows, h, log_z):
    logits = h @ rows.T
    return torch.softmax(torch.cat([log_z[:, None], logits], 1), 1)[:, 1:]


def test_probe_rows_separate_and_hold_the_first_position():
    h, log_z, y = synthetic()
    n_controls = 4  # three used (0, 1 and respond = 3); token 2 trains on no row
    classes = torch.where(y == 2, torch.tensor(3), y).tolist()
    fit = fit_probe_rows(h, log_z, classes, [1.0] * len(classes), n_controls, seed=0)
    assert fit.rows.shape == (n_controls, h.shape[1])
    p = full_softmax(fit.rows.double(), h.double(), log_z.double())
    refuse = [int(c != 3) for c in classes]
    assert auroc(refuse, (1 - p[:, 3]).tolist()) > 0.95
    assert fit.cv_auroc is not None and fit.cv_auroc > 0.9
    # the vocabulary keeps at most LEAK of the mass on 99% of the rows (the lift), and the lift
    # moved no decision: the argmax over the control tokens is the probe's
    leak = 1 - p.sum(1)
    assert float(torch.quantile(leak, 0.99)) <= LEAK * 1.05  # rows stored in fp32
    assert fit.lift > 0
    # the token no row trains is never chosen
    assert float(p[:, 2].max()) < math.exp(-10)


def test_without_lift_the_vocabulary_would_win():
    """The lift is needed here: the same rows without it give the control tokens little mass."""
    h, log_z, y = synthetic()
    classes = torch.where(y == 2, torch.tensor(3), y).tolist()
    fit = fit_probe_rows(h, log_z, classes, [1.0] * len(classes), 4, seed=0)
    mu = h.double().mean(0)
    u = mu / mu.norm()
    unlifted = fit.rows.double() - fit.lift * u
    p = full_softmax(unlifted, h.double(), log_z.double())
    assert float(p.sum(1).median()) < 0.5
