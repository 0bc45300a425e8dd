"""FAB-T, L∞ (Croce & Hein 2020, 'Minimally distorted adversarial examples with a fast adaptive boundary
attack'), the targeted version AutoAttack 'standard' runs, written here.

For a sample x0 of class y and a target class t, FAB walks to the boundary between y and t. At the iterate
x it linearises f = z_t − z_y (f(x) + ∇f·(v − x) = 0 is the linearised boundary) and takes the smallest
L∞ steps inside the box [0, 1] that bring the iterate (d1) and the original image (d2) onto that
hyperplane. The next iterate mixes the two, extrapolated by η:

    x ← clip((1 − α)(x + η·d1) + α(x0 + η·d2)),   α = min(‖d1‖ / (‖d1‖ + ‖d2‖), α_max)

Leaning on x0 is what keeps the perturbation small: FAB looks for a *minimal* adversarial example. When an
iterate is misclassified it is kept if it is closer to x0 than the best so far, and the iterate steps back
towards x0: x ← x0 + β(x − x0). A sample counts as broken when its best example lies within ε.

AutoAttack's budget: the 9 runner-up classes of the clean logits as targets, 100 iterations, one start at
x0 (no random start), α_max = 0.1, η = 1.05, β = 0.9.

What differs from the reference code is bookkeeping, not the iteration:
- all targets of all samples are one batch (a row is a sample and a target), not one target after another;
- a row leaves the batch once an iterate within ε fooled the model, and takes its sample's other targets with
  it. A sample is broken here exactly when the reference code breaks it: its best example is within ε once
  any iterate within ε is misclassified, and whatever FAB does afterwards only brings it closer to x0.
- the step to a hyperplane (``linf_step_to_hyperplane``) solves the same problem as the reference code's
  sort and bisection by a few fixed-point iterations on the saturated coordinates (exact; see there).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from isorobust.attacks._compiled import compiled

ALPHA_MAX, ETA, BETA = 0.1, 1.05, 0.9
# The fixed-point iteration of linf_step_to_hyperplane ends in a few steps on images; rows still moving
# after this many get the exact sort-based solution instead.
MAX_FIXED_POINT_STEPS = 30


def _room(p: Tensor, direction: Tensor) -> Tensor:
    """How far each coordinate of ``p`` can move in ``direction`` (its sign) before leaving [0, 1]."""
    return torch.where(direction > 0, 1.0 - p, p)


def _oriented(p: Tensor, w: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """w flipped per row so that reaching the hyperplane w·v = b means raising w·v by ``need`` ≥ 0; with
    each coordinate's room in its direction of travel (sign of the flipped w)."""
    gap = b - (w * p).sum(dim=1)
    ws = torch.where(gap[:, None] < 0, -w, w)
    return ws, _room(p, ws), gap.abs()


def _lambda_step(ws: Tensor, room: Tensor, need: Tensor, lam: Tensor) -> tuple[Tensor, Tensor]:
    """One fixed-point step for the L∞ radius λ at which Σ_i |w_i|·min(λ, room_i) = need: with the
    coordinates saturated at λ (room ≤ λ) fixed, the linear equation's root. Returns it and the number of
    saturated coordinates."""
    aw = ws.abs()
    saturated = room <= lam[:, None]
    reached = torch.where(saturated, aw * room, 0.0).sum(dim=1)
    free = torch.where(saturated, 0.0, aw).sum(dim=1)
    return (need - reached) / free.clamp_min(1e-30), saturated.sum(dim=1)


def _lambda_by_sorting(ws: Tensor, room: Tensor, need: Tensor) -> Tensor:
    """The same radius as the fixed-point iteration, from the rooms in ascending order (exact, slower)."""
    aw = ws.abs()
    room_sorted, order = room.sort(dim=1)
    aw_sorted = aw.gather(1, order)
    below = torch.cumsum(aw_sorted * room_sorted, dim=1) - aw_sorted * room_sorted  # Σ over smaller rooms
    above = aw_sorted.flip(1).cumsum(dim=1).flip(1)  # Σ |w| over this and larger rooms
    reach = below + room_sorted * above  # g(room_k): what radius room_k reaches
    k = (reach < need[:, None]).sum(dim=1).clamp_max(room.shape[1] - 1)  # the first room reaching need
    return (need - below.gather(1, k[:, None]).squeeze(1)) / above.gather(1, k[:, None]).squeeze(1).clamp_min(1e-30)


