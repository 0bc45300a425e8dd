"""Adversarial attacks and robust-accuracy sweeps over ε.

An attack here is a small config object that knows its name, its norm and how to perturb a
batch; the sweep logic is separate and works for any of them. FGSM and the L2 PGD run through
foolbox; the L∞ PGD (``pgd.py``), APGD, FAB-T and the L∞ Square are written here.
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import foolbox as fb
import torch
from torch import Tensor, nn

from isorobust.attacks.pgd import pgd_linf
from isorobust.attacks.progress import AttackProgress, AttackState, generator_states, restore_generators
from isorobust.metrics.clean import predict

log = logging.getLogger(__name__)


@dataclass
class Attack:
    """An attack: ``perturb(model, x, y, epsilon)`` returns adversarial inputs within the ε-ball
    (of ``norm``) and the input bounds [0, 1]. Whether they fool the model is judged elsewhere.

    ``restarts``: the sweep runs the attack this many times on the samples still robust (a sample
    is broken if any run breaks it). ``batch_dependent``: the perturbation of one sample depends on
    the rest of its batch, so the sweep attacks fixed batches of the whole set, not survivors only.
    """

    name: str = "attack"
    norm: str = "linf"
    restarts: int = 1
    epsilons: list[float] | None = None  # this attack's own grid (e.g. L2 radii); None = eval.epsilons
    n_samples: int | None = None  # attack only the first N evaluation samples (slow attacks); None = all
    batch_dependent = False
    cumulative = True  # False: each ε judged on its own (the original protocol's way of counting)

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, epsilon: float) -> Tensor:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


@dataclass
class FoolboxAttack(Attack):
    """An attack run through foolbox (``PyTorchModel``, bounds (0, 1)); subclasses build it."""

    def build(self) -> fb.attacks.base.Attack:
        raise NotImplementedError

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, epsilon: float) -> Tensor:
        fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0), device=x.device)
        _, adv, _ = self.build()(fmodel, x, y, epsilons=float(epsilon))
        return adv


@dataclass
class FGSM(FoolboxAttack):
    """L∞ fast gradient sign method (one step of size ε on the cross-entropy)."""

    name: str = "fgsm"
    norm: str = "linf"

    def build(self) -> fb.attacks.base.Attack:
        return fb.attacks.LinfFastGradientAttack(random_start=False)

    def describe(self) -> str:
        return "FGSM (L∞, one signed-gradient step of size ε)"


@dataclass
class LinfPGD(Attack):
    """L∞ projected gradient descent (Madry et al.), random start (``isorobust.attacks.pgd``: foolbox's
    LinfPGD step for step, on the samples not yet fooled); by default 50 steps under a cosine schedule
    from 0.25·ε on the cross-entropy (see ``configs/attack/pgd.yaml`` and ``benchmarks/PGD_VS_APGD.md``
    for why), keeping any iterate that fooled the model."""

    name: str = "pgd"
    norm: str = "linf"
    steps: int = 40
    rel_stepsize: float = 0.01 / 0.3
    abs_stepsize: float | None = None
    random_start: bool = True
    schedule: str = "constant"  # or cosine
    loss: str = "ce"  # or margin
    keep_fooled: bool = True  # return an iterate that fooled the model, if any (not only the last)

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, epsilon: float) -> Tensor:
        stepsize = self.abs_stepsize if self.abs_stepsize is not None else self.rel_stepsize * epsilon
        return pgd_linf(model, x, y, float(epsilon), self.steps, stepsize, self.schedule, self.loss,
                        self.random_start, self.keep_fooled)

    def describe(self) -> str:
        step = f"{self.abs_stepsize}" if self.abs_stepsize is not None else f"{self.rel_stepsize:.4g}·ε"
        if self.schedule != "constant":
            step += f" ({self.schedule} schedule)"
        start = "random start" if self.random_start else "no random start"
        restarts = f", {self.restarts} restarts" if self.restarts > 1 else ""
        loss = "" if self.loss == "ce" else f", {self.loss} loss"
        return f"PGD (L∞, {self.steps} steps of {step}, {start}{loss}{restarts})"


@dataclass
class L2PGD(FoolboxAttack):
    """L2 projected gradient descent on the cross-entropy, foolbox defaults (50 steps of ε/40)."""

    name: str = "l2pgd"
    norm: str = "l2"
    steps: int = 50
    rel_stepsize: float = 0.025
    random_start: bool = True

    def build(self) -> fb.attacks.base.Attack:
        return fb.attacks.L2PGD(steps=self.steps, rel_stepsize=self.rel_stepsize, random_start=self.random_start)

    def describe(self) -> str:
        restarts = f", {self.restarts} restarts" if self.restarts > 1 else ""
        return f"PGD (L2, {self.steps} steps of {self.rel_stepsize:.4g}·ε, random start{restarts})"


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no parameter gradients while attacking (attacks need input gradients only)."""
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
        model.train(was_training)


def robust_accuracy(robust: Tensor) -> float:
    """Fraction of samples that are classified correctly and survived the attack."""
    return robust.float().mean().item()


