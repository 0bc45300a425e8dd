"""Square attack, L∞ and L2 (Andriushchenko et al. 2020, 'Square Attack: a query-efficient black-box
adversarial attack via random search'), written here: batched, and each query spent only on the samples not
yet fooled. The L∞ version below; the L2 one (``square_l2``) at the end of the file.

Random search on the margin loss (the true logit minus the best other one): start from vertical stripes of
±ε, then, query by query, set one square window of every still-robust image to a fresh random ±ε per
channel and keep it where the margin went down. The window's side shrinks on the paper's schedule of p, the
fraction of pixels it covers (p_init halved at fixed fractions of the query budget). A sample stops being
queried once its margin is ≤ 0 (it is fooled). Every iterate lies in the ε-ball and in [0, 1] by
construction: each pixel is the clean value ± ε, clipped to [0, 1].
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from isorobust.attacks._working_set import compaction_due, keep_rows
from isorobust.metrics.clean import logit_margin

# (fraction of the budget after which p is divided, the divisor): the schedule of the paper's code, on
# query numbers rescaled to a budget of 10000
P_SCHEDULE = ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128), (8000, 256),
              (10000, 512))


def p_selection(p_init: float, query: int, n_queries: int) -> float:
    """The fraction of pixels the window covers at ``query`` (0-based) of ``n_queries``."""
    it = int(query / n_queries * 10000)
    for bound, divisor in P_SCHEDULE:
        if it <= bound:
            return p_init / divisor
    return p_init  # past the budget: the paper's code falls back to p_init


def margins(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """The true class's logit minus the largest other one: ≤ 0 where ``x`` is misclassified."""
    return logit_margin(model(x), y)


