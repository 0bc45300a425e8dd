"""Label hierarchies: levels of nested partitions of the class ids, coarse to fine.

``levels[b]`` is a list of groups (lists of class ids). Every level is a partition of the classes,
each level refines the one before it, and the last level is the classes themselves (the network's
final read-out is the data set's classifier). A class's label at level b is the index of its group.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from isorobust.errors import ConfigError


def _plain(levels: Any) -> list[list[list[Any]]]:
    """OmegaConf lists and tuples to plain lists (values unchecked here)."""
    try:
        return [[list(group) for group in level] for level in levels]
    except TypeError:
        raise ConfigError(f"hierarchy.levels must be a list of levels, each a list of groups of class ids (got {levels!r})") from None


def hierarchy_problems(levels: Any, num_classes: int) -> list[str]:
    """Everything wrong with ``levels`` for a data set of ``num_classes`` classes (empty when valid)."""
    if levels is None or not len(levels):
        return ["hierarchy.levels must hold at least one level"]
    levels = _plain(levels)
    problems = []
    owner: list[dict[int, int]] = []  # per level: class -> group index
    for b, level in enumerate(levels):
        where = f"hierarchy.levels[{b}]"
        seen: dict[int, int] = {}
        for g, group in enumerate(level):
            if not group:
                problems.append(f"{where} group {g} is empty")
            for c in group:
                if not isinstance(c, int) or isinstance(c, bool) or not 0 <= c < num_classes:
                    problems.append(f"{where} group {g}: {c!r} is not a class id in [0, {num_classes - 1}]")
                elif c in seen:
                    problems.append(f"{where}: class {c} is in two groups ({seen[c]} and {g})")
                else:
                    seen[c] = g
        missing = sorted(set(range(num_classes)) - set(seen))
        if missing:
            problems.append(f"{where}: classes {missing} are in no group")
        owner.append(seen)
        if b > 0:
            for g, group in enumerate(level):
                parents = {owner[b - 1][c] for c in group if c in owner[b - 1]}
                if len(parents) > 1:
                    problems.append(f"{where} group {g} {group} does not refine level {b - 1}: "
                                    f"it spans its groups {sorted(parents)}")
    if not problems and any(len(group) != 1 for group in levels[-1]):
        problems.append(f"the last level, hierarchy.levels[{len(levels) - 1}], must be the classes themselves "
                        f"(one class per group)")
    return problems


class Hierarchy:
    """A validated label hierarchy with per-level label maps and tree distances."""

    def __init__(self, levels: Any, num_classes: int) -> None:
        problems = hierarchy_problems(levels, num_classes)
        if problems:
            raise ConfigError("invalid hierarchy: " + "; ".join(problems))
        self.levels = _plain(levels)
        self.num_classes = num_classes
        table = torch.empty(len(self.levels), num_classes, dtype=torch.long)
        for b, level in enumerate(self.levels):
            for g, group in enumerate(level):
                table[b, group] = g
        self.table = table  # table[b, c] = group of class c at level b

    @property
    def depth(self) -> int:
        return len(self.levels)

    @property
    def group_counts(self) -> list[int]:
        return [len(level) for level in self.levels]

    def level_labels(self, y: Tensor, level: int) -> Tensor:
        """Class labels ``y`` -> group labels at ``level``."""
        return self.table[level].to(y.device)[y]

    def tree_distance(self, a: Tensor, b: Tensor) -> Tensor:
        """Levels to climb from class ``a`` to the nearest common ancestor with class ``b``: 0 for the
        same class, 1 for siblings in the last-but-one level's group, ..., depth for classes that
        differ already at level 0 (their common ancestor is the root)."""
        table = self.table.to(a.device)
        same = table[:, a] == table[:, b]  # (depth, N); refinement makes it a prefix of True values
        return self.depth - same.long().sum(dim=0)


def as_levels(levels: Sequence[Sequence[Sequence[int]]]) -> list[list[list[int]]]:
    return _plain(levels)


__all__ = ["Hierarchy", "hierarchy_problems", "as_levels"]