@dataclass
class AttackCost:
    """What one attack cost at one ε: wall seconds, the samples it attacked (survivors only, summed over
    restarts) and its sample-forwards (rows of every forward pass the attack made: per sample, one per
    iteration of a gradient attack, one per query of Square), the unit its throughput is measured in."""

    attack: str
    epsilon: float
    seconds: float
    samples: int
    sample_forwards: int

    def record(self) -> dict[str, Any]:
        return {"attack": self.attack, "epsilon": self.epsilon, "seconds": self.seconds, "samples": self.samples,
                "sample_forwards": self.sample_forwards}


class _ForwardCounter:
    """Counts the rows of every forward pass of a model while ``active`` (a forward hook)."""

    def __init__(self, model: nn.Module) -> None:
        self.rows = 0
        self.active = False
        self.handle = model.register_forward_hook(self._count)

    def _count(self, module: nn.Module, inputs: tuple, output: Any) -> None:
        if self.active and inputs and isinstance(inputs[0], Tensor):
            self.rows += int(inputs[0].shape[0])


def robust_masks(
    model: nn.Module,
    attack: Attack,
    x: Tensor,
    y: Tensor,
    epsilons: Sequence[float],
    batch_size: int,
    seed: int,
    costs: list[AttackCost] | None = None,
    progress: AttackProgress | None = None,
) -> tuple[Tensor, list[Tensor]]:
    """Per-sample outcome of one attack: clean-correct mask and, for each ε (ascending), the mask
    of samples that are correct and not fooled. With ``progress``, the state after each ε is saved there,
    and a state saved earlier for the same job is taken up after its last ε (the same masks as a run that
    was not interrupted; ``costs`` then holds the saved radii's records too).

    Points are attacked at ε only while they are still robust: an adversarial example found
    inside a smaller ball is also inside every larger one, so a success at a smaller ε is a
    success at the larger ε. Each ε therefore costs only the surviving points, and the curve is
    non-increasing by construction, while every point still gets the full attack at every ε it
    has not yet been broken at (at least as strong as attacking each ε independently).
    """
    if list(epsilons) != sorted(epsilons):
        raise ValueError("epsilons must be ascending")
    epsilons = [float(e) for e in epsilons]
    saved = progress.load(epsilons) if progress is not None else None
    spent: list[AttackCost] = []  # this attack's, radius by radius
    counter = _ForwardCounter(model) if costs is not None else None
    try:
        with frozen(model):
            if saved is None:
                torch.manual_seed(seed)  # PGD's random start: the same seed gives the same table
                correct = predict(model, x, batch_size) == y
                masks = []
            else:
                correct, masks = saved.correct.to(x.device), [m.to(x.device) for m in saved.masks]
                restore_generators(saved.generators)
                spent = [AttackCost(**c) for c in saved.costs]
                log.info("%s: resumed after ε = %g (%d of %d radii done)", attack.name, saved.epsilons[-1],
                         len(masks), len(epsilons))
            robust = masks[-1].clone() if masks and attack.cumulative else correct.clone()
            all_idx = torch.arange(x.shape[0], device=x.device)
            for eps in epsilons[len(masks):]:
                t0, attacked = time.perf_counter(), 0
                rows_before = counter.rows if counter is not None else 0
                if not attack.cumulative:
                    robust = correct.clone()
                if eps > 0:
                    for _ in range(attack.restarts):
                        # A batch-dependent attack sees the same fixed batches as the original protocol.
                        targets = all_idx if attack.batch_dependent else robust.nonzero().squeeze(1)
                        attacked += targets.numel()
                        for start in range(0, targets.numel(), batch_size):
                            idx = targets[start : start + batch_size]
                            if counter is not None:
                                counter.active = True
                            adv = attack.perturb(model, x[idx], y[idx], float(eps))
                            if counter is not None:
                                counter.active = False
                            with torch.no_grad():
                                broken = model(adv).argmax(dim=1) != y[idx]
                            robust[idx[broken]] = False
                masks.append(robust.clone())
                # one sync per ε (the mask above already waited for the device)
                spent.append(AttackCost(attack.name, float(eps), time.perf_counter() - t0, attacked,
                                        counter.rows - rows_before if counter is not None else 0))
                if progress is not None:
                    progress.save(AttackState(epsilons[: len(masks)], correct, masks, generator_states(),
                                              [c.record() for c in spent]))
    finally:
        if counter is not None:
            counter.handle.remove()
    if costs is not None:
        costs.extend(spent)
    return correct, masks


def robust_accuracy_curve(
    model: nn.Module,
    attack: Attack,
    x: Tensor,
    y: Tensor,
    epsilons: Sequence[float],
    batch_size: int,
    seed: int,
) -> tuple[float, list[float]]:
    """Clean accuracy and robust accuracy at each ε (ascending) of one attack."""
    correct, masks = robust_masks(model, attack, x, y, epsilons, batch_size, seed)
    return robust_accuracy(correct), [robust_accuracy(m) for m in masks]
