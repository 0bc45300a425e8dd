"""Isometry near vs far from the class boundaries (data sets that know each point's boundary distance).

The claim under test: a network trained with the isometric term keeps within-class distances
everywhere except near the decision boundaries, where it must stretch space to separate classes.
Test points are split by their distance to the nearest class boundary into terciles: ``near`` (the
closest third) and ``far`` (the farthest third); pairs are taken within a class and within a region.

On the torus the test points also know their (u, v) angles: ``isometry_map_table`` gives every test
point's local distortion K̂·d_z/d_x (1 = isometric), which ``plots.isometry.map_figure`` draws in the
angle square with the class boundaries on top (``isometry_torus.png`` and ``.csv`` of a torus run;
``isorobust figure torus`` puts several runs side by side).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from isorobust.data.dataset import Split
from isorobust.metrics.isometry import (
    ALL_CLASSES, first_per_class, hidden_features, measure_isometry, pair_distances, summarise,
)



def boundary_regions(distance: Tensor) -> dict[str, Tensor]:
    """``near``: the closest third of the points to a boundary, ``far``: the farthest third."""
    finite = torch.where(torch.isfinite(distance), distance, distance[torch.isfinite(distance)].max())
    low, high = torch.quantile(finite.double(), torch.tensor([1 / 3, 2 / 3], dtype=torch.float64)).tolist()
    return {"near": finite <= low, "far": finite >= high}


@torch.no_grad()
def local_ratios(x: Tensor, z: Tensor, labels: Tensor, scale: float, neighbours: int = 8) -> Tensor:
    """Per point: the median of d_z·K̂/d_x over its ``neighbours`` nearest same-class points in input
    space (1 = locally an isometry at scale K̂). NaN for a point without same-class neighbours."""
    x, z = x.reshape(x.shape[0], -1).double(), z.reshape(z.shape[0], -1).double()
    dx, dz = torch.cdist(x, x), torch.cdist(z, z)
    other_class = labels[:, None] != labels[None, :]
    dx = dx.masked_fill(other_class | torch.eye(x.shape[0], dtype=torch.bool, device=x.device), math.inf)
    dx = dx.masked_fill(dx == 0, math.inf)  # duplicates say nothing about local stretch
    k = min(neighbours, x.shape[0] - 1)
    near_dx, idx = dx.topk(k, dim=1, largest=False)
    ratio = dz.gather(1, idx) * scale / near_dx
    ratio = ratio.masked_fill(~torch.isfinite(near_dx), math.nan)
    return ratio.nanmedian(dim=1).values


def near_far(model: nn.Module, test: Split, distance: Tensor, layers: Sequence[int] | None,
             max_per_class: int | None) -> tuple[pd.DataFrame, list[dict[str, Any]], dict[str, Any]]:
    """Near/far rows of the isometry table (a ``region`` column), their pooled figures, and what the
    near/far plot (``plots.isometry.boundary_plot``) draws: each plotted point's distance to the boundary,
    its local ratios per layer and the two tercile thresholds."""
    regions = boundary_regions(distance)
    table = measure_isometry(model, test.x, test.y, layers, max_per_class, regions=regions)
    # The plot: up to max_per_class points per class, their local ratios at each measured layer.
    n_per_class = max_per_class if max_per_class is not None else len(test)
    idx = torch.cat([(test.y == c).nonzero().squeeze(1)[:n_per_class] for c in torch.unique(test.y)])
    features = hidden_features(model, test.x[idx])
    # One K̂ per layer for the whole plot: the fit over all within-class pairs of the plotted points.
    overall = measure_isometry(model, test.x[idx], test.y[idx], layers, None)
    scales = overall[overall["class"] == ALL_CLASSES].set_index("layer")["scale"]
    ratios = {
        int(layer): local_ratios(test.x[idx], features[layer], test.y[idx], float(scale)).cpu().numpy()
        for layer, scale in scales.items()
    }
    plot = {"distance": distance[idx].cpu().numpy(), "ratios": ratios,
            "thresholds": (float(distance[regions["near"]].max()), float(distance[regions["far"]].min()))}
    return table, summarise(table), plot


def within_class_scale(x: Tensor, z: Tensor, labels: Tensor, max_per_class: int = 2000) -> float:
    """K̂ = Σ d_x² / Σ d_x·d_z over the within-class pairs (the first ``max_per_class`` points of each
    class), as ``isometry.csv``'s ``scale``: the one factor that makes d_z·K̂ ≈ d_x on the whole."""
    xx = xz = 0.0
    for idx in first_per_class(labels, max_per_class).values():
        dx, dz = pair_distances(x[idx]), pair_distances(z[idx])
        xx += float((dx * dx).sum())
        xz += float((dx * dz).sum())
    return xx / xz if xz > 0 else math.inf


