"""Isometry near vs far from the class boundaries (data sets that know each point's boundary distance).

The claim under test: a network trained with the isometric term keeps within-class distances
everywhere except near the decision boundaries, where it must stretch space to separate classes.
Test points are split by their distance to the nearest class boundary into terciles: ``near`` (the
closest third) and ``far`` (the farthest third); pairs are taken within a class and within a region.
"""
from __future__ import annotations

import io as _bytes_io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from isorobust.data.dataset import Split
from isorobust.evaluation.isometry import ALL_CLASSES, hidden_features, measure_isometry, summarise

PLOT_NAME = "isometry_boundary.png"


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


def boundary_plot(distance: np.ndarray, ratios: dict[int, np.ndarray], thresholds: tuple[float, float]) -> bytes:
    """PNG: local distance ratio against distance to the nearest boundary, one panel per layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(ratios), figsize=(4 * len(ratios), 3.4), squeeze=False, sharey=True)
    for ax, (layer, ratio) in zip(axes[0], ratios.items()):
        ax.scatter(distance, ratio, s=4, alpha=0.5)
        ax.axhline(1.0, color="black", lw=0.8)
        for t in thresholds:
            ax.axvline(t, color="grey", lw=0.8, ls="--")
        ax.set_yscale("log")
        ax.set_title(f"hidden layer {layer}")
        ax.set_xlabel("distance to nearest class boundary")
    axes[0][0].set_ylabel("local d_z·K̂ / d_x (8 nearest same-class)")
    fig.suptitle("isometry near (left of first line) vs far (right of second line) from the boundaries")
    fig.tight_layout()
    buffer = _bytes_io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def boundary_report(
    model: nn.Module,
    test: Split,
    distance: Tensor,
    layers: Sequence[int] | None,
    max_per_class: int | None,
    run_dir: Path,
) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Near/far table (rows with a ``region`` column), its pooled figures, and ``isometry_boundary.png``."""
    from isorobust import io

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
    d = distance[idx].cpu().numpy()
    thresholds = (float(distance[regions["near"]].max()), float(distance[regions["far"]].min()))
    io.atomic_write(run_dir / PLOT_NAME, lambda f: f.write(boundary_plot(d, ratios, thresholds)))
    return table, summarise(table)


__all__ = ["boundary_regions", "boundary_report", "local_ratios", "PLOT_NAME"]
