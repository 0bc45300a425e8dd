"""Boxes and interval bound propagation (Gowal et al. 2018): exact for one affine layer, monotone layers
map the box's corners."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .network import specification

Box = tuple[Tensor, Tensor]


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



def monotone_box(act: nn.Module | None, lower: Tensor, upper: Tensor) -> Box:
    return (lower, upper) if act is None else (act(lower), act(upper))

