"""A hierarchical MLP: one block of hidden layers and one read-out per level of a label hierarchy.

    x -> input layer -> block 0 -> read-out 0 (level-0 groups)
                           └-> block 1 -> read-out 1 (level-1 groups) -> ... -> read-out L-1 (classes)

``forward(x)`` gives the last level's logits (the classes), so attacks and clean metrics treat it as
an ordinary classifier. ``forward_levels(x, restricted=True)`` detaches each block's input from the
blocks before it: a loss on level b then reaches only block b and read-out b (restricted
back-propagation). Only training uses it; attacks always see the full, undetached graph.
"""
from __future__ import annotations

import math
from typing import Any

from torch import Tensor, nn

from isorobust.hierarchy import Hierarchy
from isorobust.models.mlp import ACTIVATIONS


class HierarchicalMLP(nn.Module):
    def __init__(
        self,
        in_features: int,
        levels: list[list[list[int]]],
        num_classes: int,
        width: int = 100,
        depth_per_level: int = 2,
        activation: str = "tanh",
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r} (choose from {', '.join(ACTIVATIONS)})")
        if depth_per_level < 1:
            raise ValueError(f"depth_per_level must be >= 1 (got {depth_per_level})")
        hierarchy = Hierarchy(levels, num_classes)
        self.levels = hierarchy.levels
        self.num_classes = num_classes
        self.depth_per_level = depth_per_level
        self.config = dict(in_features=in_features, levels=self.levels, num_classes=num_classes, width=width,
                           depth_per_level=depth_per_level, activation=activation)
        self.input_layer = nn.Linear(in_features, width)  # part of block 0: trained by level 0's loss
        self.blocks = nn.ModuleList(
            nn.ModuleList(nn.Linear(width, width) for _ in range(depth_per_level)) for _ in self.levels
        )
        self.readouts = nn.ModuleList(nn.Linear(width, n) for n in hierarchy.group_counts)
        self.act = ACTIVATIONS[activation]()
        for block in self.blocks:
            for layer in block:
                nn.init.orthogonal_(layer.weight)  # distance-preserving linear part at init, as in MLP
                nn.init.zeros_(layer.bias)

    @property
    def num_hidden(self) -> int:
        return 1 + self.depth_per_level * len(self.levels)

    def level_layer(self, level: int) -> int:
        """Index in the hidden representations of block ``level``'s last layer."""
        return self.depth_per_level * (level + 1)

    def block_parameters(self, level: int) -> list[nn.Parameter]:
        """What level ``level``'s loss trains under restricted back-propagation."""
        params = list(self.blocks[level].parameters()) + list(self.readouts[level].parameters())
        return (list(self.input_layer.parameters()) + params) if level == 0 else params

    def forward_levels(self, x: Tensor, restricted: bool = False) -> tuple[list[Tensor], list[Tensor]]:
        """Logits of every level and every hidden representation (index 0: after the input layer)."""
        h = self.act(self.input_layer(x.flatten(1)))
        features, logits = [h], []
        for level, (block, readout) in enumerate(zip(self.blocks, self.readouts)):
            if restricted and level > 0:
                h = h.detach()
            for layer in block:
                h = self.act(layer(h))
                features.append(h)
            logits.append(readout(h))
        return logits, features

    def forward_features(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        logits, features = self.forward_levels(x)
        return logits[-1], features

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_levels(x)[0][-1]


def hierarchical_mlp(
    input_shape: tuple[int, ...],
    num_classes: int,
    levels: Any,
    width: int = 100,
    depth_per_level: int = 2,
    activation: str = "tanh",
    name: str = "hierarchical_mlp",
) -> HierarchicalMLP:
    """Build a hierarchical MLP for a data set (the ``model=hierarchical_mlp`` config target)."""
    return HierarchicalMLP(math.prod(input_shape), levels, num_classes, width, depth_per_level, activation)


__all__ = ["HierarchicalMLP", "hierarchical_mlp"]


class LevelReadout(nn.Module):
    """The classifier of one level: ``forward(x)`` = that level's logits (full graph, nothing detached)."""

    def __init__(self, model: nn.Module, level: int) -> None:
        super().__init__()
        self.model = model
        self.level = level

    def forward(self, x: Tensor) -> Tensor:
        return self.model.forward_levels(x)[0][self.level]
