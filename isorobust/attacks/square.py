"""Square attack, L∞ (Andriushchenko et al. 2020, 'Square Attack: a query-efficient black-box adversarial
attack via random search'), written here: batched, and each query spent only on the samples not yet fooled.

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
    logits = model(x)
    true = logits.gather(1, y[:, None]).squeeze(1)
    return true - logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)


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
    for query in range(n_queries - 1):
        active = (best_margin > 0).nonzero().squeeze(1)
        if active.numel() == 0:
            break
        side = min(max(int(round(math.sqrt(p_selection(p_init, query, n_queries) * h * w))), 1), h - 1)
        top = int(torch.randint(0, h - side + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - side + 1, (1,), generator=generator))
        rows, cols = slice(top, top + side), slice(left, left + side)
        clean = x[active, :, rows, cols]  # the window only: copies of side² pixels, not of whole images
        lo, hi = low[active, :, rows, cols], high[active, :, rows, cols]
        candidate = best[active]  # a copy (advanced indexing): the current iterate, its window replaced below
        current = candidate[:, :, rows, cols]
        new_window = torch.minimum(torch.maximum(clean + epsilon * _signs(
            (active.numel(), c, 1, 1), generator, x.device), lo), hi)
        # A window equal to the current one costs a query and teaches nothing: draw again (the paper's code
        # does the same), at most a few times (at ε clipped to the bounds every sign may give the same pixels).
        for _ in range(10):
            same = (new_window - current).abs().flatten(1).amax(dim=1) < 1e-7
            if not same.any():
                break
            new_window[same] = torch.minimum(torch.maximum(clean[same] + epsilon * _signs(
                (int(same.sum()), c, 1, 1), generator, x.device), lo[same]), hi[same])
        candidate[:, :, rows, cols] = new_window
        margin = margins(model, candidate, y[active])
        better = margin < best_margin[active]
        best_margin[active] = torch.where(better, margin, best_margin[active])
        best[active[better]] = candidate[better]
    return best
