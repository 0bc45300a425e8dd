"""Loss terms: the isometric regularizer as a pure function and as a configurable module.

    isometric_loss(x, z, y, scale) = mean_{i,j} ( scale·M_ij·‖z_i − z_j‖ − M_ij·‖x_i − x_j‖ )²,
    M_ij = 1[y_i = y_j], the mean over all B×B pairs of the batch (the original convention).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def pairwise_distances(a: Tensor) -> Tensor:
    """Euclidean distances between the rows of ``a`` (B, D) -> (B, B), safe to differentiate.

    Uses the Gram-matrix form ‖a_i‖² + ‖a_j‖² − 2⟨a_i, a_j⟩ (one matmul instead of a B×B×D
    difference tensor). The diagonal is set to exactly 0, and the square root only sees
    positive values, so the gradient is 0 (not NaN) where two rows coincide.
    """
    sq_norms = (a * a).sum(dim=1)
    sq = (sq_norms[:, None] + sq_norms[None, :] - 2.0 * (a @ a.T)).clamp_min(0.0)
    eye = torch.eye(a.shape[0], dtype=torch.bool, device=a.device)
    sq = sq.masked_fill(eye, 0.0)  # rounding would leave ~1e-6 on the diagonal
    positive = sq > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, sq, torch.ones_like(sq))), torch.zeros_like(sq))


def center_per_class(a: Tensor, group: Tensor) -> Tensor:
    """Subtract from each row the mean of its group (``group``: ids 0..G-1), without a Python loop."""
    n_groups = int(group.max()) + 1
    sums = torch.zeros(n_groups, a.shape[1], dtype=a.dtype, device=a.device).index_add(0, group, a)
    counts = torch.bincount(group, minlength=n_groups).to(a.dtype)
    return a - (sums / counts[:, None])[group]


def isometric_loss(x: Tensor, z: Tensor, y: Tensor, scale: float = 1.0) -> Tensor:
    """Unweighted isometric term of a batch: within-class distance mismatch, mean over B×B pairs.

    Args:
        x: inputs (B, ...), flattened inside.
        z: representations (B, D) of the same samples.
        y: integer class labels (B,).
        scale: K, the factor applied to representation distances.
    Returns:
        A scalar tensor; cross-class pairs never contribute (their term is exactly 0).
    """
    if x.shape[0] != z.shape[0] or x.shape[0] != y.shape[0]:
        raise ValueError(f"batch sizes differ: x {x.shape[0]}, z {z.shape[0]}, y {y.shape[0]}")
    batch = x.shape[0]
    x = x.reshape(batch, -1)
    z = z.reshape(batch, -1)
    same_class = y[:, None] == y[None, :]
    # Only within-class distances count, and those do not change when each class is shifted
    # by its own mean: centring keeps the Gram-matrix distances accurate however far apart
    # the classes lie. Input distances carry a gradient only when x itself requires one (the
    # original protocol's attack); in training autograd skips them.
    _, group = torch.unique(y, return_inverse=True)
    dx = pairwise_distances(center_per_class(x.to(z.dtype), group))
    dz = pairwise_distances(center_per_class(z, group))
    diff = torch.where(same_class, scale * dz - dx, torch.zeros_like(dz))
    return (diff * diff).sum() / (batch * batch)


def isometric_loss_reference(x: Tensor, z: Tensor, y: Tensor, scale: float = 1.0) -> Tensor:
    """The formula written out literally (B×B×D differences); for tests and benchmarks only."""
    batch = x.shape[0]
    x = x.reshape(batch, -1)
    z = z.reshape(batch, -1)
    mask = (y[:, None] == y[None, :]).to(z.dtype)
    dx = torch.cdist(x.to(z.dtype), x.to(z.dtype), compute_mode="donot_use_mm_for_euclid_dist")
    dz = torch.cdist(z, z, compute_mode="donot_use_mm_for_euclid_dist")
    return ((scale * mask * dz - mask * dx) ** 2).mean()


@dataclass
class IsometricRegularizer:
    """β · isometric_loss on one hidden layer of the model (``reg`` config group)."""

    weight: float = 0.1
    scale: float = 10.0
    layer: int = -1
    name: str = "isometric"

    def __call__(self, x: Tensor, features: list[Tensor], y: Tensor) -> Tensor:
        return isometric_loss(x, features[self.layer], y, scale=self.scale)
