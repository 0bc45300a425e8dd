"""Linear relaxations of the activations: two lines per neuron, below and above it on its pre-activation interval."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

Line = tuple[Tensor, Tensor]  # slope, intercept (elementwise)


def _pad(line: Line, lower: Tensor, upper: Tensor, units: float, sign: float) -> Line:
    """Move an intercept by ``units`` rounding units of its own dtype (up for an upper line, ``sign``=+1),
    scaled by the size of the terms: covers the rounding of f, f' and the line's arithmetic."""
    slope, intercept = line
    scale = 1.0 + intercept.abs() + slope.abs() * torch.maximum(lower.abs(), upper.abs())
    return slope, intercept + sign * units * torch.finfo(intercept.dtype).eps * scale


def cast_line(line: Line, lower: Tensor, upper: Tensor, dtype: torch.dtype, sign: float) -> Line:
    """The line in ``dtype``, still on its side of the function on [lower, upper] (``sign`` +1: above).

    Rounding the slope turns the line by (a − ã)·z, at most max((a − ã)·l, (a − ã)·u) on the interval
    (a linear function peaks at an end): the intercept takes that shift, then is rounded away from the
    function (one step of ``nextafter`` where the cast went the wrong way). So the padding is the
    rounding actually made, not a worst case: a few 1e-8 per neuron in float32 instead of ~1e-6, which
    summed over hundreds of neurons decided whether the bound matched the reference's to 1e-4.
    """
    slope, intercept = line
    if slope.dtype == dtype:
        return slope, intercept
    rounded = slope.to(dtype)
    turn = (slope - rounded.to(slope.dtype))
    ends = torch.stack([turn * lower.to(slope.dtype), turn * upper.to(slope.dtype)])
    shift = ends.amax(0) if sign > 0 else ends.amin(0)
    exact = intercept + shift
    cast = exact.to(dtype)
    wrong = (cast.to(exact.dtype) - exact) * sign < 0
    away = torch.nextafter(cast, torch.full_like(cast, sign * float("inf")))
    return rounded, torch.where(wrong, away, cast)


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
                        upper: Tensor, point: Tensor | None = None, rounded: bool = False) -> Line:
    """A line above an increasing S-shaped f (convex for x ≤ 0, concave for x ≥ 0) on all of [lower, upper].

    - u ≤ 0 (f convex there): the chord through both ends; a convex function lies below its chords.
    - l ≥ 0 (f concave): a tangent at a point t in [l, u]; a concave function lies below its tangents.
    - l < 0 < u: if the tangent at u passes below (l, f(l)), the chord is above f (its excess over f
      grows on [0, u] and f is below the chord on the convex part). Otherwise a tangent at t in [d, u],
      d ≥ 0 the point whose tangent passes through (l, f(l)) (``tangent_points``): above f on the concave
      part [0, u] as any tangent there, and above f on [l, 0] because it is above both ends of that
      convex piece (g(t) = f(t) + f'(t)(l − t) − f(l) grows with t on [0, ∞), so t ≥ d keeps it above
      (l, f(l))). The line is raised to pass above (l, f(l)) in any case: an inexact d costs tightness,
      never soundness.

    ``point`` (α-CROWN's parameter) is the tangent point t, projected onto its range: t ≥ 0 for l ≥ 0 (a
    tangent of the concave part lies above all of it), t ≥ d across 0 (beyond u too: such a tangent is
    above the concave part and passes above (l, f(l))). None: CROWN's choice, the midpoint moved into
    [l, u] (across 0 into [d, u]: max(d, (l + u)/2)). Taking the midpoint across 0 when it lies right of d
    is what the reference verifier does too: the tangent at d alone (the steepest allowed) left our
    bounds 0.37 below the reference's (median, β = 0 model, ε = 0.01) where most intervals are wide.
    ``rounded``: d for l rounded outward to the 0.01 grid (−0.01·(⌊−l/0.01⌋ + 1)), as the reference verifier
    tabulates it: a tangent point a little right of d, still in range, a flatter line (not clamped to u:
    a tangent of the concave part beyond u is above f on [0, u] too). Neither line dominates the other.
    Inputs in float64 (float32 on MPS); intervals of (near) zero width take the derivative as the chord's slope.
    """
    lower, upper = torch.minimum(lower, upper), torch.maximum(lower, upper)
    f_lower, f_upper = f(lower), f(upper)
    width = upper - lower
    middle = (lower + upper) / 2
    narrow = width <= 1e-12 * (1.0 + middle.abs())
    chord_slope = torch.where(narrow, df(middle), (f_upper - f_lower) / torch.where(narrow, 1.0, width))
    chord_intercept = f_lower - chord_slope * lower
    straddle = (lower < 0) & (upper > 0)
    use_chord = (upper <= 0) | (straddle & (f_upper + df(upper) * (lower - upper) - f_lower <= 0))
    # the tangent point's range: [l, u], or [d, u] across 0 (d from the table, ≤ u)
    if rounded:
        start = tangent_points(f, df, -(torch.floor(-lower / 0.01) + 1) * 0.01).clamp(min=0)
    else:
        start = torch.minimum(tangent_points(f, df, lower), upper).clamp(min=0)
    if point is None:  # CROWN: the midpoint, moved into range; never beyond u but for ``rounded``
        point = torch.where(straddle & (start > upper), start,
                            torch.minimum(torch.maximum(middle, torch.where(straddle, start, lower)), upper))
    else:  # α-CROWN: anywhere a tangent stays above f on [l, u]: t ≥ d across 0, t ≥ 0 right of it
        point = torch.maximum(point, torch.where(straddle, start, torch.zeros_like(start)))
    t_slope = df(point)
    t_intercept = f(point) - t_slope * point
    t_intercept = t_intercept + (f_lower - (t_slope * lower + t_intercept)).clamp(min=0)
    return torch.where(use_chord, chord_slope, t_slope), torch.where(use_chord, chord_intercept, t_intercept)


def _tanh(x: Tensor) -> Tensor:
    return torch.tanh(x)


def _dtanh(x: Tensor) -> Tensor:
    return torch.cosh(x).pow(-2)  # 1 − tanh² loses its relative precision for |x| ≳ 10


def _dsigmoid(x: Tensor) -> Tensor:
    return torch.sigmoid(x) * torch.sigmoid(-x)


def _activation_functions(act: nn.Module):
    """(f, f', offset): the lower line of f is −(upper line of −f(−z) on [−u, −l]) and −f(−z) is f − offset
    (tanh: itself, offset 0; sigmoid: σ − 1, offset 1), so both lines come from one S-shaped rule."""
    return (_tanh, _dtanh, 0.0) if isinstance(act, nn.Tanh) else (torch.sigmoid, _dsigmoid, 1.0)


def _wide(x: Tensor) -> torch.dtype:
    return torch.float32 if x.device.type == "mps" else torch.float64  # MPS has no float64


def s_shaped_lines(act: nn.Module, lower: Tensor, upper: Tensor, points: Tensor | None = None,
                   rounded: bool = False) -> tuple[Line, Line]:
    """(lower line, upper line) of tanh or the sigmoid on [lower, upper] in the inputs' dtype, computed in
    float64 and cast outward (``cast_line``).

    ``points``: α-CROWN's parameters, (2, *lower.shape): the upper line's tangent point and the lower
    line's, the latter as the point −t of the reflected function (so that one projection rule serves
    both); None: CROWN's lines. Differentiable in ``points``.
    """
    dtype, wide = lower.dtype, _wide(lower)
    l64, u64 = lower.to(wide), upper.to(wide)
    f, df, offset = _activation_functions(act)
    both = None if points is None else torch.cat([points[0].to(wide), points[1].to(wide)])
    slope, intercept = s_shaped_upper_line(f, df, torch.cat([l64, -u64]), torch.cat([u64, -l64]), both, rounded)
    n = l64.shape[0]
    upper_line = (slope[:n], intercept[:n])
    lower_line = (slope[n:], offset - intercept[n:])
    if wide == dtype:  # MPS (no float64): pad by rounding units of dtype instead
        return _pad(lower_line, l64, u64, 8, -1.0), _pad(upper_line, l64, u64, 8, +1.0)
    if points is not None:  # α-CROWN's steps: pad by the cast's rounding, cheaper than ``cast_line``
        # (round to nearest moves a slope by ≤ ½ unit of it and an intercept by ≤ ½ unit: two units of
        # dtype, scaled by the terms, cover both and f's float64 error)
        units = 2 * torch.finfo(dtype).eps / torch.finfo(wide).eps
        lower_line, upper_line = _pad(lower_line, l64, u64, units, -1.0), _pad(upper_line, l64, u64, units, +1.0)
        return tuple(v.to(dtype) for v in lower_line), tuple(v.to(dtype) for v in upper_line)
    # f and f' in float64 are within an ulp or two of the truth: a few float64 units cover them
    lower_line, upper_line = _pad(lower_line, l64, u64, 4, -1.0), _pad(upper_line, l64, u64, 4, +1.0)
    return cast_line(lower_line, l64, u64, dtype, -1.0), cast_line(upper_line, l64, u64, dtype, +1.0)


def default_points(act: nn.Module, lower: Tensor, upper: Tensor) -> Tensor:
    """CROWN's tangent points as α-CROWN's starting parameters, (2, *lower.shape) (see ``s_shaped_lines``)."""
    return torch.stack([(lower + upper) / 2, -(lower + upper) / 2])


def relu_lines(lower: Tensor, upper: Tensor, lower_slope: Tensor | None = None) -> tuple[Line, Line]:
    """ReLU (CROWN): identity or zero where the sign is fixed; across 0 the chord above and, below,
    y = α·z with α in [0, 1] (any such line is below ReLU): α-CROWN's parameter, else CROWN's choice
    α = 1 where u ≥ −l, else 0 (the smaller area)."""
    one, zero = torch.ones_like(lower), torch.zeros_like(lower)
    active, dead = lower >= 0, upper <= 0
    cross = ~active & ~dead
    width = torch.where(cross, upper - lower, one)
    up_slope = torch.where(active, one, torch.where(dead, zero, upper / width))
    up_intercept = torch.where(cross, -lower * upper / width, zero)
    if lower_slope is None:
        lower_slope = torch.where(upper >= -lower, one, zero)
    # in [0, 1] by value, the gradient passed through: clamp's is 0 at its ends, where CROWN's choice
    # starts α-CROWN, which would then never move
    in_range = lower_slope + (lower_slope.clamp(0, 1) - lower_slope).detach()
    low_slope = torch.where(active, one, torch.where(dead, zero, in_range))
    # the chord is exact in real arithmetic; pad it against rounding in its evaluation
    padded = _pad((up_slope, up_intercept), lower, upper, 8, +1.0)[1]
    return (low_slope, zero), (up_slope, torch.where(cross, padded, up_intercept))


def relaxation(act: nn.Module | None, lower: Tensor, upper: Tensor,
               parameters: Tensor | None = None, rounded: bool = False) -> tuple[Line, Line]:
    """(lower line, upper line) of ``act`` on each interval [lower, upper]: a·z + b ≤ act(z) ≤ a'·z + b'.

    ``parameters``: α-CROWN's (tanh/sigmoid: the tangent points, ``s_shaped_lines``; ReLU: the lower
    slope); None: CROWN's lines (``rounded``: the tanh/sigmoid tangent point of ``s_shaped_upper_line``'s
    second rule). ``act`` None (two affine layers in a row): the identity.
    """
    if act is None:
        one, zero = torch.ones_like(lower), torch.zeros_like(lower)
        return (one, zero), (one, zero)
    if isinstance(act, nn.ReLU):
        return relu_lines(lower, upper, parameters)
    if isinstance(act, (nn.Tanh, nn.Sigmoid)):
        return s_shaped_lines(act, lower, upper, parameters, rounded)
    raise ValueError(f"no relaxation for {type(act).__name__}")


def initial_parameters(act: nn.Module | None, lower: Tensor, upper: Tensor) -> Tensor | None:
    """α-CROWN's starting point for ``act`` on [lower, upper]: CROWN's own lines (None: nothing to optimise)."""
    if isinstance(act, nn.ReLU):
        return (upper >= -lower).to(lower.dtype)
    if isinstance(act, (nn.Tanh, nn.Sigmoid)):
        return default_points(act, lower, upper)
    return None
