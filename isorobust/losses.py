"""Loss terms: the isometric regularizer as a pure function and as a configurable module.

    isometric_loss(x, z, y, scale) = mean_{i,j} ( scale·M_ij·‖z_i − z_j‖ − M_ij·‖x_i − x_j‖ )²,
    M_ij = 1[y_i = y_j], the mean over all B×B pairs of the batch (the original convention).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def pairwise_distances(a: Tensor) -> Tensor:
    """Euclidean distances between the rows of ``a`` (B, D) -> (B, B); gradient 0 (not NaN) at 0.

    Both branches use the Gram-matrix form ‖a_i‖² + ‖a_j‖² − 2⟨a_i, a_j⟩ (one matmul, no B×B×D
    tensor), after centring, which keeps its rounding small (distances do not change under a shift).
    """
    a = a - a.mean(dim=0, keepdim=True)
    if a.requires_grad:
        return torch.cdist(a, a)  # its backward is safe where rows coincide
    # No gradient wanted (the inputs, in training): one matmul and in-place ops, no autograd.
    sq = (a * a).sum(dim=1)
    gram = torch.addmm(sq[:, None] + sq[None, :], a, a.T, alpha=-2.0)
    return gram.clamp_min_(0.0).sqrt_()


def isometric_loss(x: Tensor, z: Tensor, y: Tensor, scale: float = 1.0) -> Tensor:
    """Unweighted isometric term of a batch: within-class distance mismatch, mean over B×B pairs.

    Args:
        x: inputs (B, ...), flattened inside.
        z: representations (B, D) of the same samples.
        y: integer class labels (B,).
        scale: K, the factor applied to representation distances.
    Returns:
        ``mean_{i,j} (scale·M_ij·‖z_i−z_j‖ − M_ij·‖x_i−x_j‖)²`` with M_ij = 1[y_i = y_j], a scalar.
        Cross-class pairs and i=j never contribute (their term is exactly 0).

    In float32 the distances carry a rounding error of about 1e-7·‖a‖² in their squares; pass
    float64 tensors where features lie far from their batch mean and that matters.
    """
    if x.shape[0] != z.shape[0] or x.shape[0] != y.shape[0]:
        raise ValueError(f"batch sizes differ: x {x.shape[0]}, z {z.shape[0]}, y {y.shape[0]}")
    batch = x.shape[0]
    same_class = y[:, None] == y[None, :]
    same_class.fill_diagonal_(False)  # d_ii = 0 on both sides: skip the rounding noise there
    # The input distances need no gradient in training (x does not require one there), and
    # autograd skips them; the original protocol's attack differentiates through them too.
    dx = pairwise_distances(x.reshape(batch, -1).to(z.dtype))
    dz = pairwise_distances(z.reshape(batch, -1))
    diff = (scale * dz - dx).masked_fill(~same_class, 0.0)
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
