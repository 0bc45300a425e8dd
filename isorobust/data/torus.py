"""A toy manifold: points on a 2-torus in R³, classes = contiguous blocks of the (u, v) angle grid.

    p(u, v) = ((R + r·cos v)·cos u, (R + r·cos v)·sin u, r·sin v),   u, v in [0, 2π)

Training points: the N×N grid of angles. Test points: a denser M×M grid, shifted by half a cell,
with Gaussian noise in R³. The class of a point is the block of the angle grid it lies in
(``class_grid = [cu, cv]``: cu blocks along u times cv along v).

The attacks (foolbox, bounds (0, 1)) and the ε grid assume inputs in [0, 1]; rather than giving
data sets their own bounds, the torus is mapped into [0, 1]³ by one uniform scale and shift,
p' = 1/2 + p / (2·extent), extent = R + r + 4·noise. A uniform scale keeps every distance ratio,
so the isometry figures are unchanged; ε and ``test_boundary_distance`` are in these units.
The rare noisy point beyond the cube is clamped to it.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from isorobust.data.dataset import ImageDataset, Split, first_n
from isorobust.errors import ConfigError

TWO_PI = 2.0 * math.pi


@dataclass
class TorusDataset(ImageDataset):
    # Intrinsic distance (along the surface, in input units) of each test point to the nearest class
    # boundary: the isometry report compares points near to and far from the boundaries.
    test_boundary_distance: Tensor | None = None
    # The (u, v) angles of each test point, (N, 2) in [0, 2π): the isometry map draws the test points
    # in the angle square (isometry_regions.isometry_map_report).
    test_angles: Tensor | None = None

    def to(self, device: torch.device | str) -> "TorusDataset":
        boundary = None if self.test_boundary_distance is None else self.test_boundary_distance.to(device)
        angles = None if self.test_angles is None else self.test_angles.to(device)
        return TorusDataset(self.name, self.train.to(device), self.test.to(device), self.num_classes, boundary,
                            angles)


def torus_points(u: Tensor, v: Tensor, major_radius: float, minor_radius: float) -> Tensor:
    """The embedding p(u, v) in R³, (N, 3)."""
    ring = major_radius + minor_radius * torch.cos(v)
    return torch.stack([ring * torch.cos(u), ring * torch.sin(u), minor_radius * torch.sin(v)], dim=1)


def block_labels(u: Tensor, v: Tensor, class_grid: Sequence[int]) -> Tensor:
    """Class = index of the (u, v) block: cu contiguous blocks along u times cv along v."""
    cu, cv = class_grid
    bu = torch.floor(u / TWO_PI * cu).long().clamp_(0, cu - 1)
    bv = torch.floor(v / TWO_PI * cv).long().clamp_(0, cv - 1)
    return bu * cv + bv


def _angle_to_edge(angle: Tensor, blocks: int) -> Tensor:
    """Angular distance of ``angle`` to the nearest multiple of 2π/blocks (inf with one block: no edge)."""
    if blocks == 1:
        return torch.full_like(angle, math.inf)
    width = TWO_PI / blocks
    offset = torch.remainder(angle, width)
    return torch.minimum(offset, width - offset)


def boundary_distance(u: Tensor, v: Tensor, class_grid: Sequence[int], major_radius: float,
                      minor_radius: float) -> Tensor:
    """Distance along the surface to the nearest block edge: an edge u = const is reached along the
    circle of radius R + r·cos v, an edge v = const along the tube's circle of radius r."""
    along_u = (major_radius + minor_radius * torch.cos(v)) * _angle_to_edge(u, class_grid[0])
    along_v = minor_radius * _angle_to_edge(v, class_grid[1])
    return torch.minimum(along_u, along_v)


def angle_grid(n: int, shift: float = 0.0) -> tuple[Tensor, Tensor]:
    steps = (torch.arange(n, dtype=torch.float64) + shift) * (TWO_PI / n)
    u, v = torch.meshgrid(steps, steps, indexing="ij")
    return u.reshape(-1), v.reshape(-1)


def load_torus(
    grid: int = 32,
    test_grid: int = 64,
    major_radius: float = 1.0,
    minor_radius: float = 0.66,
    noise: float = 0.01,
    class_grid: Sequence[int] = (2, 2),
    seed: int = 0,
    train_size: int | None = None,
    test_size: int | None = None,
    name: str = "torus",
) -> TorusDataset:
    """The torus data set, deterministic from ``seed`` (train and test are shuffled so that the first N
    points of either, e.g. ``eval.n_samples``, cover the whole torus)."""
    class_grid = tuple(int(c) for c in class_grid)
    problems = []
    if grid < 2 or test_grid < 2:
        problems.append(f"dataset.grid and dataset.test_grid must be >= 2 (got {grid}, {test_grid})")
    if not 0 < minor_radius < major_radius:
        problems.append(f"need 0 < dataset.minor_radius < dataset.major_radius (got {minor_radius}, {major_radius})")
    if noise < 0:
        problems.append(f"dataset.noise must be >= 0 (got {noise})")
    if len(class_grid) != 2 or min(class_grid) < 1 or math.prod(class_grid) < 2:
        problems.append(f"dataset.class_grid must be two block counts [cu, cv] giving >= 2 classes (got {list(class_grid)})")
    if problems:
        raise ConfigError("invalid configuration: " + "; ".join(problems))

    gen = torch.Generator().manual_seed(seed)
    extent = major_radius + minor_radius + 4.0 * noise
    to_cube = 1.0 / (2.0 * extent)

    def make(n: int, shift: float, sigma: float) -> tuple[Split, Tensor, Tensor]:
        u, v = angle_grid(n, shift)
        points = torus_points(u, v, major_radius, minor_radius)
        if sigma > 0:
            points = points + sigma * torch.randn(points.shape, generator=gen, dtype=points.dtype)
        x = (0.5 + points * to_cube).clamp_(0.0, 1.0).float()
        y = block_labels(u, v, class_grid)
        dist = boundary_distance(u, v, class_grid, major_radius, minor_radius) * to_cube
        order = torch.randperm(x.shape[0], generator=gen)
        return Split(x[order], y[order]), dist[order].float(), torch.stack([u, v], dim=1)[order].float()

    train, _, _ = make(grid, 0.5, 0.0)  # cell centres: no training point sits on a block edge
    test, test_dist, test_angles = make(test_grid, 0.5, noise)
    if test_size is not None:
        test_dist, test_angles = test_dist[:test_size], test_angles[:test_size]
    return TorusDataset(
        name=name,
        train=first_n(train, train_size),
        test=first_n(test, test_size),
        num_classes=math.prod(class_grid),
        test_boundary_distance=test_dist,
        test_angles=test_angles,
    )


__all__ = ["TorusDataset", "load_torus", "torus_points", "block_labels", "boundary_distance"]