def linf_step_to_hyperplane(p: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """The smallest step d in L∞ (row by row) with w·(p + d) = b and p + d in [0, 1]; where no point of the
    box reaches the hyperplane, the step to the box corner that gets closest to it.

    Moving every coordinate by λ in the direction of sign(w)·sign(b − w·p), but no further than the box
    allows, changes w·v by g(λ) = Σ_i |w_i|·min(λ, room_i), an increasing, concave, piecewise-linear
    function; the answer is d_i = ±min(λ*, room_i) with g(λ*) = need. From λ = 0, each step solves the
    linear equation with the coordinates saturated at the current λ held fixed: it never overshoots λ*
    (g lies below that line past λ) and stops at λ* once no new coordinate saturates, in a few steps.
    """
    ws, room, need = _oriented(p, w, b)
    capacity = (ws.abs() * room).sum(dim=1)
    lam = torch.zeros_like(need)
    count = torch.full_like(need, -1, dtype=torch.long)
    rows = torch.arange(p.shape[0], device=p.device)  # the rows still moving
    for _ in range(MAX_FIXED_POINT_STEPS):
        new_lam, new_count = _lambda_step(ws[rows], room[rows], need[rows], lam[rows])
        moving = new_count != count[rows]
        lam[rows], count[rows] = new_lam, new_count
        rows = rows[moving]
        if rows.numel() == 0:
            break
    if rows.numel():
        lam[rows] = _lambda_by_sorting(ws[rows], room[rows], need[rows])
    lam = torch.where(capacity < need, torch.inf, lam)  # out of reach: every coordinate to its box edge
    return torch.sign(ws) * torch.minimum(room, lam[:, None])


def _mix(x: Tensor, x0: Tensor, d1: Tensor, d2: Tensor, alpha_max: float, eta: float) -> Tensor:
    """FAB's update from the two steps: α = min(‖d1‖/(‖d1‖ + ‖d2‖), α_max), extrapolated by η, clipped."""
    a1 = d1.abs().amax(dim=1).clamp_min(1e-8)
    a2 = d2.abs().amax(dim=1).clamp_min(1e-8)
    alpha = (a1 / (a1 + a2)).clamp(0.0, alpha_max)[:, None]
    return ((x + eta * d1) * (1 - alpha) + (x0 + eta * d2) * alpha).clamp(0.0, 1.0)


def fab_step(x: Tensor, x0: Tensor, f: Tensor, grad: Tensor, alpha_max: float = ALPHA_MAX,
             eta: float = ETA) -> Tensor:
    """One FAB iteration on flat rows: the next iterate from ``x``, the original images ``x0``, the
    difference of logits f = z_t − z_y at ``x`` and its gradient."""
    b = (grad * x).sum(dim=1) - f  # the linearised boundary: grad·v = b
    return _mix(x, x0, linf_step_to_hyperplane(x, grad, b), linf_step_to_hyperplane(x0, grad, b), alpha_max, eta)


def _step_unrolled(p: Tensor, w: Tensor, b: Tensor, steps: int) -> tuple[Tensor, Tensor]:
    """``linf_step_to_hyperplane`` with a fixed number of fixed-point steps on every row, no indexing (so
    that torch.compile fuses each step into one pass); a row is exact where its last step saturated no
    new coordinate (``settled``)."""
    ws, room, need = _oriented(p, w, b)
    lam = torch.zeros_like(need)
    count = torch.full_like(need, -1, dtype=torch.long)
    settled = torch.zeros_like(need, dtype=torch.bool)
    for _ in range(steps):
        new_lam, new_count = _lambda_step(ws, room, need, lam)
        settled = new_count == count
        lam, count = new_lam, new_count
    out_of_reach = (ws.abs() * room).sum(dim=1) < need
    lam = torch.where(out_of_reach, torch.inf, lam)
    return torch.sign(ws) * torch.minimum(room, lam[:, None]), settled | out_of_reach


def fab_step_fused(x: Tensor, x0: Tensor, f: Tensor, grad: Tensor, alpha_max: float = ALPHA_MAX,
                   eta: float = ETA, steps: int = 6) -> tuple[Tensor, Tensor]:
    """``fab_step`` written for torch.compile: the next iterate and, per row, whether both projections
    settled within ``steps`` fixed-point steps (where not, the caller redoes the row with ``fab_step``)."""
    b = (grad * x).sum(dim=1) - f
    d1, settled1 = _step_unrolled(x, grad, b, steps)
    d2, settled2 = _step_unrolled(x0, grad, b, steps)
    return _mix(x, x0, d1, d2, alpha_max, eta), settled1 & settled2


def _difference_and_grad(model: nn.Module, x: Tensor, shape: tuple[int, ...], y: Tensor,
                         target: Tensor) -> tuple[Tensor, Tensor]:
    """z_t − z_y at the flat rows ``x`` and its gradient (flat)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x.view(-1, *shape))
        f = logits.gather(1, target[:, None]).squeeze(1) - logits.gather(1, y[:, None]).squeeze(1)
        (grad,) = torch.autograd.grad(f.sum(), x)
    return f.detach(), grad


def step_back(x: Tensor, x0: Tensor, fooled: Tensor, beta: float = BETA) -> tuple[Tensor, Tensor]:
    """The L∞ distance of each row of ``x`` from ``x0``, and the iterate where FAB goes on: a misclassified
    row steps back towards x0, x0 + β(x − x0); the others stay."""
    return (x - x0).abs().amax(dim=1), torch.where(fooled[:, None], torch.lerp(x0, x, beta), x)


def _next_iterate(x: Tensor, x0: Tensor, f: Tensor, grad: Tensor, fused: Callable | None) -> Tensor:
    if fused is None:
        return fab_step(x, x0, f, grad)
    new, settled = fused(x, x0, f, grad)
    if not bool(settled.all()):  # rare: a projection needing more fixed-point steps than were unrolled
        rows = (~settled).nonzero().squeeze(1)
        new[rows] = fab_step(x[rows], x0[rows], f[rows], grad[rows])
    return new


def fab_targeted(model: nn.Module, x: Tensor, y: Tensor, epsilon: float, steps: int = 100,
                 n_target_classes: int = 9, beta: float = BETA, compile: bool = False) -> Tensor:
    """FAB-T (L∞) on a batch: each sample against its ``n_target_classes`` runner-up classes, ``steps``
    iterations from the clean image. Returns inputs within ε of ``x`` and in [0, 1]: a misclassified one
    where FAB found an adversarial example within ε, else ``x`` itself. ``compile``: run the iteration's
    elementwise arithmetic through torch.compile (``fab_step_fused``; same results up to rounding)."""
    fused = compiled(fab_step_fused) if compile else None
    back_step = compiled(step_back) if compile else step_back
    n, shape = x.shape[0], tuple(x.shape[1:])
    with torch.no_grad():
        order = model(x).argsort(dim=1, descending=True)
    n_targets = min(n_target_classes, order.shape[1] - 1)
    out = x.clone()
    if n_targets < 1 or n == 0:
        return out
    # rows: target-major (all samples for the first runner-up, then the second, ...)
    sample = torch.arange(n, device=x.device).repeat(n_targets)
    target = order[:, 1:n_targets + 1].T.reshape(-1)
    x0 = x.reshape(n, -1)[sample]
    labels = y[sample]
    iterate = x0.clone()
    broken = torch.zeros(n, dtype=torch.bool, device=x.device)
    for _ in range(steps):
        f, grad = _difference_and_grad(model, iterate, shape, labels, target)
        with torch.no_grad():
            iterate = _next_iterate(iterate, x0, f, grad, fused)
            fooled = model(iterate.view(-1, *shape)).argmax(dim=1) != labels
            distance, stepped_back = back_step(iterate, x0, fooled, beta)
            within = fooled & (distance <= epsilon)
            if not within.any():
                iterate = stepped_back
                continue
            # these rows break their samples; the samples' other rows are done too
            rows = within.nonzero().squeeze(1)
            samples = sample[rows]
            new = ~broken[samples]
            out.view(n, -1)[samples[new]] = iterate[rows[new]]
            broken[samples] = True
            keep = (~broken[sample]).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            sample, target, labels = sample[keep], target[keep], labels[keep]
            x0, iterate = x0.index_select(0, keep), stepped_back.index_select(0, keep)
    return out
