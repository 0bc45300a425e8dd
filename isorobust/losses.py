"""Loss terms as pure functions, and the regularizers of the ``reg`` config group around them.

    isometric_loss(x, z, y, scale) = mean_{i,j} ( scale·M_ij·‖z_i − z_j‖ − M_ij·‖x_i − x_j‖ )²,
    M_ij = 1[y_i = y_j], the mean over all B×B pairs of the batch (the original convention).

Baselines a reviewer asks for, on the same interface:
    jacobian_norm_squared   ½·mean_i ‖∂f(x_i)/∂x_i‖²_F, random-projection estimate (Hoffman et al. 2019)
    input_gradient_norm_squared   mean_i ‖∇_x CE(f(x_i), y_i)‖²  (double back-propagation, Ross & Doshi-Velez 2018)

A regularizer is called as ``regularizer(x, logits, features, y)`` and returns the unweighted term;
the trainer adds ``weight ×`` each term to the cross-entropy. Those with ``needs_input_grad`` get an
``x`` that requires grad and logits built from it.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable


def pairwise_distances(a: Tensor) -> Tensor:
    """Euclidean distances between the rows of ``a`` (B, D) -> (B, B); gradient 0 (not NaN) at 0.

    The Gram-matrix form ‖a_i‖² + ‖a_j‖² − 2⟨a_i, a_j⟩, one matmul and no B×B×D tensor. Without
    a gradient, the norms are read off the Gram diagonal, so the diagonal is exactly 0 and each
    entry has a few ulp of ‖a‖² of rounding in its square (measured on MNIST batches: below 3e-6
    relative, pair by pair).
    """
    if a.requires_grad:
        return torch.cdist(a, a)  # its backward is safe where rows coincide
    return _distances_from_gram(torch.mm(a, a.T))


def _distances_from_gram(gram: Tensor) -> Tensor:
    sq = gram.diagonal()
    return (sq[:, None] + sq).sub_(gram, alpha=2.0).clamp_min_(0.0).sqrt_()


class _WithinClassMismatch(torch.autograd.Function):
    """mean_{i,j} (M_ij·(K·‖z_i − z_j‖ − D_ij))² from z, D and the bool mask M, gradient written out.

    Forward is one Gram matmul and a few B×B ops; backward is one more matmul: with
    r = M∘(K·d − D) and W = 4K·r / (B²·d) (0 where d = 0), ∂L/∂z_i = Σ_j W_ij (z_i − z_j), i.e.
    ``rowsum(W)·z − W z``. Autograd through ``cdist`` did the same with many more operations,
    and in a step of the reference MLP each operation counts.
    """

    @staticmethod
    def forward(ctx, z: Tensor, input_distances: Tensor, same: Tensor, scale: float) -> Tensor:
        z = z - z.mean(dim=0, keepdim=True)  # distances do not change under a shift; rounding does
        d = _distances_from_gram(torch.mm(z, z.T))
        r = torch.where(same, torch.sub(input_distances, d, alpha=scale), 0.0)  # the residual, negated
        ctx.save_for_backward(z, r, d)
        ctx.scale = scale
        n = z.shape[0]
        flat = r.view(-1)
        return torch.dot(flat, flat).div_(n * n)

    @staticmethod
    @once_differentiable  # nothing takes its second derivative; this makes sure of that
    def backward(ctx, grad: Tensor):
        z, r, d = ctx.saved_tensors
        n = z.shape[0]
        grad_z = grad_d = None
        if ctx.needs_input_grad[0]:
            # 0/0 and r/0 (coinciding rows: no direction) become 0, as cdist's gradient does.
            w = (r / d).nan_to_num_(0.0, 0.0, 0.0)
            grad_z = torch.addmm(z * w.sum(dim=1, keepdim=True), w, z, alpha=-1.0)
            grad_z.mul_(grad * (-4.0 * ctx.scale / (n * n)))
        if ctx.needs_input_grad[1]:  # the original protocol's attack differentiates through x
            grad_d = r * (grad * (2.0 / (n * n)))
        return grad_z, grad_d, None, None


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

    In float32 the distances carry a rounding error of a few 1e-7·‖a‖² in their squares (inputs
    as they are, representations after centring); pass float64 tensors where that matters.
    """
    if x.shape[0] != z.shape[0] or x.shape[0] != y.shape[0]:
        raise ValueError(f"batch sizes differ: x {x.shape[0]}, z {z.shape[0]}, y {y.shape[0]}")
    batch = x.shape[0]
    same = (y[:, None] == y[None, :]).fill_diagonal_(False)  # d_ii = 0 on both sides
    # No gradient flows into the input distances in training (x does not require one there).
    dx = pairwise_distances(x.reshape(batch, -1).to(z.dtype))
    return _WithinClassMismatch.apply(z.reshape(batch, -1), dx, same, float(scale))


