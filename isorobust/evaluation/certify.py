"""Certified lower bounds on L∞ robust accuracy: interval bound propagation (IBP) and CROWN.

An attack that fails to break a sample proves nothing: robust accuracy measured by attacks is an
upper bound. A certificate is the other side: a proof that no input in the box

    B(x, ε) = {x' : ‖x' − x‖∞ ≤ ε} ∩ [0, 1]^d

changes the prediction, so certified accuracy is a lower bound and the truth lies between the two.
Both methods here bound every margin  logit[y](x') − logit[j](x'), j ≠ y,  from below over B(x, ε);
a sample is certified when it is classified correctly and every lower bound is > 0.

- **IBP** (Gowal et al. 2018) pushes a box through the network layer by layer: exact for one affine
  layer, monotone activations and max-pooling map the box's corners. Cheap (two forward passes).
- **CROWN** (Zhang et al. 2018) bounds each activation between two lines on its pre-activation
  interval and substitutes them backwards through the network, so a bound is one linear function of
  the input, minimised over the box in closed form. Pre-activation intervals of every layer come
  from CROWN itself ("full CROWN": a backward pass per layer), intersected with IBP's interval of
  the same layer; the final margin bound is the larger of CROWN's and IBP's. All of these are sound,
  so their intersection is, and it is never looser than IBP (CROWN alone can be: a tangent line of
  tanh on a wide interval ends far below the function). Convolutions and max-pooling have no
  relaxation here: the layers up to the last of them are bounded by IBP, and CROWN starts from IBP's
  box of their output (the ``method`` label says so). A back-substitution through the first conv
  layer would carry one 784-wide row per conv neuron (25 088 for ``model=cnn``) per sample.

The margins are bounded through the specification matrix C (rows e_y − e_j) folded into the last
linear layer, as in CROWN: bounding C·logits directly is tighter than subtracting two logit bounds.
Everything is batched over samples; nothing builds an autograd graph.

Soundness holds in exact arithmetic. The activation lines are computed in float64 and padded by a
few units of the model's rounding error; the matrix products are not (float32 sums of 784 terms carry
~1e-6 relative error), as in the reference implementations.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from isorobust.errors import ConfigError

Box = tuple[Tensor, Tensor]
Line = tuple[Tensor, Tensor]  # slope, intercept (elementwise)

METHODS = ("ibp", "crown")
ACTIVATIONS = (nn.ReLU, nn.Tanh, nn.Sigmoid)
FRONT_LAYERS = (nn.Conv2d, nn.MaxPool2d)  # bounded by IBP only
SUPPORTED = (nn.Linear, nn.Flatten, *ACTIVATIONS, *FRONT_LAYERS)
CERTIFIED_COLUMNS = [
    "dataset", "model", "reg", "reg_weight", "reg_scale", "seed",
    "method", "epsilon", "n_samples", "clean_accuracy", "certified_accuracy",
]
CERTIFIED = "certified"  # the column of robustness.md


# --------------------------------------------------------------------------------------------------
# The network as a flat list of layers


def certifiable_layers(model: nn.Module) -> list[nn.Module]:
    """The layers ``model.forward`` applies, in order, as a flat list of the supported types.

    Raises ValueError naming the first layer without a bound (e.g. GELU) or a model of unknown
    structure. The project's models are unrolled from their definitions (``MLP``, ``CNN`` = conv
    front end + MLP, ``HierarchicalMLP``: the chain to its last read-out, i.e. the classes);
    ``nn.Sequential`` is taken as it is (tests build small networks that way).
    """
    from isorobust.models import CNN, MLP, HierarchicalMLP

    if isinstance(model, MLP):
        dense = [model.input_layer, model.act]
        for layer in model.hidden:
            dense += [layer, model.act]
        dense.append(model.readout)
        front = list(model.conv) if isinstance(model, CNN) else []
        layers = [*front, nn.Flatten(), *dense]
    elif isinstance(model, HierarchicalMLP):
        layers = [nn.Flatten(), model.input_layer, model.act]
        for block in model.blocks:
            for layer in block:
                layers += [layer, model.act]
        layers.append(model.readouts[-1])
    elif isinstance(model, nn.Sequential):
        layers = []
        for layer in model:
            layers += certifiable_layers(layer) if isinstance(layer, nn.Sequential) else [layer]
    else:
        raise ValueError(f"cannot certify a {type(model).__name__}: its layers are unknown here "
                         "(MLP, CNN, HierarchicalMLP or nn.Sequential)")
    for layer in layers:
        if not isinstance(layer, SUPPORTED):
            names = "Linear, Conv2d, Flatten, ReLU, Tanh, Sigmoid, MaxPool2d"
            raise ValueError(f"layer {type(layer).__name__} has no bound here (supported: {names})")
        if isinstance(layer, nn.Conv2d) and layer.padding_mode != "zeros":
            raise ValueError(f"Conv2d with padding_mode={layer.padding_mode!r} has no bound here (zeros only)")
    if not layers or not isinstance(layers[-1], nn.Linear):
        raise ValueError("the network must end in a linear layer (the logits) to be certified")
    return layers


def split_front(layers: Sequence[nn.Module]) -> tuple[list[nn.Module], list[nn.Module]]:
    """(IBP front, CROWN tail): the front runs through the last conv/max-pool layer and any layer
    after it up to the next linear layer, so the tail is Linear (activation Linear)*."""
    start = max((i + 1 for i, layer in enumerate(layers) if isinstance(layer, FRONT_LAYERS)), default=0)
    while not isinstance(layers[start], nn.Linear):
        start += 1
    return list(layers[:start]), list(layers[start:])


def dense_chain(tail: Sequence[nn.Module]) -> tuple[list[nn.Linear], list[nn.Module | None]]:
    """Affine layers and the activation after each but the last (None: two linear layers in a row)."""
    affines: list[nn.Linear] = []
    acts: list[nn.Module | None] = []
    for layer in tail:
        if isinstance(layer, nn.Flatten):
            continue  # the tail works on flattened vectors already
        if isinstance(layer, nn.Linear):
            if len(acts) < len(affines):
                acts.append(None)
            affines.append(layer)
        elif len(acts) < len(affines):
            acts.append(layer)
        else:
            raise ValueError(f"two activations in a row ({type(layer).__name__}) have no bound here")
    return affines, acts


def method_label(layers: Sequence[nn.Module], method: str) -> str:
    """What was computed: ``crown`` or ``ibp``, or CROWN after an IBP front end (convolutions)."""
    if method == "crown" and any(isinstance(layer, FRONT_LAYERS) for layer in layers):
        return "crown (ibp through conv/max-pool)"
    return method


# --------------------------------------------------------------------------------------------------
# Boxes and IBP


def input_box(x: Tensor, eps: float | Tensor) -> Box:
    """The L∞ ball of radius ``eps`` (a number or one per sample) around ``x``, cut to [0, 1]."""
    if isinstance(eps, Tensor):
        eps = eps.to(x.dtype).view(-1, *[1] * (x.dim() - 1))
    return (x - eps).clamp(min=0.0), (x + eps).clamp(max=1.0)


def ibp_layer(layer: nn.Module, lower: Tensor, upper: Tensor) -> Box:
    """The box of one layer's output given the box of its input.

    Affine layers: centre ± |W|·radius is the exact image of a box. Every other supported layer
    is monotone non-decreasing in each input, so it maps the box's lower and upper corners.
    """
    if isinstance(layer, (nn.Linear, nn.Conv2d)):
        centre, radius = (upper + lower) / 2, (upper - lower) / 2
        if isinstance(layer, nn.Linear):
            centre, radius = F.linear(centre, layer.weight, layer.bias), F.linear(radius, layer.weight.abs())
        else:
            conv = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups)
            centre = F.conv2d(centre, layer.weight, layer.bias, **conv)
            radius = F.conv2d(radius, layer.weight.abs(), None, **conv)
        return centre - radius, centre + radius
    return layer(lower), layer(upper)


def other_classes(y: Tensor, num_classes: int) -> Tensor:
    """(B, K−1): for each sample the classes j ≠ y in increasing order."""
    classes = torch.arange(num_classes, device=y.device).expand(y.shape[0], num_classes)
    return classes[classes != y[:, None]].view(y.shape[0], num_classes - 1)


def specification(final: nn.Linear, y: Tensor) -> tuple[Tensor, Tensor]:
    """C·W and C·b of the last layer, C's rows e_y − e_j (j ≠ y): the margins as one linear layer."""
    others = other_classes(y, final.out_features)
    weight = final.weight[y][:, None, :] - final.weight[others]  # (B, K−1, n)
    bias = final.bias[y][:, None] - final.bias[others] if final.bias is not None else weight.new_zeros(others.shape)
    return weight, bias


