"""α-CROWN (Xu et al. 2021): CROWN's relaxation lines become parameters, optimised per sample.

Any tangent point in its range (``relaxations.s_shaped_upper_line``) and any ReLU lower slope in [0, 1]
gives sound lines, so every choice gives a sound bound and the best one found is still a bound. The
parameters are optimised by projected gradient ascent (Adam) on the margins' lower bounds, starting
from CROWN's own lines, separately for each margin (each row of the specification has its own lines)
and, with ``intermediate=True``, for each neuron's lower and upper bound of every hidden layer too
(the pre-activation boxes are recomputed with their own lines at every step, so the final bound's
gradient reaches them through the boxes). Per margin and per neuron the best value over all steps is
kept: each step's bound is a proof on its own, so the maximum of proofs is one.

The result is never looser than CROWN: CROWN's margins enter the maximum (with the IBP bound of the
last hidden layer, as in ``crown``). The back-substitution here builds an autograd graph (float32
products, float64 relaxation lines cast outward, as in CROWN); ``crown.py`` keeps its faster
graph-free pass.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .crown import CrownPass, crown
from .ibp import Box, concretize, monotone_box
from .network import specification
from .relaxations import Line, initial_parameters, relaxation


@dataclass(frozen=True)
class AlphaOptions:
    """``certify.alpha``: Adam steps and learning rate (in pre-activation units for tanh/sigmoid tangent
    points, in slope units for ReLU), and whether hidden layers' boxes are optimised too."""

    iterations: int = 30
    lr: float = 0.1
    intermediate: bool = True


def project(act: nn.Module | None, parameters: Tensor, lower: Tensor, upper: Tensor) -> None:
    """Keep the parameters where the lines can use them (in place): ReLU slopes in [0, 1], tangent points
    no further out than l and u allow (t ≥ min(l, 0) for the upper line, t ≤ max(u, 0) reflected) and no
    further than the width of the interval beyond it (a tangent there is already almost flat). The
    relaxation projects onto the exact range again; this keeps Adam from wandering where nothing moves."""
    with torch.no_grad():
        if isinstance(act, nn.ReLU):
            parameters.clamp_(0.0, 1.0)
        elif parameters is not None:
            reach = upper - lower
            parameters[0] = torch.minimum(torch.maximum(parameters[0], lower.clamp(max=0)), upper + reach)
            parameters[1] = torch.minimum(torch.maximum(parameters[1], (-upper).clamp(max=0)), -lower + reach)


def per_row_lines(act: nn.Module | None, box: Box, rows: int, parameters: Tensor | None) -> tuple[Line, Line]:
    """The lines of ``act`` on ``box`` (B, n) for ``rows`` specification rows, (B, rows or 1, n) each: what
    depends on the interval alone is computed once per neuron and broadcast over the rows."""
    lower, upper = (b[:, None, :] for b in box)
    return relaxation(act, lower, upper, parameters)


def backward_bound(coef: Tensor, const: Tensor, affines: Sequence[tuple[Tensor, Tensor | None]],
                   lines: Sequence[tuple[Line, Line] | None], first_centre: Tensor, radius: Tensor,
                   betas: Sequence[tuple[Tensor, Tensor] | None] | None = None,
                   record: list[Tensor] | None = None, input_coef: list[Tensor] | None = None) -> Tensor:
    """Lower bound over the input box of coef·h + const (coef (B, R, n), const (B, R)), h the output of the
    activation after affine layer ``len(lines) − 1``; ``affines``: (weight, bias) of each affine layer,
    detached (the model's parameters are constants here); ``lines[i]``: (lower, upper) lines of activation i,
    (B, R or 1, n_i) each. ``betas[i]`` (B, R or 1, n_i): β-CROWN's multipliers of split constraints on
    pre-activation i: (the terms on its coefficient (B, R, n_i), the constant (B, R)), see ``bab``.
    ``record`` receives the coefficient of every activation's output (λ, in layer order), ``input_coef``
    the coefficient of the input (B, R, d). Differentiable (no in-place products)."""
    for i in range(len(lines) - 1, -1, -1):
        if record is not None:
            record.insert(0, coef)
        if lines[i] is not None:
            (low_slope, low_intercept), (up_slope, up_intercept) = lines[i]
            positive, negative = coef.clamp(min=0), coef.clamp(max=0)
            const = const + (positive * low_intercept + negative * up_intercept).sum(-1)
            coef = positive * low_slope + negative * up_slope
        if betas is not None and betas[i] is not None:
            coef = coef + betas[i][0]
            const = const + betas[i][1]
        if i == 0:
            break
        weight, bias = affines[i]
        if bias is not None:
            const = const + coef @ bias
        coef = coef @ weight
    on_input = coef @ affines[0][0]
    if input_coef is not None:
        input_coef.append(on_input)
    spread = torch.bmm(on_input.abs(), radius[:, :, None])[:, :, 0]
    return const + (coef * first_centre[:, None, :]).sum(-1) - spread


