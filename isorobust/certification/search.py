"""Certified accuracy over an ε grid and certified radii: searches over ε, one bound per sample and step."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from isorobust.metrics.clean import logit_margin

from .crown import crown_margin_bounds
from .ibp import ibp_margin_bounds

METHODS = ("ibp", "crown")  # the bounds computed in one pass (α-CROWN and branch and bound build on them)


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
        margins.append(logit_margin(logits, part))
    if not correct:
        return y.new_zeros(0, dtype=torch.bool), x.new_zeros(0)
    return torch.cat(correct), torch.cat(margins)


def workers_for(device: torch.device) -> int:
    """Batches bounded at once: on a CPU one per torch thread, each single-threaded (the backward passes are
    many mid-sized products and elementwise steps, which one thread per batch keeps busy better than
    every thread on each: ~1.3× on 2 cores); on an accelerator one batch at a time."""
    return max(1, torch.get_num_threads()) if device.type == "cpu" else 1


def in_batches(count: int, batch_size: int, device: torch.device, work: Callable[[slice], None]) -> None:
    """Call ``work`` on consecutive slices of ``range(count)``, ``batch_size`` long; on a CPU ``workers_for``
    of them at once, each on one thread (the GIL is released inside operators); an exception is raised here."""
    parts = [slice(s, s + batch_size) for s in range(0, count, batch_size)]
    workers = min(workers_for(device), len(parts))
    if workers <= 1:
        for part in parts:
            work(part)
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread per batch, ``workers`` batches at once
    try:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(work, parts))  # list(): raise a batch's exception here
    finally:
        torch.set_num_threads(threads)


def min_margin_bounds(layers: Sequence[nn.Module], x: Tensor, y: Tensor, index: Tensor, eps: Tensor, method: str,
                      batch_size: int) -> Tensor:
    """(len(index),) the smallest margin lower bound of each sample ``x[index]`` over its own ball B(x, eps[i]),
    ``batch_size`` samples per pass. Each sample's bound depends on that sample alone (up to float rounding),
    so the batching and the order are not part of the result."""
    out = eps.new_empty(index.numel(), dtype=x.dtype)

    def bound(part: slice) -> None:
        rows = index[part]
        out[part] = margin_bounds(layers, x[rows], y[rows], eps[part], method).min(dim=1).values

    in_batches(index.numel(), batch_size, x.device, bound)
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