@torch.no_grad()
def local_ratios_by_class(x: Tensor, z: Tensor, labels: Tensor, scale: float, neighbours: int = 8,
                          chunk: int = 2048) -> Tensor:
    """``local_ratios`` class by class and in row chunks: the same numbers, memory ~ chunk × class size
    instead of N² (the map uses every test point)."""
    x, z = x.reshape(x.shape[0], -1).double(), z.reshape(z.shape[0], -1).double()
    out = torch.full((x.shape[0],), math.nan, dtype=torch.float64, device=x.device)
    for idx in first_per_class(labels, None).values():
        k = min(neighbours, idx.numel() - 1)
        if k < 1:
            continue
        xc, zc = x[idx], z[idx]
        for start in range(0, idx.numel(), chunk):
            rows = torch.arange(start, min(start + chunk, idx.numel()), device=x.device)
            dx = torch.cdist(xc[rows], xc)
            dx[torch.arange(rows.numel(), device=x.device), rows] = math.inf  # not its own neighbour
            dx = dx.masked_fill(dx == 0, math.inf)  # duplicates say nothing about local stretch
            near_dx, j = dx.topk(k, dim=1, largest=False)
            dz = (zc[rows].unsqueeze(1) - zc[j]).norm(dim=2)
            ratio = (dz * scale / near_dx).masked_fill(~torch.isfinite(near_dx), math.nan)
            out[idx[rows]] = ratio.nanmedian(dim=1).values
    return out


def isometry_map_table(model: nn.Module, test: Split, angles: Tensor, distance: Tensor,
                       layers: Sequence[int] | None, neighbours: int = 8) -> pd.DataFrame:
    """One row per (layer, test point): its angles, class, distance to the nearest class boundary, the
    layer's K̂ and the point's local ratio K̂·d_z/d_x over its ``neighbours`` nearest same-class points."""
    features = hidden_features(model, test.x)
    n_hidden = len(features)
    chosen = list(range(n_hidden)) if layers is None else list(dict.fromkeys(int(l) % n_hidden for l in layers))
    base = {
        "u": angles[:, 0].cpu().numpy(), "v": angles[:, 1].cpu().numpy(),
        "label": test.y.cpu().numpy(), "boundary_distance": distance.cpu().numpy(),
    }
    frames = []
    for layer in chosen:
        scale = within_class_scale(test.x, features[layer], test.y)
        ratio = local_ratios_by_class(test.x, features[layer], test.y, scale, neighbours)
        frames.append(pd.DataFrame({"layer": layer, "n_hidden": n_hidden, **base, "scale": scale,
                                    "ratio": ratio.cpu().numpy()}))
    return pd.concat(frames, ignore_index=True)


def typical_stretch(table: pd.DataFrame) -> dict[str, float]:
    """exp(median |ln ratio|) of the points near (closest third) and far (farthest third) from a class
    boundary: ×1.00 = isometric, ×2 = distances typically doubled or halved."""
    regions = boundary_regions(torch.tensor(table["boundary_distance"].to_numpy(dtype=float)))
    log_ratio = np.abs(np.log(table["ratio"].to_numpy()))
    return {name: float(np.exp(np.nanmedian(log_ratio[mask.numpy()]))) for name, mask in regions.items()}
