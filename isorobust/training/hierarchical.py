"""Training a hierarchical network level by level with restricted back-propagation.

For level b with labels y_b (the group of each class at level b):

    L_b = CE(read-out_b(x), y_b) + β · isometric_loss(x, block_b's last hidden layer, y_b, K)

The levels are trained together, one Adam step per minibatch on Σ_b L_b, but each block's input is
detached from the blocks before it, so L_b's gradient reaches only block b and read-out b: a later
level never moves the representation an earlier level relies on.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from isorobust.data import ImageDataset
from isorobust.errors import ConfigError
from isorobust.hierarchy import Hierarchy
from isorobust.losses import isometric_loss
from isorobust.models.hierarchical import HierarchicalMLP
from isorobust.training.standard import Regularizer, StandardTrainer, check_finite

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
    """Adam on Σ_b L_b with restricted back-propagation; epochs, batches, checkpoints as StandardTrainer."""

    name: str = "hierarchical"

    def fit(
        self,
        model: HierarchicalMLP,
        data: ImageDataset,
        regularizers: Sequence[Regularizer] | None,
        seed: int,
        run_dir: Path,
        **_: Any,
    ) -> list[dict[str, Any]]:
        hierarchy = Hierarchy(model.levels, model.num_classes)
        regularizers = list(regularizers or [])
        other = [r.name for r in regularizers if r.name != "isometric"]
        if other:
            raise ConfigError(f"trainer=hierarchical trains with reg=isometric only (got {', '.join(other)})")
        regularizer = regularizers[0] if regularizers else None
        weight = regularizer.weight if regularizer is not None else 0.0
        scale = getattr(regularizer, "scale") if regularizer is not None else None
        train = data.train
        optimizer, shuffle, start_epoch, ckpt_path = self._begin(model, seed, run_dir)
        n_batches = math.ceil(len(train) / self.batch_size)
        for epoch in range(start_epoch, self.epochs):
            model.train()
            t0 = time.perf_counter()
            ce_sums, iso_sums = [0.0] * hierarchy.depth, [0.0] * hierarchy.depth
            for b, idx in self._batches(len(train), shuffle, train.x.device, epoch):
                batch = train.take(idx)
                x, y = batch.x, batch.y
                losses = level_losses(model, hierarchy, x, y, scale)
                loss = total_loss(losses, weight)
                check_finite(loss.item(), epoch, b, n_batches)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                for level, (ce, iso) in enumerate(losses):
                    ce_sums[level] += ce.item()
                    iso_sums[level] += iso.item() if iso is not None else 0.0
            accuracies = level_accuracies(model, hierarchy, data.test.x, data.test.y, 1000)
            levels = [{
                "level": level,
                "train_cross_entropy": ce_sums[level] / n_batches,
                "train_isometric_loss": iso_sums[level] / n_batches if scale is not None else None,
                "test_accuracy": accuracies[level],
            } for level in range(hierarchy.depth)]
            record = {
                "epoch": epoch + 1,
                # the finest level (the classes) in the standard keys, every level under "levels"
                "train_cross_entropy": levels[-1]["train_cross_entropy"],
                "train_isometric_loss": levels[-1]["train_isometric_loss"],
                "test_accuracy": accuracies[-1],
                "levels": levels,
                "seconds": time.perf_counter() - t0,
            }
            self.history.append(record)
            log.info("epoch %d/%d  " + "  ".join(f"L{l['level']} CE %.4f acc %.4f" for l in levels) + "  (%.1fs)",
                     epoch + 1, self.epochs,
                     *[v for l in levels for v in (l["train_cross_entropy"], l["test_accuracy"])], record["seconds"])
            self._save_checkpoint(ckpt_path, epoch, model, optimizer, shuffle)
        model.eval()
        return self.history


__all__ = ["HierarchicalTrainer", "level_losses", "total_loss", "level_accuracies"]
