"""Isometry measurements of trained representations: do within-class distances survive x -> Φ(x)?

For each class (and hidden layer), on held-out data, the input distances d_x and representation
distances d_z of all pairs of points of that class are compared:

- ``scale``: K̂, the best-fit factor in d_z ≈ d_x / K̂ (least squares through the origin,
  K̂ = Σ d_x² / Σ d_x·d_z), directly comparable with the regularizer's K;
- ``pearson``, ``spearman``: correlation of d_x and d_z (1 = distances kept up to scale / order);
- ``ratio_p05``, ``ratio_p95``: 5th and 95th percentile of the per-pair ratio d_z·K̂ / d_x, and
  ``distortion`` = their difference (0 for an exact scaled isometry).

``isometry_figures`` and ``measure_isometry`` are pure; ``isometry_report`` writes the files of a run.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

FIGURES = ("scale", "pearson", "spearman", "ratio_p05", "ratio_p95", "distortion")
ALL_CLASSES = "all"


def pair_distances(a: Tensor) -> Tensor:
    """Euclidean distances of all pairs i < j of the rows of ``a`` (flattened), in float64."""
    a = a.reshape(a.shape[0], -1).double()
    if a.shape[0] < 2:
        return a.new_zeros(0)
    return F.pdist(a)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum()) / denom if denom > 0 else math.nan


def _ranks(a: np.ndarray) -> np.ndarray:
    return pd.Series(a).rank(method="average").to_numpy()  # ties share their mean rank


def isometry_figures(dx: Tensor | np.ndarray, dz: Tensor | np.ndarray) -> dict[str, float]:
    """Scale, correlations and distortion of paired distances ``dx`` (input) and ``dz`` (representation).

    Pairs with ``dx == 0`` (duplicate inputs) take part in the fit and the correlations but not in
    the ratio. Figures that are undefined (fewer than two pairs, constant distances) are NaN.
    """
    dx = np.asarray(torch.as_tensor(dx, dtype=torch.float64).cpu()).ravel()
    dz = np.asarray(torch.as_tensor(dz, dtype=torch.float64).cpu()).ravel()
    if dx.shape != dz.shape:
        raise ValueError(f"dx and dz must pair up (got {dx.shape} and {dz.shape})")
    out = {"n_pairs": int(dx.size), **{k: math.nan for k in FIGURES}}
    if dx.size < 2:
        return out
    xz, xx = float((dx * dz).sum()), float((dx * dx).sum())
    out["scale"] = xx / xz if xz > 0 else math.inf
    out["pearson"] = _pearson(dx, dz)
    out["spearman"] = _pearson(_ranks(dx), _ranks(dz))
    moved = dx > 0
    if xz > 0 and moved.any():
        ratio = dz[moved] * out["scale"] / dx[moved]
        p05, p95 = np.percentile(ratio, [5, 95])
        out.update(ratio_p05=float(p05), ratio_p95=float(p95), distortion=float(p95 - p05))
    return out


def first_per_class(labels: Tensor, max_per_class: int | None) -> dict[int, Tensor]:
    """Indices of the first ``max_per_class`` samples of each label (all when None); deterministic."""
    groups = {}
    for c in torch.unique(labels).tolist():
        idx = (labels == c).nonzero().squeeze(1)
        groups[int(c)] = idx if max_per_class is None else idx[:max_per_class]
    return groups


@torch.no_grad()
def hidden_features(model: nn.Module, x: Tensor, batch_size: int = 1000) -> list[Tensor]:
    """Every hidden representation of ``model.forward_features`` for ``x``, computed in batches."""
    was_training = model.training
    model.eval()
    chunks = [model.forward_features(x[i : i + batch_size])[1] for i in range(0, x.shape[0], batch_size)]
    model.train(was_training)
    return [torch.cat(per_layer) for per_layer in zip(*chunks)]


def measure_isometry(
    model: nn.Module,
    x: Tensor,
    labels: Tensor,
    layers: Sequence[int] | None = None,
    max_per_class: int | None = 200,
    regions: Mapping[str, Tensor] | None = None,
) -> pd.DataFrame:
    """One row per (layer, [region,] class) plus a pooled ``class=all`` row per layer (and region).

    Args:
        model: anything with ``forward_features(x) -> (logits, [hidden representations])``.
        x, labels: held-out inputs and the labels whose classes define the pairs (within-class only).
        layers: indices into the hidden representations (negative counts from the end); None = all.
        max_per_class: the first N points of each class (and region) are measured, bounding the cost.
        regions: optional named boolean masks over ``x``; pairs are then taken within a region, and the
            table gains a ``region`` column (e.g. near / far from the class boundaries).
    """
    masks = {None: torch.ones_like(labels, dtype=torch.bool)} if regions is None else dict(regions)
    region_groups = {}
    for region, mask in masks.items():
        selected = mask.to(labels.device).nonzero().squeeze(1)
        region_groups[region] = {c: selected[i] for c, i in first_per_class(labels[selected], max_per_class).items()}
    # Only the measured points go through the model: the subsample bounds the whole cost.
    used = torch.unique(torch.cat([i for g in region_groups.values() for i in g.values()] + [labels.new_zeros(1)]))
    position = torch.full((labels.shape[0],), -1, dtype=torch.long, device=labels.device)
    position[used] = torch.arange(used.numel(), device=labels.device)
    features = hidden_features(model, x[used])
    n_layers = len(features)
    chosen = list(range(n_layers)) if layers is None else [int(l) for l in layers]
    for layer in chosen:
        if not -n_layers <= layer < n_layers:
            raise ValueError(f"layer {layer} out of range: the model has {n_layers} hidden layers")
    chosen = list(dict.fromkeys(l % n_layers for l in chosen))
    rows = []
    for region, groups in region_groups.items():
        dx = {c: pair_distances(x[idx]) for c, idx in groups.items()}
        for layer in chosen:
            dz = {c: pair_distances(features[layer][position[idx]]) for c, idx in groups.items()}
            where = {"layer": layer} if region is None else {"layer": layer, "region": region}
            for c, idx in groups.items():
                rows.append({**where, "class": str(c), "n_points": int(idx.numel()), **isometry_figures(dx[c], dz[c])})
            if groups:
                pooled = isometry_figures(torch.cat(list(dx.values())), torch.cat(list(dz.values())))
                rows.append({**where, "class": ALL_CLASSES, "n_points": int(sum(i.numel() for i in groups.values())),
                             **pooled})
    return pd.DataFrame(rows)


def summarise(table: pd.DataFrame) -> list[dict[str, Any]]:
    """The pooled (``class=all``) rows as plain dicts, for ``metrics.json``."""
    pooled = table[table["class"] == ALL_CLASSES].drop(columns=["class"])
    return [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
            for row in pooled.to_dict(orient="records")]


def run_isometry(model: nn.Module, test: Any, layers: Sequence[int] | None = None,
                 max_per_class: int | None = 200) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``isometry.csv``'s rows for ``model`` on ``test`` and the summary that goes into ``metrics.json``
    (``layers``: pooled rows per hidden layer; a hierarchical network: ``levels``, each level measured on
    its own block's output with its own groups)."""
    levels = getattr(model, "levels", None)
    if levels is None:
        table = measure_isometry(model, test.x, test.y, layers, max_per_class)
        return table, {"layers": summarise(table)}
    from isorobust.hierarchy import Hierarchy

    hierarchy = Hierarchy(levels, model.num_classes)
    per_level = []
    for level in range(hierarchy.depth):
        t = measure_isometry(model, test.x, hierarchy.level_labels(test.y, level),
                             [model.level_layer(level)], max_per_class)
        t.insert(0, "level", level)
        per_level.append(t)
    table = pd.concat(per_level, ignore_index=True)
    return table, {"levels": summarise(table)}


__all__ = ["FIGURES", "isometry_figures", "measure_isometry", "pair_distances", "run_isometry", "summarise"]