class AlphaCrown:
    """The optimisation for one batch of samples, after a CROWN pass (``run``)."""

    def __init__(self, base: CrownPass, y: Tensor, options: AlphaOptions):
        self.base, self.options = base, options
        self.acts = base.acts
        self.depth = len(base.affines) - 1
        with torch.no_grad():  # the network is a constant: no graph through its parameters
            self.affines = [(a.weight.detach(), None if a.bias is None else a.bias.detach()) for a in base.affines]
            self.weight, self.bias = specification(base.affines[-1], y)
            centre = (base.input_upper + base.input_lower) / 2
            self.radius = (base.input_upper - base.input_lower) / 2
            self.first_centre = F.linear(centre, *self.affines[0])
        rows = self.weight.shape[1]
        # parameters[k][j]: lines of activation j for the rows of start k (k = depth: the margins)
        starts = range(1, self.depth + 1) if options.intermediate else [self.depth]
        self.parameters: dict[int, list[Tensor | None]] = {}
        for k in starts:
            r = rows if k == self.depth else 2 * self.affines[k][0].shape[0]
            self.parameters[k] = [self._initial(self.acts[j], base.boxes[j], r) for j in range(k)]

    @staticmethod
    def _initial(act: nn.Module | None, box: Box, rows: int) -> Tensor | None:
        lower, upper = (b[:, None, :].expand(-1, rows, -1) for b in box)
        start = initial_parameters(act, lower, upper)
        return None if start is None else start.detach().clone().requires_grad_(True)

    def leaves(self) -> list[Tensor]:
        return [p for ps in self.parameters.values() for p in ps if p is not None]

    def bounds(self, boxes: list[Box]) -> tuple[Tensor, list[Box]]:
        """One pass with the current parameters: (margin bounds (B, K−1), the boxes it used), the hidden
        boxes recomputed (when optimised) and intersected with ``boxes`` (sound, detached)."""
        used = [boxes[0]]
        for k in range(1, self.depth):
            if k not in self.parameters:
                used.append(boxes[k])
                continue
            weight, bias = self.affines[k]
            n = weight.shape[0]
            coef = torch.cat([weight, -weight]).expand(used[0][0].shape[0], -1, -1)
            shift = bias if bias is not None else weight.new_zeros(n)
            const = torch.cat([shift, -shift]).expand(coef.shape[0], -1)
            lines = [self._lines(j, used[j], 2 * n, self.parameters[k][j]) for j in range(k)]
            bound = backward_bound(coef, const, self.affines, lines, self.first_centre, self.radius)
            # the tighter of this step's bound and the best so far, with this step's gradient: a plain
            # maximum would pass none wherever the best (a constant) wins, and at the start it always
            # does by a rounding unit (CROWN's boxes), so the hidden layers' lines would never move
            lower, upper = bound[:, :n], -bound[:, n:]
            lower = lower + (torch.maximum(lower, boxes[k][0]) - lower).detach()
            upper = upper + (torch.minimum(upper, boxes[k][1]) - upper).detach()
            used.append((torch.minimum(lower, upper), torch.maximum(lower, upper)))
        rows = self.weight.shape[1]
        lines = [self._lines(j, used[j], rows, self.parameters[self.depth][j]) for j in range(self.depth)]
        return backward_bound(self.weight, self.bias, self.affines, lines, self.first_centre, self.radius), used

    def _lines(self, j: int, box: Box, rows: int, parameters: Tensor | None) -> tuple[Line, Line] | None:
        if self.acts[j] is None:
            return None
        if parameters is not None:
            lower, upper = (b.detach()[:, None, :] for b in box)
            project(self.acts[j], parameters, lower, upper)
        return per_row_lines(self.acts[j], box, rows, parameters)

    def run(self) -> tuple[Tensor, list[Box]]:
        """(best margin bounds, tightest boxes) after ``options.iterations`` steps; stops early once every
        sample's every margin is proved (> 0)."""
        best = self.base.margins.clone()
        boxes = [(lo.clone(), up.clone()) for lo, up in self.base.boxes]
        leaves = self.leaves()
        if not leaves or self.options.iterations <= 0:
            return best, boxes
        optimizer = torch.optim.Adam(leaves, lr=self.options.lr)
        for _ in range(self.options.iterations):
            if bool((best.min(dim=1).values > 0).all()):
                break
            margins, used = self.bounds(boxes)
            # the sum of all margins, as the reference: measured on its model (β = 0, ε = 0.01, the 48 images
            # CROWN left), pulling only on the margins still ≤ 0 certified 0.5 point fewer
            loss = -margins.sum()
            with torch.no_grad():
                best = torch.maximum(best, margins)
                boxes = [(torch.maximum(lo, u_lo), torch.minimum(up, u_up))
                         for (lo, up), (u_lo, u_up) in zip(boxes, (tuple(b.detach() for b in box) for box in used))]
                boxes = [(torch.minimum(lo, up), torch.maximum(lo, up)) for lo, up in boxes]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.no_grad():  # the boxes of the last step may be tighter than any the optimiser saw
            margins, _ = self.bounds(boxes)
            best = torch.maximum(best, margins)
            hidden_lower, hidden_upper = monotone_box(self.acts[self.depth - 1], *boxes[self.depth - 1])
            best = torch.maximum(best, concretize(self.weight, self.bias, hidden_lower, hidden_upper))
        return best, boxes


def alpha_crown_margin_bounds(layers: Sequence[nn.Module], x: Tensor, y: Tensor, eps: float | Tensor,
                              options: AlphaOptions = AlphaOptions()) -> Tensor:
    """(B, K−1) lower bounds of logit[y] − logit[j] over B(x, ε) by α-CROWN, never below CROWN's."""
    return alpha_crown(layers, x, y, eps, options)[0]


def alpha_crown(layers: Sequence[nn.Module], x: Tensor, y: Tensor, eps: float | Tensor,
                options: AlphaOptions = AlphaOptions()) -> tuple[Tensor, CrownPass, list[Box]]:
    """(margin bounds, the CROWN pass it started from, the tightest boxes found)."""
    base = crown(layers, x, y, eps)
    if not base.boxes:  # a linear network: CROWN is exact
        return base.margins, base, base.boxes
    with torch.enable_grad():
        best, boxes = AlphaCrown(base, y, options).run()
    return best.detach(), base, boxes
