"""An attack for isorobust: random corners of the L∞ ball, a gradient-free baseline (docs/extending.md)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from isorobust.attacks.base import Attack


@dataclass
class RandomCorners(Attack):
    """x + ε·s for random signs s, `tries` times; per sample, the first try that fools the model."""

    name: str = "random_corners"
    norm: str = "linf"
    tries: int = 10

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, epsilon: float) -> Tensor:
        """Adversarial inputs inside the ε-ball and [0, 1]; whether they fool the model is judged elsewhere."""
        adv = x.clone()
        fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for _ in range(self.tries):
            signs = torch.randint(0, 2, x.shape, device=x.device).to(x.dtype) * 2 - 1
            candidate = (x + epsilon * signs).clamp(0.0, 1.0)
            adv[~fooled] = candidate[~fooled]  # samples already fooled keep their example
            with torch.no_grad():
                fooled |= model(candidate).argmax(dim=1) != y
        return adv

    def describe(self) -> str:
        return f"random corners (L∞, {self.tries} tries, gradient-free)"
