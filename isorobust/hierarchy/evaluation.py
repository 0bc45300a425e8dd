"""Per-level evaluation of hierarchical networks: clean and robust accuracy against each level's
read-out (with that level's labels), and how far up the hierarchy the finest level's errors go.

For any other model these functions fall back to the ordinary single-table evaluation, so the
pipeline calls them unconditionally.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from isorobust.data import Split
from isorobust.evaluation.attacks import FoolboxAttack
from isorobust.evaluation.clean import predict
from isorobust.evaluation.robustness import markdown_table, robustness_table
from isorobust.hierarchy import Hierarchy

LEVEL = "level"
TREE_DISTANCE = "error_tree_distance"


class LevelReadout(nn.Module):
    """The classifier of one level: ``forward(x)`` = that level's logits (full graph, nothing detached)."""

    def __init__(self, model: nn.Module, level: int) -> None:
        super().__init__()
        self.model = model
        self.level = level

    def forward(self, x: Tensor) -> Tensor:
        return self.model.forward_levels(x)[0][self.level]


def model_hierarchy(model: nn.Module) -> Hierarchy | None:
    levels = getattr(model, "levels", None)
    return None if levels is None else Hierarchy(levels, model.num_classes)


def mean_error_tree_distance(hierarchy: Hierarchy, predicted: Tensor, labels: Tensor) -> float | None:
    """Mean tree distance over the misclassified samples (None when there are none)."""
    wrong = predicted != labels
    if not wrong.any():
        return None
    return hierarchy.tree_distance(predicted[wrong], labels[wrong]).float().mean().item()


def robustness_by_level(
    model: nn.Module,
    test: Split,
    attacks: Mapping[str, FoolboxAttack],
    epsilons: Sequence[float],
    n_samples: int | None,
    batch_size: int,
    seed: int,
    meta: Mapping[str, Any],
    broken: dict | None = None,
) -> pd.DataFrame:
    """``robustness_table`` for an ordinary model; for a hierarchical one, the table of every level's
    read-out stacked, with a ``level`` column, and ``error_tree_distance`` (clean errors of the
    finest level on the attacked samples) filled in on the finest level's rows. ``broken``: see
    ``robustness_table`` (ordinary models only)."""
    hierarchy = model_hierarchy(model)
    if hierarchy is None:
        return robustness_table(model, test, attacks, epsilons, n_samples, batch_size, seed, meta, broken=broken)
    frames = []
    for level in range(hierarchy.depth):
        split = Split(test.x, hierarchy.level_labels(test.y, level))
        frames.append(robustness_table(LevelReadout(model, level), split, attacks, epsilons, n_samples,
                                       batch_size, seed, {**meta, LEVEL: level}))
    table = pd.concat(frames, ignore_index=True)
    x, y = (test.x, test.y) if n_samples is None else (test.x[:n_samples], test.y[:n_samples])
    distance = mean_error_tree_distance(hierarchy, predict(model, x, batch_size), y)
    table[TREE_DISTANCE] = float("nan")
    table.loc[table[LEVEL] == hierarchy.depth - 1, TREE_DISTANCE] = float("nan") if distance is None else distance
    return table


def markdown_by_level(table: pd.DataFrame, attacks: Mapping[str, FoolboxAttack] | None = None) -> str:
    """``markdown_table``, once per level when the table has a ``level`` column."""
    if LEVEL not in table.columns:
        return markdown_table(table, attacks)
    parts = []
    for level, rows in table.groupby(LEVEL, sort=True):
        title = f"## Level {level}"
        if TREE_DISTANCE in rows and rows[TREE_DISTANCE].notna().any():
            title += f" (mean tree distance of clean errors: {rows[TREE_DISTANCE].iloc[0]:.3f})"
        parts.append(title + "\n\n" + markdown_table(rows.reset_index(drop=True), attacks))
    return "\n".join(parts)


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


def check_hierarchy_config(cfg: Any) -> None:
    """A hierarchical model needs a ``hierarchy`` config (and vice versa), caught before any work."""
    from isorobust.errors import ConfigError

    has_hierarchy = cfg.get("hierarchy") is not None
    wants_levels = "levels" in cfg.model
    if wants_levels and not has_hierarchy:
        raise ConfigError(f"model={cfg.model.get('name')} needs a label hierarchy (e.g. +hierarchy=mnist_3level)")
    if has_hierarchy and not wants_levels:
        raise ConfigError(f"a hierarchy needs model=hierarchical_mlp (got model={cfg.model.get('name')})")
    if has_hierarchy and "HierarchicalTrainer" not in str(cfg.trainer.get("_target_", "")):
        raise ConfigError(f"a hierarchy needs trainer=hierarchical (got trainer={cfg.trainer.get('name')})")


__all__ = ["LevelReadout", "check_hierarchy_config", "hierarchy_metrics", "markdown_by_level",
           "mean_error_tree_distance", "robustness_by_level"]
