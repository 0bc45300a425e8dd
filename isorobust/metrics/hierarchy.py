"""Per-level clean metrics of hierarchical networks: each level's read-out against that level's labels,
and how far up the hierarchy the finest level's errors go."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from isorobust.data import Split
from isorobust.hierarchy import Hierarchy
from isorobust.metrics.clean import predict
from isorobust.models.hierarchical import LevelReadout
from isorobust.rundir import LEVEL, TREE_DISTANCE



def model_hierarchy(model: nn.Module) -> Hierarchy | None:
    levels = getattr(model, "levels", None)
    return None if levels is None else Hierarchy(levels, model.num_classes)


def mean_error_tree_distance(hierarchy: Hierarchy, predicted: Tensor, labels: Tensor) -> float | None:
    """Mean tree distance over the misclassified samples (None when there are none)."""
    wrong = predicted != labels
    if not wrong.any():
        return None
    return hierarchy.tree_distance(predicted[wrong], labels[wrong]).float().mean().item()


@torch.no_grad()
def hierarchy_metrics(model: nn.Module, test: Split, batch_size: int) -> dict[str, Any]:
    """For ``metrics.json``: per-level clean accuracy on the whole test split and the finest level's
    mean error tree distance; empty for an ordinary model."""
    hierarchy = model_hierarchy(model)
    if hierarchy is None:
        return {}
    model.eval()
    predictions = [predict(LevelReadout(model, level), test.x, batch_size) for level in range(hierarchy.depth)]
    levels = [{
        LEVEL: level,
        "groups": hierarchy.group_counts[level],
        "clean_accuracy": (pred == hierarchy.level_labels(test.y, level)).float().mean().item(),
    } for level, pred in enumerate(predictions)]
    return {"hierarchy": {"levels": hierarchy.levels, "per_level": levels,
                          TREE_DISTANCE: mean_error_tree_distance(hierarchy, predictions[-1], test.y)}}
