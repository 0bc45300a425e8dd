"""CROWN (Zhang et al. 2018): every activation between two lines, substituted backwards to the input."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ibp import Box, concretize, ibp_layer, input_box, monotone_box
from .network import dense_chain, specification, split_front
from .relaxations import relaxation

S_SHAPED = (nn.Tanh, nn.Sigmoid)



# Rows × input width of one chunk of the last product on a CPU: its output (1.2 MB) stays in cache for
# the |·| and the product with the radius, and its buffer is reused (a fresh 60 MB result per call cost
# more in page faults than the GEMM itself; 2048-row chunks measured ~5 % slower than 400).
_CPU_CHUNK_ELEMENTS = 400 * 784


def _spread(coef: Tensor, weight: Tensor, radius: Tensor) -> Tensor:
    """(B, R): |coef·W|·radius per row, the product in chunks of samples through one reused buffer."""
    batch, rows, width = coef.shape
    out_width = weight.shape[1]
    per_chunk = batch if coef.is_cuda else max(1, _CPU_CHUNK_ELEMENTS // max(1, rows * out_width))
    buffer = coef.new_empty(min(per_chunk, batch) * rows, out_width)
    out = coef.new_empty(batch, rows)
    for start in range(0, batch, per_chunk):
        part = coef[start : start + per_chunk]
        m = part.shape[0]
        product = torch.mm(part.reshape(m * rows, width), weight, out=buffer[: m * rows]).abs_()
        spread = torch.bmm(product.view(m, rows, out_width), radius[start : start + m, :, None])
        out[start : start + m] = spread[:, :, 0]
    return out


def _backsubstitute(coef: Tensor, const: Tensor, depth: int, affines: Sequence[nn.Linear],
                    relaxed: Sequence[tuple[Tensor, Tensor, Tensor, Tensor] | None],
                    first_centre: Tensor, radius: Tensor) -> Tensor:
    """Lower bound over the input box of coef·h + const, h the output of activation ``depth − 1``
    (coef: (B, R, n), or (R, n) shared by the batch; const: (B, R) or (R,)).

    Each activation is replaced by its lower line where the coefficient is ≥ 0 and by its upper line
    where it is < 0 (both give a lower bound); each affine layer is substituted exactly. At the first
    affine layer, coef·(W₀v + b₀) is minimised over the box [centre ± radius] in closed form:
    coef·(W₀c + b₀) − |coef·W₀|·r; the product coef·W₀ is the bulk of the work (one GEMM).
    ``relaxed[i]``: (upper slope, lower − upper slope, upper intercept, lower − upper intercept), so
    that a coefficient λ becomes λ·a_U + max(λ, 0)·(a_L − a_U): two passes over λ instead of four.
    """
    for i in range(depth - 1, -1, -1):
        lines = relaxed[i]
        if lines is not None:
            up_slope, slope_gap, up_intercept, intercept_gap = lines
            positive = coef.clamp(min=0)
            if coef.dim() == 2:  # rows shared by the batch: (R, n) against (B, n)
                const = const + up_intercept @ coef.T + intercept_gap @ positive.T
                coef = coef.unsqueeze(0) * up_slope.unsqueeze(1)
                coef.addcmul_(positive.unsqueeze(0), slope_gap.unsqueeze(1))
            else:
                const = const + torch.bmm(coef, up_intercept.unsqueeze(2))[:, :, 0] \
                    + torch.bmm(positive, intercept_gap.unsqueeze(2))[:, :, 0]
                coef = coef * up_slope.unsqueeze(1)
                coef.addcmul_(positive, slope_gap.unsqueeze(1))
            del positive
        if i == 0:
            break
        layer = affines[i]
        if layer.bias is not None:
            const = const + torch.matmul(coef, layer.bias)
        coef = torch.matmul(coef, layer.weight)
    if coef.dim() == 2:  # no activation on the way (a linear network): one set of rows for all
        coef, const = coef.unsqueeze(0).expand(first_centre.shape[0], -1, -1), const.unsqueeze(0)
    centre_term = torch.bmm(coef, first_centre.unsqueeze(2))[:, :, 0]  # first_centre = W₀c + b₀
    return const + centre_term - _spread(coef, affines[0].weight, radius)


def _lines(act: nn.Module | None, lower: Tensor, upper: Tensor,
           rounded: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
    """``relaxation`` in the form ``_backsubstitute`` uses (None: no activation)."""
    if act is None:
        return None
    (low_slope, low_intercept), (up_slope, up_intercept) = relaxation(act, lower, upper, rounded=rounded)
    return up_slope, low_slope - up_slope, up_intercept, low_intercept - up_intercept


@torch.no_grad()
def crown_margin_bounds(layers: Sequence[nn.Module], x: Tensor, y: Tensor, eps: float | Tensor) -> Tensor:
    """(B, K−1) lower bounds of logit[y] − logit[j] over B(x, ε): full CROWN on the dense layers
    (IBP through a conv/max-pool front end), intersected with IBP at every layer (module docstring)."""
    return crown(layers, x, y, eps).margins


@dataclass
class CrownPass:
    """What one CROWN pass leaves for the methods built on it (α-CROWN, branch and bound)."""

    margins: Tensor  # (B, K−1) lower bounds of the margins
    boxes: list[Box]  # pre-activation box of every dense activation layer, (B, n_k) each
    affines: list[nn.Linear]  # the dense chain after the front end
    acts: list[nn.Module | None]  # the activation after each affine layer but the last
    input_lower: Tensor  # (B, d) the box the dense chain starts from (after an IBP front end)
    input_upper: Tensor


@torch.no_grad()
def crown(layers: Sequence[nn.Module], x: Tensor, y: Tensor, eps: float | Tensor) -> CrownPass:
    """``crown_margin_bounds`` with the boxes it computed on the way."""
    front, tail = split_front(layers)
    lower, upper = input_box(x, eps)
    for layer in front:
        lower, upper = ibp_layer(layer, lower, upper)
    lower, upper = lower.flatten(1), upper.flatten(1)
    affines, acts = dense_chain(tail)
    centre, radius = (upper + lower) / 2, (upper - lower) / 2
    weight, bias = specification(affines[-1], y)
    depth = len(affines) - 1
    if depth == 0:  # one linear layer: the box bound is exact
        return CrownPass(concretize(weight, bias, lower, upper), [], affines, acts, lower, upper)
    first = affines[0]
    first_centre = F.linear(centre, first.weight, first.bias)
    first_radius = F.linear(radius, first.weight.abs())
    # Pre-activation boxes: the first is exact (one affine layer of a box), the others by CROWN ∩ IBP.
    boxes = [(first_centre - first_radius, first_centre + first_radius)]
    relaxed = [_lines(acts[0], *boxes[0])]
    for k in range(1, len(affines) - 1):
        layer = affines[k]
        ibp_lower, ibp_upper = ibp_layer(layer, *monotone_box(acts[k - 1], *boxes[k - 1]))
        coef = torch.cat([layer.weight, -layer.weight])  # lower bounds of z and of −z at once
        shift = layer.bias if layer.bias is not None else layer.weight.new_zeros(layer.out_features)
        bound = _backsubstitute(coef, torch.cat([shift, -shift]), k, affines, relaxed, first_centre, radius)
        n = layer.out_features
        new_lower = torch.maximum(bound[:, :n], ibp_lower)
        new_upper = torch.minimum(-bound[:, n:], ibp_upper)
        # both are sound, so they overlap in exact arithmetic; rounding may cross them by an ulp
        boxes.append((torch.minimum(new_lower, new_upper), torch.maximum(new_lower, new_upper)))
        relaxed.append(_lines(acts[k], *boxes[k]))
    bound = _backsubstitute(weight, bias, depth, affines, relaxed, first_centre, radius)
    if any(isinstance(act, S_SHAPED) for act in acts):
        # The margins again with the tangent points of tanh/sigmoid rounded as the reference tabulates them
        # (``s_shaped_upper_line``): neither choice dominates, and on the reference's own model each alone
        # falls below its bounds on a few (image, margin) pairs, by up to 1.4e-4 (exact) or 6e-4 (rounded);
        # the better of the two per margin does not. The K − 1 rows cost ~1 % of the intermediate layers'.
        rounded = [_lines(act, *box, rounded=True) if isinstance(act, S_SHAPED) else lines  # ReLU: the same lines
                   for act, box, lines in zip(acts, boxes, relaxed)]
        bound = torch.maximum(bound, _backsubstitute(weight, bias, depth, affines, rounded, first_centre, radius))
    hidden_lower, hidden_upper = monotone_box(acts[depth - 1], *boxes[depth - 1])
    margins = torch.maximum(bound, concretize(weight, bias, hidden_lower, hidden_upper))
    return CrownPass(margins, boxes, affines, acts, lower, upper)

