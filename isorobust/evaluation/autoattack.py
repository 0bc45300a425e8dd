"""AutoAttack-strength evaluation and a gradient-free attack, with components from torchattacks.

``AutoAttack`` runs, on each batch, APGD-CE, then APGD-T (9 target classes), FAB-T (9 target
classes), then Square, each on the samples the earlier ones did not break (Croce & Hein 2020,
'standard' version). Defaults follow the original: 100 iterations, 5000 Square queries. On a CPU
this is slow: trim ``eval.n_samples`` rather than the attack, and say so in the table.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from isorobust.errors import ConfigError
from isorobust.evaluation.attacks import Attack

_NORMS = {"linf": "Linf", "l2": "L2"}


def _num_classes(model: nn.Module, x: Tensor) -> int:
    with torch.no_grad():
        return int(model(x[:1]).shape[1])


@dataclass
class AutoAttack(Attack):
    name: str = "autoattack"
    norm: str = "linf"
    steps: int = 100
    square_queries: int = 5000
    seed: int = 0

    def components(self, model: nn.Module, n_classes: int, epsilon: float) -> list:
        import torchattacks as ta

        if n_classes < 4:
            raise ConfigError(f"AutoAttack's targeted DLR loss needs at least 4 classes (the model has {n_classes})")
        norm = _NORMS[self.norm]
        common = dict(norm=norm, eps=epsilon, seed=self.seed)
        apgdt = ta.APGDT(model, steps=self.steps, n_classes=n_classes, n_restarts=1, **common)
        fab = ta.FAB(model, steps=self.steps, multi_targeted=True, n_classes=n_classes, n_restarts=1, **common)
        for targeted in (apgdt, fab):
            targeted.n_target_classes = min(9, n_classes - 1)  # the original: the 9 runner-up classes
        return [
            ta.APGD(model, steps=self.steps, loss="ce", n_restarts=1, **common),
            apgdt,
            fab,
            ta.Square(model, n_queries=self.square_queries, n_restarts=1, **common),
        ]

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, epsilon: float) -> Tensor:
        import torchattacks as ta

        attack = ta.MultiAttack(self.components(model, _num_classes(model, x), epsilon))
        return attack(x, y)

    def describe(self) -> str:
        return (f"AutoAttack standard ({self.norm}): APGD-CE, APGD-T, FAB-T ({self.steps} iterations), "
                f"Square ({self.square_queries} queries), via torchattacks")


@dataclass
class Square(Attack):
    """Square attack (Andriushchenko et al. 2020): gradient-free, random square-shaped updates."""

    name: str = "square"
    norm: str = "linf"
    n_queries: int = 5000
    p_init: float = 0.8
    seed: int = 0

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, epsilon: float) -> Tensor:
        import torchattacks as ta

        attack = ta.Square(model, norm=_NORMS[self.norm], eps=epsilon, n_queries=self.n_queries,
                           n_restarts=1, p_init=self.p_init, loss="margin", seed=self.seed)
        return attack(x, y)

    def describe(self) -> str:
        return f"Square ({self.norm}, {self.n_queries} queries, gradient-free)"
