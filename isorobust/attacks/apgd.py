"""Auto-PGD (Croce & Hein 2020): APGD-CE and APGD-T (targeted DLR), batched, L∞.

The algorithm is the one of the paper and of the reference code (and of torchattacks' port):
a start at a random corner-scaled point of the ε-ball, a first step of 2ε, momentum 0.75, and
at checkpoints p_j = 0.22·N, then shrinking by 0.03·N down to 0.06·N, the step is halved for the
samples whose loss rose in at most 75 % of the steps since the last checkpoint, or that did not
improve since a checkpoint at which their step was not halved; a halved sample restarts from its
best point. APGD-T maximises the targeted DLR loss towards each of the ``n_target_classes``
runner-up classes of the clean logits in turn, on the samples the earlier targets left.

What differs from the ports is bookkeeping only: every quantity above is per sample, so a sample
is taken out of the batch once it is misclassified (its adversarial example kept; the broken rows
leave together, once they are COMPACT_SHARE of the batch: ``_working_set``), and the rest go on exactly as they would
have. That makes each iteration cost about the still-robust samples only. The step is computed in
place with the same operations in the same order as the formula, so the same bits.
``tests/test_apgd.py`` checks the results against torchattacks.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from isorobust.errors import ConfigError
from isorobust.attacks.base import Attack
from isorobust.attacks._working_set import compaction_due, keep_rows

RHO = 0.75  # oscillation threshold: halve where the loss rose in at most 75 % of the steps
MOMENTUM = 0.75


def dlr_targeted_loss(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    """-(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2): the targeted difference of logits ratio (per sample)."""
    top = logits.topk(4, dim=1).values
    diff = logits.gather(1, y[:, None]).squeeze(1) - logits.gather(1, target[:, None]).squeeze(1)
    return -diff / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


def _loss_and_grad(model: nn.Module, x_adv: Tensor, y: Tensor, target: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    x_adv = x_adv.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x_adv)
        loss = (F.cross_entropy(logits, y, reduction="none") if target is None
                else dlr_targeted_loss(logits, y, target))
        (grad,) = torch.autograd.grad(loss.sum(), x_adv)
    return loss.detach(), grad, logits.detach()


def apgd_run(
    model: nn.Module, x: Tensor, y: Tensor, epsilon: float, steps: int = 100, target: Tensor | None = None,
    compact: bool = True,
) -> tuple[Tensor, Tensor]:
    """One APGD run (L∞, cross-entropy, or targeted DLR towards ``target``) on a batch.

    Returns ``(adv, fooled)``: ``fooled[i]`` where an iterate misclassified sample i, and then
    ``adv[i]`` is that iterate; elsewhere ``adv[i]`` is the point of highest loss found.
    The random start draws from torch's global generator (the sweep seeds it). ``compact=False``
    keeps broken samples in the batch (the ports' way; same results, for tests).
    """
    n = x.shape[0]
    steps_first = max(int(0.22 * steps), 1)
    steps_min, size_decrease = max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)

    lower, upper = (x - epsilon).clamp_(min=0.0), (x + epsilon).clamp_(max=1.0)
    t = 2 * torch.rand_like(x) - 1
    scale = epsilon / t.flatten(1).abs().amax(dim=1).clamp_min(1e-12)
    x_adv = (x + t * scale.view(-1, *[1] * (x.dim() - 1))).clamp_(0.0, 1.0)

    out_adv = x_adv.clone()
    out_fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
    # Per-sample state of the samples still in the batch (``alive`` maps them to the input rows).
    alive = torch.arange(n, device=x.device)
    loss, grad, logits = _loss_and_grad(model, x_adv, y, target)
    x_best, grad_best, loss_best = x_adv.clone(), grad.clone(), loss.clone()
    step = torch.full((n,), 2.0 * epsilon, device=x.device, dtype=x.dtype)
    x_old = x_adv.clone()
    loss_prev = loss.clone()
    rises = torch.zeros(n, device=x.device)
    loss_best_at_check = loss_best.clone()
    halved_at_check = torch.ones(n, dtype=torch.bool, device=x.device)  # the reference code's initial value
    view = (-1, *[1] * (x.dim() - 1))

    done = torch.zeros(n, dtype=torch.bool, device=x.device)  # broken rows still in the batch

    def drop_fooled(logits: Tensor) -> bool:
        """Record the newly misclassified samples and, once they are COMPACT_SHARE of the batch, remove the
        broken ones; False when none is left to attack."""
        nonlocal alive, x, y, target, lower, upper, x_adv, x_old, x_best, grad, grad_best, loss_best, loss_prev
        nonlocal step, rises, loss_best_at_check, halved_at_check, done
        first = (logits.argmax(dim=1) != y) & ~done
        if first.any():
            out_fooled[alive[first]] = True
            out_adv[alive[first]] = x_adv[first]
            done |= first
        if not compact or not compaction_due(done):
            return compact is False or not bool(done.all())
        (alive, x, y, target, lower, upper, x_adv, x_old, x_best, grad, grad_best, loss_best, loss_prev, step,
         rises, loss_best_at_check, halved_at_check, done) = keep_rows(
            ~done, alive, x, y, target, lower, upper, x_adv, x_old, x_best, grad, grad_best, loss_best, loss_prev,
            step, rises, loss_best_at_check, halved_at_check, done)
        return alive.numel() > 0

    if not drop_fooled(logits):
        return out_adv, out_fooled
    since_check, period = 0, steps_first
    for i in range(steps):
        with torch.no_grad():
            # z = clip(x_adv + step·sign(grad)); x_adv + a·(z − x_adv) + (1 − a)·(x_adv − x_old), clipped:
            # the same operations in the same order (so the same bits), in place where a buffer is free
            a = MOMENTUM if i > 0 else 1.0
            z = torch.addcmul(x_adv, step.view(view), grad.sign_())
            torch.minimum(z, upper, out=z)
            torch.maximum(z, lower, out=z)
            z.sub_(x_adv).mul_(a).add_(x_adv)
            z.add_(torch.sub(x_adv, x_old).mul_(1 - a))
            torch.minimum(z, upper, out=z)
            torch.maximum(z, lower, out=z)
            x_old, x_adv = x_adv, z
        loss, grad, logits = _loss_and_grad(model, x_adv, y, target)
        with torch.no_grad():
            rises += loss > loss_prev
            loss_prev = loss
            better = loss > loss_best
            x_best[better], grad_best[better], loss_best[better] = x_adv[better], grad[better], loss[better]
            if not drop_fooled(logits):
                break
            since_check += 1
            if since_check == period:
                halve = (rises <= RHO * period) | (~halved_at_check & (loss_best_at_check >= loss_best))
                halved_at_check, loss_best_at_check = halve, loss_best.clone()
                if halve.any():
                    step[halve] /= 2.0
                    x_adv[halve], grad[halve] = x_best[halve], grad_best[halve]
                rises.zero_()
                since_check, period = 0, max(period - size_decrease, steps_min)
    unbroken = ~out_fooled[alive]
    out_adv[alive[unbroken]] = x_best[unbroken]
    return out_adv, out_fooled


def apgd_ce_then_targeted(
    model: nn.Module, x: Tensor, y: Tensor, epsilon: float, steps: int = 100, n_target_classes: int = 9,
    runs: list | None = None,
) -> Tensor:
    """APGD-CE, then APGD-T towards each of the ``n_target_classes`` runner-up classes, each on
    the samples every earlier run left. Returns adversarial inputs (the unbroken get their best
    point). ``runs``, if given, receives (component, samples attacked, seconds) per run."""
    adv = x.clone()
    robust = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    with torch.no_grad():
        order = model(x).argsort(dim=1, descending=True)
    n_targets = min(n_target_classes, order.shape[1] - 1)
    if n_targets > 0 and order.shape[1] < 4:
        raise ConfigError(f"APGD-T's targeted DLR loss needs at least 4 classes (the model has {order.shape[1]}); "
                          "set n_target_classes=0 for APGD-CE alone")
    plan = [("apgd-ce", None)] + [("apgd-t", k) for k in range(1, n_targets + 1)]
    for component, k in plan:
        idx = robust.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        t0 = time.perf_counter()
        target = None if k is None else order[idx, k]
        adv_run, fooled = apgd_run(model, x[idx], y[idx], epsilon, steps, target)
        adv[idx] = adv_run
        robust[idx[fooled]] = False
        if runs is not None:
            runs.append((component, int(idx.numel()), time.perf_counter() - t0))
    return adv


@dataclass
class APGD(Attack):
    """APGD-CE then APGD-T (targeted DLR, ``n_target_classes`` targets), ``steps`` iterations each:
    the gradient-based half of AutoAttack 'standard' (Croce & Hein 2020), L∞."""

    name: str = "apgd"
    norm: str = "linf"
    steps: int = 100
    n_target_classes: int = 9
    runs: list = field(default_factory=list, repr=False)  # (component, samples, seconds) per APGD run

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, epsilon: float) -> Tensor:
        return apgd_ce_then_targeted(model, x, y, epsilon, self.steps, self.n_target_classes, self.runs)

    def describe(self) -> str:
        restarts = f", {self.restarts} restarts" if self.restarts > 1 else ""
        return (f"APGD-CE, then APGD-T (DLR, {self.n_target_classes} targets) on the survivors, "
                f"{self.steps} iterations each (L∞{restarts})")
