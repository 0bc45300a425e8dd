"""Adversarial attacks (through foolbox) and robust-accuracy sweeps over ε.

An attack here is a small config object that knows its name, its norm and how to build the
foolbox attack; the sweep logic is separate and works for any of them.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import foolbox as fb
import torch
from torch import Tensor, nn

from isorobust.evaluation.clean import predict


@dataclass
class FoolboxAttack:
    """Base: subclasses set ``name``/``norm`` and build the foolbox attack."""

    name: str = "attack"
    norm: str = "linf"

    def build(self) -> fb.attacks.base.Attack:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


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
class LinfPGD(FoolboxAttack):
    """L∞ projected gradient descent on the cross-entropy (Madry et al.), foolbox defaults."""

    name: str = "pgd"
    norm: str = "linf"
    steps: int = 40
    rel_stepsize: float = 0.01 / 0.3
    abs_stepsize: float | None = None
    random_start: bool = True

    def build(self) -> fb.attacks.base.Attack:
        return fb.attacks.LinfPGD(
            steps=self.steps,
            rel_stepsize=self.rel_stepsize,
            abs_stepsize=self.abs_stepsize,
            random_start=self.random_start,
        )

    def describe(self) -> str:
        step = f"{self.abs_stepsize}" if self.abs_stepsize is not None else f"{self.rel_stepsize:.4g}·ε"
        start = "random start" if self.random_start else "no random start"
        return f"PGD (L∞, {self.steps} steps of {step}, {start})"


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


def robust_masks(
    model: nn.Module,
    attack: FoolboxAttack,
    x: Tensor,
    y: Tensor,
    epsilons: Sequence[float],
    batch_size: int,
    seed: int,
) -> tuple[Tensor, list[Tensor]]:
    """Per-sample outcome of one attack: clean-correct mask and, for each ε (ascending), the mask
    of samples that are correct and not fooled.

    Points are attacked at ε only while they are still robust: an adversarial example found
    inside a smaller ball is also inside every larger one, so a success at a smaller ε is a
    success at the larger ε. Each ε therefore costs only the surviving points, and the curve is
    non-increasing by construction, while every point still gets the full attack at every ε it
    has not yet been broken at (at least as strong as attacking each ε independently).
    """
    if list(epsilons) != sorted(epsilons):
        raise ValueError("epsilons must be ascending")
    torch.manual_seed(seed)  # PGD's random start: the same seed gives the same table
    with frozen(model):
        fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0), device=x.device)
        fb_attack = attack.build()
        correct = predict(model, x, batch_size) == y
        robust = correct.clone()
        masks = []
        for eps in epsilons:
            if eps > 0:
                alive = robust.nonzero().squeeze(1)
                for start in range(0, alive.numel(), batch_size):
                    idx = alive[start : start + batch_size]
                    _, adv, _ = fb_attack(fmodel, x[idx], y[idx], epsilons=float(eps))
                    with torch.no_grad():
                        broken = model(adv).argmax(dim=1) != y[idx]
                    robust[idx[broken]] = False
            masks.append(robust.clone())
    return correct, masks


def robust_accuracy_curve(
    model: nn.Module,
    attack: FoolboxAttack,
    x: Tensor,
    y: Tensor,
    epsilons: Sequence[float],
    batch_size: int,
    seed: int,
) -> tuple[float, list[float]]:
    """Clean accuracy and robust accuracy at each ε (ascending) of one attack."""
    correct, masks = robust_masks(model, attack, x, y, epsilons, batch_size, seed)
    return robust_accuracy(correct), [robust_accuracy(m) for m in masks]
