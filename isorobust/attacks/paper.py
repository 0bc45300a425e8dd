"""The original experiments' attack protocol, kept apart and labelled as such.

The original code attacked with the sign of the gradient of the *training* loss, cross-entropy
plus β times the isometric term, computed on a whole test batch with the test labels. The
isometric term couples the samples of a batch, so the perturbation of one image depends on the
others; and the attack is not the one the field uses to measure robustness (that attacks the
cross-entropy alone, see ``FGSM``). Tables show both side by side for the same model.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from isorobust.attacks.base import Attack
from isorobust.losses import isometric_loss


@dataclass
class PaperFGSM(Attack):
    """x' = clip(x + ε·sign ∇_x [CE(f(x), y) + β·isometric(x, Φ(x), y; K)], 0, 1) on fixed test batches."""

    name: str = "paper_fgsm"
    norm: str = "linf"
    weight: float = 0.0
    scale: float = 10.0
    layer: int = -1
    batch_dependent = True
    cumulative = False

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, epsilon: float) -> Tensor:
        x = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            logits, features = model.forward_features(x)
            loss = F.cross_entropy(logits, y)
            if self.weight:
                loss = loss + self.weight * isometric_loss(x, features[self.layer], y, scale=self.scale)
            (grad,) = torch.autograd.grad(loss, x)
        return (x + epsilon * grad.sign()).clamp(0.0, 1.0).detach()

    def describe(self) -> str:
        return (f"ORIGINAL PROTOCOL: one signed-gradient step on CE + {self.weight:g}·isometric term "
                f"(K={self.scale:g}) of the whole test batch with test labels; each ε counted on its own")