def concretize(coef: Tensor, const: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
    """min over the box [lower, upper] of coef·v + const, per row: coef·centre − |coef|·radius + const."""
    centre, radius = (upper + lower) / 2, (upper - lower) / 2
    return const + torch.bmm(coef, centre[:, :, None]).squeeze(2) - torch.bmm(coef.abs(), radius[:, :, None]).squeeze(2)


@torch.no_grad()
def ibp_margin_bounds(layers: Sequence[nn.Module], x: Tensor, y: Tensor, eps: float | Tensor) -> Tensor:
    """(B, K−1) lower bounds of logit[y] − logit[j] over B(x, ε) by IBP (spec folded into the last layer)."""
    lower, upper = input_box(x, eps)
    for layer in layers[:-1]:
        lower, upper = ibp_layer(layer, lower, upper)
    weight, bias = specification(layers[-1], y)
    return concretize(weight, bias, lower.flatten(1), upper.flatten(1))


# --------------------------------------------------------------------------------------------------
# Linear relaxations of the activations


def _pad(line: Line, lower: Tensor, upper: Tensor, dtype: torch.dtype, sign: float) -> Line:
    """Move an intercept by a few rounding units of ``dtype`` (up for an upper line, ``sign``=+1)
    so that the line, once cast to ``dtype`` and evaluated there, still lies on its side."""
    slope, intercept = line
    scale = 1.0 + intercept.abs() + slope.abs() * torch.maximum(lower.abs(), upper.abs())
    return slope, intercept + sign * 8 * torch.finfo(dtype).eps * scale


def _bisect_tangent_point(f: Callable[[Tensor], Tensor], df: Callable[[Tensor], Tensor], lower: Tensor,
                          hi: Tensor, iterations: int) -> Tensor:
    """For l < 0: a point d in [0, hi] whose tangent passes above (l, f(l)), within hi·2^-iterations of
    the one whose tangent passes through it. g(d) = f(d) + f'(d)(l − d) − f(l) increases on [0, ∞)
    (g' = f''(d)(l − d) > 0 there) and g(0) ≤ 0 (f is convex on [l, 0]); the search keeps g(hi) ≥ 0."""
    f_lower, width = f(lower), hi.clone()
    for _ in range(iterations):
        width = width / 2
        mid = hi - width
        hi = torch.where(f(mid) + df(mid) * (lower - mid) >= f_lower, mid, hi)
    return hi


_TABLE_EDGE = 64.0  # the tangent points are tabulated for l in [−64, 0]; below, searched one by one
_TABLE_POINTS = 1 << 15
_TANGENT_TABLES: dict[tuple[Any, Any, torch.device, torch.dtype], Tensor] = {}


def tangent_points(f: Callable[[Tensor], Tensor], df: Callable[[Tensor], Tensor], lower: Tensor) -> Tensor:
    """For each l < 0, (close to) the point d ≥ 0 whose tangent to f passes through (l, f(l)).

    The point depends on l alone, not on u, so it is tabulated once per function on a fine grid of l
    (bisection to full precision) and interpolated: a few operations per neuron where a search
    costs ~30 evaluations of f. Nothing rests on its accuracy for soundness (the caller raises the
    line through (l, f(l)) where d fell short): only the tightness does.
    """
    key = (f, df, lower.device, lower.dtype)
    if key not in _TANGENT_TABLES:
        grid = torch.linspace(-_TABLE_EDGE, 0.0, _TABLE_POINTS, dtype=lower.dtype, device=lower.device)
        _TANGENT_TABLES[key] = _bisect_tangent_point(f, df, grid, torch.full_like(grid, _TABLE_EDGE), 52)
    table = _TANGENT_TABLES[key]
    position = (lower.clamp(-_TABLE_EDGE, 0.0) + _TABLE_EDGE) * ((_TABLE_POINTS - 1) / _TABLE_EDGE)
    index = position.floor().clamp(max=_TABLE_POINTS - 2)
    points = torch.lerp(table[index.long()], table[index.long() + 1], position - index)
    far = lower < -_TABLE_EDGE
    if far.any():  # pre-activations below −64: rare, searched directly
        points[far] = _bisect_tangent_point(f, df, lower[far], torch.full_like(lower[far], 4 * _TABLE_EDGE), 64)
    return points


def s_shaped_upper_line(f: Callable[[Tensor], Tensor], df: Callable[[Tensor], Tensor], lower: Tensor,
                        upper: Tensor) -> Line:
    """A line above an increasing S-shaped f (convex for x ≤ 0, concave for x ≥ 0) on all of [lower, upper].

    - u ≤ 0 (f convex there): the chord through both ends; a convex function lies below its chords.
    - l ≥ 0 (f concave): the tangent at the midpoint; a concave function lies below its tangents
      (the midpoint's minimises the area between line and function).
    - l < 0 < u: if the tangent at u passes below (l, f(l)), the chord is above f (its excess over f
      grows on [0, u] and f is below the chord on the convex part); otherwise the tangent at the
      point d in [0, u] whose tangent passes through (l, f(l)) (CROWN's rule, ``tangent_points``):
      above f on the concave part [0, u] as any tangent there, and above f on [l, 0] because it is
      above both ends of that convex piece. Any d in [0, u] keeps this true once the line is raised
      to pass above (l, f(l)), which is done: an inexact d costs tightness, never soundness.
    Inputs in float64 (float32 on MPS); intervals of (near) zero width take the derivative as the chord's slope.
    """
    lower, upper = torch.minimum(lower, upper), torch.maximum(lower, upper)
    f_lower, f_upper = f(lower), f(upper)
    width = upper - lower
    middle = (lower + upper) / 2
    narrow = width <= 1e-12 * (1.0 + middle.abs())
    chord_slope = torch.where(narrow, df(middle), (f_upper - f_lower) / torch.where(narrow, 1.0, width))
    chord = (chord_slope, f_lower - chord_slope * lower)
    tangent_slope = df(middle)
    slope = torch.where(upper <= 0, chord[0], tangent_slope)
    intercept = torch.where(upper <= 0, chord[1], f(middle) - tangent_slope * middle)
    # Across 0 (computed for all intervals: elementwise on all is cheaper than gathering a subset)
    use_chord = (upper <= 0) | (f_upper + df(upper) * (lower - upper) - f_lower <= 0)
    point = torch.minimum(tangent_points(f, df, lower), upper).clamp(min=0)
    t_slope = df(point)
    t_intercept = f(point) - t_slope * point
    t_intercept = t_intercept + (f_lower - (t_slope * lower + t_intercept)).clamp(min=0)
    straddle = (lower < 0) & (upper > 0)
    slope = torch.where(straddle, torch.where(use_chord, chord[0], t_slope), slope)
    intercept = torch.where(straddle, torch.where(use_chord, chord[1], t_intercept), intercept)
    return slope, intercept


def _tanh(x: Tensor) -> Tensor:
    return torch.tanh(x)


def _dtanh(x: Tensor) -> Tensor:
    return torch.cosh(x).pow(-2)  # 1 − tanh² loses its relative precision for |x| ≳ 10


def _sigmoid_shifted(x: Tensor) -> Tensor:
    return torch.sigmoid(x) - 1.0  # −σ(−x): σ reflected through the origin is σ − 1


def _dsigmoid(x: Tensor) -> Tensor:
    return torch.sigmoid(x) * torch.sigmoid(-x)


def relaxation(act: nn.Module | None, lower: Tensor, upper: Tensor) -> tuple[Line, Line]:
    """(lower line, upper line) of ``act`` on each interval [lower, upper]: a·z + b ≤ act(z) ≤ a'·z + b'.

    ReLU (CROWN): identity or zero where the sign is fixed; across 0 the chord above and, below,
    y = z where u ≥ −l else y = 0 (the smaller area). tanh, sigmoid: ``s_shaped_upper_line``, and
    the lower line as the upper line of the point reflection −f(−z) on [−u, −l] (tanh: itself;
    sigmoid: σ − 1), reflected back.
    """
    if act is None:
        one, zero = torch.ones_like(lower), torch.zeros_like(lower)
        return (one, zero), (one, zero)
    if isinstance(act, nn.ReLU):
        one, zero = torch.ones_like(lower), torch.zeros_like(lower)
        active, dead = lower >= 0, upper <= 0
        cross = ~active & ~dead
        width = torch.where(cross, upper - lower, one)
        up_slope = torch.where(active, one, torch.where(dead, zero, upper / width))
        up_intercept = torch.where(cross, -lower * upper / width, zero)
        low_slope = torch.where(active | (cross & (upper >= -lower)), one, zero)
        # the chord is exact in real arithmetic; pad it against rounding in its evaluation
        padded = _pad((up_slope, up_intercept), lower, upper, lower.dtype, +1.0)[1]
        return (low_slope, zero), (up_slope, torch.where(cross, padded, up_intercept))
    if isinstance(act, (nn.Tanh, nn.Sigmoid)):
        dtype = lower.dtype
        wide = torch.float32 if lower.device.type == "mps" else torch.float64  # MPS has no float64
        l64, u64 = lower.to(wide), upper.to(wide)
        # −f(−z) is tanh itself and σ − 1 for the sigmoid: the same lines, the intercept moved by
        # ``offset``. Both intervals go through one call (half the small operations).
        f, df, offset = (_tanh, _dtanh, 0.0) if isinstance(act, nn.Tanh) else (torch.sigmoid, _dsigmoid, 1.0)
        slope, intercept = s_shaped_upper_line(f, df, torch.cat([l64, -u64]), torch.cat([u64, -l64]))
        n = l64.shape[0]
        upper_line = (slope[:n], intercept[:n])
        lower_line = (slope[n:], offset - intercept[n:])
        lo = _pad(lower_line, l64, u64, dtype, -1.0)
        up = _pad(upper_line, l64, u64, dtype, +1.0)
        return (lo[0].to(dtype), lo[1].to(dtype)), (up[0].to(dtype), up[1].to(dtype))
    raise ValueError(f"no relaxation for {type(act).__name__}")


# --------------------------------------------------------------------------------------------------
# CROWN


def _monotone(act: nn.Module | None, lower: Tensor, upper: Tensor) -> Box:
    return (lower, upper) if act is None else (act(lower), act(upper))


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


def _lines(act: nn.Module | None, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
    """``relaxation`` in the form ``_backsubstitute`` uses (None: no activation)."""
    if act is None:
        return None
    (low_slope, low_intercept), (up_slope, up_intercept) = relaxation(act, lower, upper)
    return up_slope, low_slope - up_slope, up_intercept, low_intercept - up_intercept


@torch.no_grad()
def crown_margin_bounds(layers: Sequence[nn.Module], x: Tensor, y: Tensor, eps: float | Tensor) -> Tensor:
    """(B, K−1) lower bounds of logit[y] − logit[j] over B(x, ε): full CROWN on the dense layers
    (IBP through a conv/max-pool front end), intersected with IBP at every layer (module docstring)."""
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
        return concretize(weight, bias, lower, upper)
    first = affines[0]
    first_centre = F.linear(centre, first.weight, first.bias)
    first_radius = F.linear(radius, first.weight.abs())
    # Pre-activation boxes: the first is exact (one affine layer of a box), the others by CROWN ∩ IBP.
    boxes = [(first_centre - first_radius, first_centre + first_radius)]
    relaxed = [_lines(acts[0], *boxes[0])]
    for k in range(1, len(affines) - 1):
        layer = affines[k]
        ibp_lower, ibp_upper = ibp_layer(layer, *_monotone(acts[k - 1], *boxes[k - 1]))
        coef = torch.cat([layer.weight, -layer.weight])  # lower bounds of z and of −z at once
        shift = layer.bias if layer.bias is not None else layer.weight.new_zeros(layer.out_features)
        bound = _backsubstitute(coef, torch.cat([shift, -shift]), k, affines, relaxed, first_centre, radius)
        n = layer.out_features
        new_lower = torch.maximum(bound[:, :n], ibp_lower)
        new_upper = torch.minimum(-bound[:, n:], ibp_upper)
        # both are sound, so they overlap in exact arithmetic; rounding may cross them by an ulp
        boxes.append((torch.minimum(new_lower, new_upper), torch.maximum(new_lower, new_upper)))
        relaxed.append(_lines(acts[k], *boxes[k]))
    crown = _backsubstitute(weight, bias, depth, affines, relaxed, first_centre, radius)
    hidden_lower, hidden_upper = _monotone(acts[depth - 1], *boxes[depth - 1])
    return torch.maximum(crown, concretize(weight, bias, hidden_lower, hidden_upper))


def margin_bounds(layers: Sequence[nn.Module], x: Tensor, y: Tensor, eps: float | Tensor, method: str) -> Tensor:
    """(B, K−1) lower bounds of the margins over B(x, ε) by ``method`` (``ibp`` or ``crown``)."""
    if method not in METHODS:
        raise ValueError(f"unknown certification method {method!r} (choose from {', '.join(METHODS)})")
    with torch.no_grad():
        return (crown_margin_bounds if method == "crown" else ibp_margin_bounds)(layers, x, y, eps)


def certified_mask(layers: Sequence[nn.Module], x: Tensor, y: Tensor, correct: Tensor, eps: float | Tensor,
                   method: str) -> Tensor:
    """Per sample: correct on x and every margin's lower bound over B(x, ε) > 0."""
    return correct & (margin_bounds(layers, x, y, eps, method).min(dim=1).values > 0)


# --------------------------------------------------------------------------------------------------
# Certified accuracy over an ε grid and certified radii: searches over ε, one bound per sample and step


def clean_predictions(model: nn.Module, x: Tensor, y: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
    """(correct, margin) on the clean inputs: prediction == y, and logit[y] − max_{j≠y} logit[j], the
    margin's exact value at ε = 0."""
    correct, margins = [], []
    for start in range(0, x.shape[0], batch_size):
        logits = model(x[start : start + batch_size])
        part = y[start : start + batch_size]
        correct.append(logits.argmax(dim=1) == part)
        true = logits.gather(1, part[:, None])[:, 0]
        margins.append(true - logits.scatter(1, part[:, None], float("-inf")).max(dim=1).values)
    if not correct:
        return y.new_zeros(0, dtype=torch.bool), x.new_zeros(0)
    return torch.cat(correct), torch.cat(margins)


def workers_for(device: torch.device) -> int:
    """Batches bounded at once: on a CPU one per torch thread, each single-threaded (the backward passes are
    many mid-sized products and elementwise steps, which one thread per batch keeps busy better than
    every thread on each: ~1.3× on 2 cores); on an accelerator one batch at a time."""
    return max(1, torch.get_num_threads()) if device.type == "cpu" else 1


def min_margin_bounds(layers: Sequence[nn.Module], x: Tensor, y: Tensor, index: Tensor, eps: Tensor, method: str,
                      batch_size: int) -> Tensor:
    """(len(index),) the smallest margin lower bound of each sample ``x[index]`` over its own ball B(x, eps[i]),
    ``batch_size`` samples per pass. Each sample's bound depends on that sample alone (up to float rounding),
    so the batching and the order are not part of the result."""
    out = eps.new_empty(index.numel(), dtype=x.dtype)
    parts = [slice(s, s + batch_size) for s in range(0, index.numel(), batch_size)]

    def bound(part: slice) -> None:
        rows = index[part]
        out[part] = margin_bounds(layers, x[rows], y[rows], eps[part], method).min(dim=1).values

    workers = min(workers_for(x.device), len(parts))
    if workers <= 1:
        for part in parts:
            bound(part)
        return out
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread per batch, ``workers`` batches at once (the GIL is released in ops)
    try:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(bound, parts))  # list(): raise a batch's exception here
    finally:
        torch.set_num_threads(threads)
    return out


@dataclass
class GridSearch:
    """Per sample, where it lies on the ascending grid ε_0 < … < ε_{E−1}: certified at ε_0..ε_{k−1} and not
    at ε_k, k = ``count`` (E: certified at every radius; 0 and misclassified: at none), with the smallest
    margin bound at both ends (at ε = 0 the clean margin; NaN where no bound was computed)."""

    certified: Tensor  # (E, N) bool: a prefix of the grid per sample
    count: Tensor  # (N,) long
    lower_margin: Tensor  # (N,) the bound at the largest certified radius (> 0)
    upper_margin: Tensor  # (N,) the bound at the first radius not certified (<= 0)
    evaluations: int  # bounds computed (sample × radius)


def certify_grid(layers: Sequence[nn.Module], x: Tensor, y: Tensor, correct: Tensor, margins: Tensor,
                 epsilons: Sequence[float], method: str, batch_size: int) -> GridSearch:
    """Certified masks on an ascending grid by a binary search per sample: ≈ log2(E + 1) bounds per sample
    instead of E (2.0 instead of 5 on the default grid).

    A proof at ε covers every smaller ball, so a sample certified at ε_j counts as certified at every
    ε_i ≤ ε_j; a sample not certified at ε_j is not tried at larger radii. IBP's bound only loosens as the
    ball grows, so for IBP this is exactly the bound at every radius. CROWN's is not guaranteed to be
    monotone in ε: a rare sample not certified at ε_j might be at some ε_k > ε_j; the search never adds
    a proof it did not compute, it can only miss such a one, so the accuracies stay lower bounds.
    ``margins`` are the clean margins (``clean_predictions``), the bound's value at ε = 0.
    """
    if list(epsilons) != sorted(epsilons):
        raise ValueError("epsilons must be ascending")
    n, size = x.shape[0], len(epsilons)
    grid = torch.tensor(list(epsilons), dtype=x.dtype, device=x.device)
    low = torch.full((n,), -1, dtype=torch.long, device=x.device)  # largest index certified (−1: none)
    high = torch.where(correct, size, 0).to(device=x.device, dtype=torch.long)  # smallest index not certified
    lower_margin = torch.where(correct, margins.to(x.dtype), margins.new_full((n,), float("nan"), dtype=x.dtype))
    upper_margin = torch.full((n,), float("nan"), dtype=x.dtype, device=x.device)
    evaluations = 0
    while True:
        todo = ((high - low) > 1).nonzero().squeeze(1)
        if todo.numel() == 0:
            break
        middle = (low[todo] + high[todo]) // 2
        bound = min_margin_bounds(layers, x, y, todo, grid[middle], method, batch_size)
        evaluations += todo.numel()
        ok = bound > 0
        low[todo[ok]], lower_margin[todo[ok]] = middle[ok], bound[ok]
        high[todo[~ok]], upper_margin[todo[~ok]] = middle[~ok], bound[~ok]
    count = low + 1
    certified = torch.arange(size, device=x.device)[:, None] < count[None, :]
    return GridSearch(certified, count, lower_margin, upper_margin, evaluations)


def certified_radius(layers: Sequence[nn.Module], x: Tensor, y: Tensor, lower: Tensor, upper: Tensor,
                     lower_margin: Tensor, upper_margin: Tensor, tolerance: float, method: str, batch_size: int,
                     floor: float = 0.0, max_steps: int = 60) -> tuple[Tensor, Tensor, int]:
    """Per sample, a certified radius in [lower, upper) to a relative ``tolerance``: (radius, bound, evaluations).

    ``lower`` is certified (or 0), ``upper`` is not, with the smallest margin bound at each (``lower_margin``
    > 0 ≥ ``upper_margin``). The search keeps that bracket and narrows it until
    ``bound − radius ≤ tolerance · max(bound, floor)`` (``floor`` ends the search on samples whose radius
    is ~0, e.g. a tiny clean margin): the first step halves the bracket; then regula falsi on the margin bound
    as a function of ε with the Illinois rule (an end kept twice in a row has its value halved, so the
    search cannot stall on one side). The bound is smooth and concave near its zero: on the MNIST MLPs this
    takes 4.2–4.9 bounds per sample where bisection takes about 6 to reach 2 %. ``radius`` is always a
    radius the method certified (a lower bound on the one it would find exactly); ``bound`` the smallest
    radius it tried and could not. Only samples with lower < upper are searched.
    """
    radius, bound = lower.clone(), upper.clone()
    f_low, f_high = lower_margin.clone(), upper_margin.clone()
    kept = torch.zeros_like(lower, dtype=torch.long)  # +1: the lower end moved last, −1: the upper end
    evaluations = 0
    for step in range(max_steps):
        todo = ((bound > radius) & (bound - radius > tolerance * bound.clamp(min=floor))).nonzero().squeeze(1)
        if todo.numel() == 0:
            break
        a, b, fa, fb = radius[todo], bound[todo], f_low[todo], f_high[todo]
        width = b - a
        falsi = a + width * fa / (fa - fb)
        usable = torch.isfinite(falsi) & (fa > 0) & (fb <= 0) & (step > 0)
        t = torch.where(usable, falsi, a + width / 2).clamp(a + width / 64, b - width / 64)
        value = min_margin_bounds(layers, x, y, todo, t, method, batch_size)
        evaluations += todo.numel()
        ok = value > 0
        up, down = todo[ok], todo[~ok]
        radius[up], f_low[up] = t[ok], value[ok]
        f_high[up] = torch.where(kept[up] == 1, f_high[up] / 2, f_high[up])
        bound[down], f_high[down] = t[~ok], value[~ok]
        f_low[down] = torch.where(kept[down] == -1, f_low[down] / 2, f_low[down])
        kept[up], kept[down] = 1, -1
    return radius, bound, evaluations


@dataclass
class CertifyResult:
    """What one certification produced, per sample and summed up."""

    method: str  # what was computed (``method_label``)
    epsilons: list[float]
    correct: Tensor  # (N,) bool: clean prediction correct
    certified: Tensor  # (E, N) bool, monotone in ε
    radius: Tensor | None  # (N,) largest certified ε found (0 where none), capped at max(epsilons)
    radius_bound: Tensor | None  # (N,) the smallest radius tried above it that was not certified
    radius_tolerance: float | None
    radius_floor: float = 0.0  # radii below it were resolved to tolerance · floor (absolute)
    evaluations: int = 0  # bounds computed (sample × radius), grid and radii
    seconds: float = 0.0

    @property
    def n_samples(self) -> int:
        return int(self.correct.shape[0])

    @property
    def clean_accuracy(self) -> float:
        return self.correct.float().mean().item()

    def certified_accuracy(self) -> list[float]:
        return [m.float().mean().item() for m in self.certified]

    @property
    def median_radius(self) -> float | None:
        """Median over all evaluated samples (misclassified and uncertified ones count as 0)."""
        return None if self.radius is None else float(np.median(self.radius.double().cpu().numpy()))

    def table(self, meta: dict[str, Any]) -> pd.DataFrame:
        """certified.csv: one row per ε with the run's identity columns."""
        rows = [{**meta, "method": self.method, "epsilon": eps, "n_samples": self.n_samples,
                 "clean_accuracy": self.clean_accuracy, "certified_accuracy": acc}
                for eps, acc in zip(self.epsilons, self.certified_accuracy())]
        frame = pd.DataFrame(rows)
        return frame[CERTIFIED_COLUMNS + [c for c in frame.columns if c not in CERTIFIED_COLUMNS]]

    def summary(self) -> dict[str, Any]:
        """For metrics.json (the median radius lives here, not in certified.csv)."""
        out: dict[str, Any] = {
            "method": self.method, "n_samples": self.n_samples, "epsilons": self.epsilons,
            "certified_accuracy": self.certified_accuracy(),
            "median_radius": self.median_radius, "radius_max": max(self.epsilons),
            "radius_tolerance": self.radius_tolerance,
            "bounds_per_sample": self.evaluations / max(1, self.n_samples),
        }
        if self.radius is not None:
            searched = self.radius_bound > self.radius
            gap = (self.radius_bound - self.radius)[searched] / self.radius_bound[searched].clamp(min=self.radius_floor)
            out["radius_at_max"] = (self.radius >= max(self.epsilons)).float().mean().item()
            out["radius_resolution"] = gap.max().item() if gap.numel() else 0.0  # relative (floored), the widest
        return out

    def note(self) -> str:
        """The footnote of the ``certified`` column in robustness.md."""
        text = (f"- {CERTIFIED}: {self.method.upper() if self.method in METHODS else self.method} certified "
                f"accuracy, a lower bound (a proof that no input in the L∞ ball ∩ [0, 1] changes the "
                f"prediction), on the first {self.n_samples} test samples")
        if self.median_radius is not None:
            text += (f"; median certified radius {self.median_radius:.4g} (each image's to within "
                     f"{100 * self.radius_tolerance:g} %, capped at ε = {max(self.epsilons):g})")
        return text


@dataclass
class Certifier:
    """The ``certify`` config group: ``method`` over ``epsilons`` on the first ``n_samples`` test samples,
    ``batch_size`` samples per pass, and per sample the largest certified radius in [0, max(epsilons)]
    to a relative ``radius_tolerance`` (null: no radii)."""

    method: str = "crown"
    epsilons: Sequence[float] = (0.001, 0.003, 0.01, 0.03, 0.05)
    n_samples: int | None = None
    batch_size: int = 50
    radius_tolerance: float | None = 0.02

    def __post_init__(self) -> None:
        problems = []
        values = [self.epsilons] if isinstance(self.epsilons, (int, float, str)) else self.epsilons
        try:
            self.epsilons = sorted({float(e) for e in values})
            if not self.epsilons or not all(0 <= e <= 1 for e in self.epsilons):
                problems.append(f"certify.epsilons must be non-empty and in [0, 1] (got {self.epsilons})")
        except (TypeError, ValueError):
            problems.append(f"certify.epsilons must be a list of numbers (got {self.epsilons!r})")
        if self.method not in METHODS:
            problems.append(f"certify.method must be ibp or crown (got {self.method!r})")
        if self.n_samples is not None and (not isinstance(self.n_samples, int) or self.n_samples < 1):
            problems.append(f"certify.n_samples must be null or an integer >= 1 (got {self.n_samples!r})")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            problems.append(f"certify.batch_size must be an integer >= 1 (got {self.batch_size!r})")
        if self.radius_tolerance is not None and not (
                isinstance(self.radius_tolerance, (int, float)) and not isinstance(self.radius_tolerance, bool)
                and 0 < self.radius_tolerance < 1):
            problems.append("certify.radius_tolerance must be null or a number in (0, 1) "
                            f"(got {self.radius_tolerance!r})")
        if problems:
            raise ConfigError("invalid configuration: " + "; ".join(problems))

    def layers(self, model: nn.Module) -> list[nn.Module]:
        """The model's layers, or a ConfigError saying why it cannot be certified (before any training)."""
        try:
            return certifiable_layers(model)
        except ValueError as exc:
            raise ConfigError(f"certify={self.method}: {exc}") from None

    def run(self, model: nn.Module, x: Tensor, y: Tensor) -> CertifyResult:
        """Certify the first ``n_samples`` of (x, y) on the model's device, in eval mode."""
        t0 = time.perf_counter()
        layers = self.layers(model)
        n = x.shape[0] if self.n_samples is None else min(self.n_samples, x.shape[0])
        x, y = x[:n], y[:n]
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                correct, margins = clean_predictions(model, x, y, self.batch_size)
                grid = certify_grid(layers, x, y, correct, margins, self.epsilons, self.method, self.batch_size)
                radius = bound = None
                evaluations = grid.evaluations
                if self.radius_tolerance is not None:
                    radius, bound, more = self._radii(layers, x, y, correct, grid)
                    evaluations += more
        finally:
            model.train(was_training)
        return CertifyResult(method_label(layers, self.method), list(self.epsilons), correct, grid.certified,
                             radius, bound, self.radius_tolerance, self.radius_floor, evaluations,
                             time.perf_counter() - t0)

    def _radii(self, layers: list[nn.Module], x: Tensor, y: Tensor, correct: Tensor,
               grid: GridSearch) -> tuple[Tensor, Tensor, int]:
        """Each sample's bracket from the grid, [largest certified ε (or 0), next ε], then the search inside
        it; certified at the largest ε: the radius is that ε (capped), nothing searched."""
        points = torch.tensor([0.0, *self.epsilons], dtype=x.dtype, device=x.device)
        capped = grid.count == len(self.epsilons)
        lower = torch.where(correct, points[grid.count], torch.zeros_like(points[grid.count]))
        upper = torch.where(correct & ~capped, points[(grid.count + 1).clamp(max=len(self.epsilons))], lower)
        return certified_radius(layers, x, y, lower, upper, grid.lower_margin, grid.upper_margin,
                                float(self.radius_tolerance), self.method, self.batch_size, self.radius_floor)

    @property
    def radius_floor(self) -> float:
        """Radii below 1 % of the smallest positive grid radius are resolved in absolute terms."""
        return 0.01 * min((e for e in self.epsilons if e > 0), default=1.0)


__all__ = [
    "CERTIFIED", "CERTIFIED_COLUMNS", "METHODS", "CertifyResult", "Certifier", "GridSearch", "certifiable_layers",
    "certified_mask", "certified_radius", "certify_grid", "clean_predictions", "crown_margin_bounds", "ibp_layer",
    "ibp_margin_bounds", "input_box", "margin_bounds", "method_label", "min_margin_bounds", "relaxation",
    "s_shaped_upper_line",
]
