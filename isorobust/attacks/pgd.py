"""L∞ projected gradient descent (Madry et al. 2018), written here: foolbox's LinfPGD step for step, run on
the samples not yet fooled.

From a uniform random start in the ε-ball, each iteration ascends the loss (cross-entropy, or the logit
margin) by a signed-gradient step, projects back into the ε-ball around the clean input and clips to [0, 1]:

    x ← clip₀₁(x0 + clip_ε(x + s_t·sign(∇L(x)) − x0))

with s_t constant or on a cosine schedule from the first step size down to 0. The operations are foolbox's,
in its order (so the same inputs give the same bits); only the bookkeeping differs. The first iterate that
misclassifies a sample is kept (``keep_fooled``), after which nothing else PGD does can matter for that
sample: with ``keep_fooled`` the fooled samples leave the batch together once they are COMPACT_SHARE of it,
so each iteration costs about the samples still robust. The step is taken in place (no new input-sized
tensors per iteration).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from isorobust.attacks._working_set import compaction_due, keep_rows
from isorobust.metrics.clean import logit_margin


def step_size(stepsize: float, t: int, steps: int, schedule: str) -> float:
    """The step at iteration ``t`` of ``steps``: constant, or cosine from ``stepsize`` to 0."""
    return stepsize * (1.0 if schedule == "constant" else 0.5 * (1 + math.cos(math.pi * t / steps)))


def _loss(logits: Tensor, y: Tensor, loss: str) -> Tensor:
    if loss == "margin":  # the highest other logit minus the true one (Carlini & Wagner), capped at 0
        return logit_margin(logits, y).neg_().clamp_max(0.0).sum()
    return F.cross_entropy(logits, y, reduction="sum")


def pgd_linf(model: nn.Module, x: Tensor, y: Tensor, epsilon: float, steps: int, stepsize: float,
             schedule: str = "constant", loss: str = "ce", random_start: bool = True,
             keep_fooled: bool = True) -> Tensor:
    """Adversarial inputs within ``epsilon`` (L∞) of ``x`` and in [0, 1]: the first iterate that fooled the
    model where one did (``keep_fooled``), else the last iterate. The random start draws from torch's global
    generator (the sweep seeds it)."""
    x0 = x
    if random_start:
        adv = x0 + (torch.rand(x0.shape, dtype=x0.dtype, device=x0.device) * (2 * epsilon) - epsilon)
        adv.clamp_(0.0, 1.0)
    else:
        adv = x0.clone()
    out = torch.empty_like(x0)
    found = torch.zeros(x0.shape[0], dtype=torch.bool, device=x0.device)  # rows of ``out`` already set
    alive = torch.arange(x0.shape[0], device=x0.device)  # batch row -> input row
    done = torch.zeros_like(found)  # fooled rows still in the batch
    for t in range(steps):
        adv.requires_grad_(True)
        with torch.enable_grad():
            logits = model(adv)
            (grad,) = torch.autograd.grad(_loss(logits, y, loss), adv)
        adv = adv.detach()
        if keep_fooled:
            with torch.no_grad():
                first = (logits.argmax(dim=1) != y) & ~done
            if first.any():
                out[alive[first]] = adv[first]
                found[alive[first]] = True
                done |= first
                if compaction_due(done):
                    alive, x0, y, adv, grad, done = keep_rows(~done, alive, x0, y, adv, grad, done)
                    if alive.numel() == 0:
                        return out
        adv.add_(grad.sign_(), alpha=step_size(stepsize, t, steps, schedule))
        adv.sub_(x0).clamp_(-epsilon, epsilon).add_(x0).clamp_(0.0, 1.0)
    rest = ~found[alive]
    # the last iterate, through foolbox's final clip of the perturbation (the same bits as foolbox returns)
    out[alive[rest]] = (adv[rest] - x0[rest]).clamp_(-epsilon, epsilon).add_(x0[rest])
    return out