def _signs(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> Tensor:
    return torch.randint(0, 2, shape, generator=generator).to(device, torch.float32).mul_(2).sub_(1)


@torch.no_grad()
def square_linf(model: nn.Module, x: Tensor, y: Tensor, epsilon: float, n_queries: int = 5000,
                p_init: float = 0.8, seed: int = 0) -> Tensor:
    """Adversarial images for ``x`` (N, C, H, W) in [0, 1] within ``epsilon`` (L∞) after at most
    ``n_queries`` forward passes per image (the first one included)."""
    if x.dim() != 4:
        raise ValueError(f"Square works on images (N, C, H, W), got a tensor of shape {tuple(x.shape)}")
    generator = torch.Generator().manual_seed(seed)
    n, c, h, w = x.shape
    low, high = (x - epsilon).clamp(0.0, 1.0), (x + epsilon).clamp(0.0, 1.0)
    best = torch.minimum(torch.maximum(x + epsilon * _signs((n, c, 1, w), generator, x.device), low), high)
    best_margin = margins(model, best, y)
    # The working set: the rows still queried, plus those fooled since it was last compacted (their windows
    # are written and taken back, so they stay as they are); these leave together once they are
    # COMPACT_SHARE of it. Each query then changes one window in place and copies no whole image.
    idx = torch.arange(n, device=x.device)
    w_x, w_low, w_high, w_y, w_best, w_margin = x, low, high, y, best.clone(), best_margin.clone()
    for query in range(n_queries - 1):
        alive = w_margin > 0
        n_alive = int(alive.sum())
        if n_alive == 0:
            break
        if compaction_due(~alive):
            best[idx] = w_best
            idx, w_x, w_low, w_high, w_y, w_best, w_margin, alive = keep_rows(
                alive, idx, w_x, w_low, w_high, w_y, w_best, w_margin, alive)
        active = alive.nonzero().squeeze(1)
        side = min(max(int(round(math.sqrt(p_selection(p_init, query, n_queries) * h * w))), 1), h - 1)
        top = int(torch.randint(0, h - side + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - side + 1, (1,), generator=generator))
        rows, cols = slice(top, top + side), slice(left, left + side)
        clean, lo, hi = w_x[:, :, rows, cols], w_low[:, :, rows, cols], w_high[:, :, rows, cols]  # views
        current = w_best[:, :, rows, cols].clone()  # the windows as they are, to take back where no better
        signs = torch.zeros(alive.numel(), c, 1, 1, device=x.device)
        signs[active] = _signs((n_alive, c, 1, 1), generator, x.device)
        new_window = torch.minimum(torch.maximum(clean + epsilon * signs, lo), hi)
        # A window equal to the current one costs a query and teaches nothing: draw again (the paper's code
        # does the same), at most a few times (at ε clipped to the bounds every sign may give the same pixels).
        for _ in range(10):
            same = ((new_window - current).abs().flatten(1).amax(dim=1) < 1e-7) & alive
            if not same.any():
                break
            new_window[same] = torch.minimum(torch.maximum(clean[same] + epsilon * _signs(
                (int(same.sum()), c, 1, 1), generator, x.device), lo[same]), hi[same])
        w_best[:, :, rows, cols] = new_window
        margin = margins(model, w_best, w_y)
        better = (margin < w_margin) & alive
        w_margin = torch.where(better, margin, w_margin)
        w_best[:, :, rows, cols] = torch.where(better[:, None, None, None], new_window, current)
    best[idx] = w_best
    return best


def bump(rows: int, cols: int) -> Tensor:
    """The paper's 'pseudo-Gaussian' patch on a rows × cols rectangle: at Chebyshev distance d from its
    centre, Σ_{k ≥ d} 1/(k + 1)² (concentric square rings, heavier towards the centre), unit L2 norm."""
    ci, cj = rows // 2, cols // 2
    i = torch.arange(rows).view(-1, 1)
    j = torch.arange(cols).view(1, -1)
    d = torch.maximum((i - ci).abs(), (j - cj).abs())
    rings = max(ci, cj) + 1  # up to the farthest pixel's distance
    weights = 1.0 / torch.arange(1, rings + 1, dtype=torch.float32) ** 2
    tail = weights.flip(0).cumsum(0).flip(0)  # tail[d] = Σ_{d ≤ k < rings} 1/(k + 1)²
    patch = tail[d]
    return patch / patch.norm()


def square_patch(side: int, generator: torch.Generator) -> Tensor:
    """An update of the L2 attack for a side × side window: a bump on one half and minus a bump on the other
    (so the patch sums to about zero), halves split across rows or, at random, across columns; unit norm."""
    top = side // 2
    patch = torch.cat([bump(top, side), -bump(side - top, side)]) if top else -bump(side, side)
    patch = patch / patch.norm()
    if int(torch.randint(0, 2, (1,), generator=generator)):
        patch = patch.T.contiguous()
    return patch


@torch.no_grad()
def square_l2(model: nn.Module, x: Tensor, y: Tensor, epsilon: float, n_queries: int = 5000,
              p_init: float = 0.8, seed: int = 0) -> Tensor:
    """Square attack in L2 (Andriushchenko et al. 2020, section 3.2), written here: adversarial images for ``x``
    (N, C, H, W) within L2 distance ``epsilon`` and in [0, 1] after at most ``n_queries`` forward passes per
    image, each query only on the images not yet fooled.

    The perturbation starts as a grid of bumps with random signs, scaled to norm ε. At each query two windows
    of the same side are drawn: the perturbation's mass in both (per channel), plus whatever of the budget ε
    is unused, goes to the first one (its old content plus a fresh signed patch, rescaled to that mass) and
    the second is emptied; the whole perturbation is rescaled to norm ε and clipped to [0, 1]. The candidate
    is kept where the margin went down."""
    if x.dim() != 4:
        raise ValueError(f"Square works on images (N, C, H, W), got a tensor of shape {tuple(x.shape)}")
    generator = torch.Generator().manual_seed(seed)
    n, c, h, w = x.shape
    dev = x.device

    def to_ball(delta: Tensor, x0: Tensor) -> Tensor:
        norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return (x0 + delta * (epsilon / norms)).clamp_(0.0, 1.0)

    # start: a grid of bumps (side h // 5, centred), each with a random sign per image and channel
    side = max(h // 5, 1)
    delta = torch.zeros_like(x)
    top0, left0 = (h - side * (h // side)) // 2, (w - side * (w // side)) // 2
    for r in range(h // side):
        for q in range(w // side):
            rows = slice(top0 + r * side, top0 + (r + 1) * side)
            cols = slice(left0 + q * side, left0 + (q + 1) * side)
            delta[:, :, rows, cols] += square_patch(side, generator).to(dev) * _signs((n, c, 1, 1), generator, dev)
    best = to_ball(delta, x)
    best_margin = margins(model, best, y)
    for query in range(n_queries - 1):
        active = (best_margin > 0).nonzero().squeeze(1)
        if active.numel() == 0:
            break
        x0, current = x[active], best[active]
        delta = current - x0
        side = max(int(round(math.sqrt(p_selection(p_init, query, n_queries) * h * w))), 3)
        side = min(side + (side % 2 == 0), h - 1, w - 1)  # odd, as the paper's code; inside the image
        t1, t2 = (int(v) for v in torch.randint(0, h - side, (2,), generator=generator))
        l1, l2 = (int(v) for v in torch.randint(0, w - side, (2,), generator=generator))
        win1 = (slice(None), slice(None), slice(t1, t1 + side), slice(l1, l1 + side))
        win2 = (slice(None), slice(None), slice(t2, t2 + side), slice(l2, l2 + side))
        # the mass to place in window 1, per channel: its own and window 2's (their union), plus the unused budget
        union = torch.zeros(h, w, device=dev)
        union[t1:t1 + side, l1:l1 + side] = 1.0
        union[t2:t2 + side, l2:l2 + side] = 1.0
        mass = (delta ** 2 * union).sum(dim=(2, 3), keepdim=True)
        unused = (epsilon ** 2 - (delta ** 2).sum(dim=(1, 2, 3), keepdim=True)).clamp_min(0.0) / c
        old = delta[win1]
        old = old / (old ** 2).sum(dim=(2, 3), keepdim=True).sqrt().add(1e-10)
        new = old + square_patch(side, generator).to(dev) * _signs((active.numel(), c, 1, 1), generator, dev)
        new = new / (new ** 2).sum(dim=(2, 3), keepdim=True).sqrt().clamp_min(1e-12) * (unused + mass).sqrt()
        delta[win2] = 0.0
        delta[win1] = new
        candidate = to_ball(delta, x0)
        margin = margins(model, candidate, y[active])
        better = margin < best_margin[active]
        best_margin[active] = torch.where(better, margin, best_margin[active])
        best[active[better]] = candidate[better]
    return best
