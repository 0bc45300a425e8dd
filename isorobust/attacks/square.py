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


# Fooled rows leave the working set together once they are this share of it (each removal copies every row).
COMPACT_SHARE = 0.1


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
        if n_alive <= (1 - COMPACT_SHARE) * alive.numel():
            best[idx] = w_best
            idx, w_x, w_low, w_high, w_y = idx[alive], w_x[alive], w_low[alive], w_high[alive], w_y[alive]
            w_best, w_margin, alive = w_best[alive], w_margin[alive], alive[alive]
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