def isometric_loss_reference(x: Tensor, z: Tensor, y: Tensor, scale: float = 1.0,
                             compute_mode: str = "donot_use_mm_for_euclid_dist") -> Tensor:
    """The formula written out literally, through autograd; for tests and benchmarks only.

    By default the distances are B×B×D differences; ``compute_mode="use_mm_for_euclid_dist"`` gives
    the straightforward version (two full Gram-based ``cdist`` matrices).
    """
    batch = x.shape[0]
    x = x.reshape(batch, -1)
    z = z.reshape(batch, -1)
    mask = (y[:, None] == y[None, :]).to(z.dtype)
    dx = torch.cdist(x.to(z.dtype), x.to(z.dtype), compute_mode=compute_mode)
    dz = torch.cdist(z, z, compute_mode=compute_mode)
    return ((scale * mask * dz - mask * dx) ** 2).mean()


def jacobian_norm_squared(x: Tensor, logits: Tensor, n_projections: int = 1) -> Tensor:
    """½·mean_i ‖J_i‖²_F, J_i = ∂logits_i/∂x_i, estimated as Hoffman et al. (2019) do.

    For v uniform on the unit sphere of the C logits, E[C·‖vᵀJ‖²] = ‖J‖²_F, and vᵀJ is one
    backward pass. ``x`` must require grad and ``logits`` come from it; the result keeps the graph
    (create_graph) so it can be trained on. Samples must not interact (true for these models).
    """
    batch, classes = logits.shape
    total = logits.new_zeros(())
    for _ in range(n_projections):
        v = torch.randn(batch, classes, device=logits.device, dtype=logits.dtype)
        v = v / v.norm(dim=1, keepdim=True)
        (vj,) = torch.autograd.grad(logits, x, grad_outputs=v, create_graph=True)
        total = total + classes * vj.pow(2).sum() / batch
    return 0.5 * total / n_projections


def input_gradient_norm_squared(x: Tensor, logits: Tensor, y: Tensor) -> Tensor:
    """mean_i ‖∇_{x_i} CE(f(x_i), y_i)‖², kept differentiable (double back-propagation).

    ``x`` must require grad and ``logits`` come from it. Samples must not interact.
    """
    ce = F.cross_entropy(logits, y, reduction="sum")
    (grad,) = torch.autograd.grad(ce, x, create_graph=True)
    return grad.pow(2).sum() / x.shape[0]


ALL_LAYERS = "all"


@dataclass
class IsometricRegularizer:
    """isometric_loss on hidden layers of the model (``reg=isometric``); weight = β, scale = K.

    ``layer``: one hidden layer (an index, -1 = the last), a list of them, or ``"all"``. With several,
    the term is the sum of one isometric_loss per layer, so each layer carries the weight β.
    """

    weight: float = 0.1
    scale: float = 10.0
    layer: int | str | list[int] = -1
    name: str = "isometric"
    needs_input_grad: ClassVar[bool] = False

    def layers(self, num_hidden: int) -> list[int]:
        """The hidden-layer indices the term acts on, in [0, num_hidden)."""
        return resolve_layers(self.layer, num_hidden)

    def __call__(self, x: Tensor, logits: Tensor, features: list[Tensor], y: Tensor) -> Tensor:
        # x.detach(): the input distances are constants of the loss (no second autograd path).
        layers = self.layers(len(features))
        total = isometric_loss(x.detach(), features[layers[0]], y, scale=self.scale)
        for layer in layers[1:]:
            total = total + isometric_loss(x.detach(), features[layer], y, scale=self.scale)
        return total


def resolve_layers(layer: Any, num_hidden: int) -> list[int]:
    """``reg.layer`` as hidden-layer indices in [0, num_hidden): an int (negative counts from the
    end), a list of ints, or ``"all"``. ValueError names the bad value."""
    if layer == ALL_LAYERS:
        return list(range(num_hidden))
    wanted = [layer] if isinstance(layer, int) and not isinstance(layer, bool) else layer
    if isinstance(wanted, str) or not isinstance(wanted, Sequence) or not wanted or not all(
            isinstance(l, int) and not isinstance(l, bool) and -num_hidden <= l < num_hidden for l in wanted):
        raise ValueError(f"must be a hidden-layer index in [{-num_hidden}, {num_hidden - 1}], a list of them, "
                         f"or 'all' (got {layer!r})")
    resolved = [l % num_hidden for l in wanted]
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"names a layer twice (got {layer!r})")
    return resolved


@dataclass
class JacobianRegularizer:
    """½·‖∂f/∂x‖²_F of the logits, random projections (``reg=jacobian``; Hoffman et al. 2019)."""

    weight: float = 0.01
    n_projections: int = 1
    name: str = "jacobian"
    needs_input_grad: ClassVar[bool] = True

    def __call__(self, x: Tensor, logits: Tensor, features: list[Tensor], y: Tensor) -> Tensor:
        return jacobian_norm_squared(x, logits, self.n_projections)


@dataclass
class InputGradientRegularizer:
    """‖∇_x CE‖² per sample, double back-propagation (``reg=input_gradient``; Ross & Doshi-Velez 2018)."""

    weight: float = 1.0
    name: str = "input_gradient"
    needs_input_grad: ClassVar[bool] = True

    def __call__(self, x: Tensor, logits: Tensor, features: list[Tensor], y: Tensor) -> Tensor:
        return input_gradient_norm_squared(x, logits, y)
