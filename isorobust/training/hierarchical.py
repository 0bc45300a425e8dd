"""Training a hierarchical network level by level with restricted back-propagation.

For level b with labels y_b (the group of each class at level b):

    L_b = CE(read-out_b(x), y_b) + β · isometric_loss(x, block_b's last hidden layer, y_b, K)

The levels are trained together, one Adam step per minibatch on Σ_b L_b, but each block's input is
detached from the blocks before it, so L_b's gradient reaches only block b and read-out b: a later
level never moves the representation an earlier level relies on.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from isorobust.data import ImageDataset
from isorobust.errors import ConfigError
from isorobust.hierarchy import Hierarchy
from isorobust.losses import isometric_loss
from isorobust.models.hierarchical import HierarchicalMLP
from isorobust.training.standard import Regularizer, StandardTrainer

log = logging.getLogger(__name__)


def level_losses(
    model: HierarchicalMLP,
    hierarchy: Hierarchy,
    x: Tensor,
    y: Tensor,
    scale: float | None,
    restricted: bool = True,
) -> list[tuple[Tensor, Tensor | None]]:
    """(cross-entropy, isometric term or None when ``scale`` is None) of every level, unweighted."""
    logits, features = model.forward_levels(x, restricted=restricted)
    losses = []
    for level in range(hierarchy.depth):
        y_level = hierarchy.level_labels(y, level)
        ce = F.cross_entropy(logits[level], y_level)
        iso = None if scale is None else isometric_loss(x, features[model.level_layer(level)], y_level, scale=scale)
        losses.append((ce, iso))
    return losses


def total_loss(losses: list[tuple[Tensor, Tensor | None]], weight: float) -> Tensor:
    return sum(ce if iso is None else ce + weight * iso for ce, iso in losses)


@torch.no_grad()
def level_accuracies(model: HierarchicalMLP, hierarchy: Hierarchy, x: Tensor, y: Tensor, batch_size: int) -> list[float]:
    was_training = model.training
    model.eval()
    correct = torch.zeros(hierarchy.depth)
    for i in range(0, x.shape[0], batch_size):
        logits, _ = model.forward_levels(x[i : i + batch_size])
        for level, lg in enumerate(logits):
            correct[level] += (lg.argmax(dim=1) == hierarchy.level_labels(y[i : i + batch_size], level)).sum().item()
    model.train(was_training)
    return (correct / x.shape[0]).tolist()


@dataclass
class HierarchicalTrainer(StandardTrainer):
    """Adam on Σ_b L_b with restricted back-propagation; the epoch loop (batches, checkpoints,
    ``eval_every``) is StandardTrainer's, the step's loss and the epoch's record are its own."""

    name: str = "hierarchical"

    def prepare(self, model: HierarchicalMLP, regularizers: list[Regularizer], *_: Any) -> None:
        other = [r.name for r in regularizers if r.name != "isometric"]
        if other:
            raise ConfigError(f"trainer=hierarchical trains with reg=isometric only (got {', '.join(other)})")
        regularizer = regularizers[0] if regularizers else None
        self._weight = regularizer.weight if regularizer is not None else 0.0
        self._scale = getattr(regularizer, "scale") if regularizer is not None else None
        self._hierarchy = Hierarchy(model.levels, model.num_classes)

    def step_loss(self, model: HierarchicalMLP, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        losses = level_losses(model, self._hierarchy, x, y, self._scale)
        terms: dict[str, Tensor] = {}
        for level, (ce, iso) in enumerate(losses):
            terms[f"L{level}_cross_entropy"] = ce
            if iso is not None:
                terms[f"L{level}_isometric"] = iso
        return total_loss(losses, self._weight), terms

    def epoch_record(self, model: HierarchicalMLP, data: ImageDataset, means: dict[str, float]) -> dict[str, Any]:
        hierarchy = self._hierarchy
        accuracies = level_accuracies(model, hierarchy, data.test.x, data.test.y, 1000)
        levels = [{
            "level": level,
            "train_cross_entropy": means[f"L{level}_cross_entropy"],
            "train_isometric_loss": means.get(f"L{level}_isometric"),
            "test_accuracy": accuracies[level],
        } for level in range(hierarchy.depth)]
        return {
            # the finest level (the classes) in the standard keys, every level under "levels"
            "train_cross_entropy": levels[-1]["train_cross_entropy"],
            "train_isometric_loss": levels[-1]["train_isometric_loss"],
            "test_accuracy": accuracies[-1],
            "levels": levels,
        }


__all__ = ["HierarchicalTrainer", "level_losses", "total_loss", "level_accuracies"]
