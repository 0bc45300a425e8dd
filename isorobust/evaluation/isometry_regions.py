"""Isometry near vs far from the class boundaries (data sets that know each point's boundary distance).

The claim under test: a network trained with the isometric term keeps within-class distances
everywhere except near the decision boundaries, where it must stretch space to separate classes.
Test points are split by their distance to the nearest class boundary into terciles: ``near`` (the
closest third) and ``far`` (the farthest third); pairs are taken within a class and within a region.

On the torus the test points also know their (u, v) angles: ``isometry_map_report`` draws every test
point in the angle square, coloured by its local distortion K̂·d_z/d_x (log scale, 1 = isometric),
with the class boundaries on top (``isometry_torus.png``, the numbers in ``isometry_torus.csv``), and
``side_by_side`` puts one layer of several runs next to each other (β = 0 beside β > 0):

    python -m isorobust.evaluation.isometry_regions SWEEP_DIR_OR_RUNS... --out torus_isometry.png
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
from isorobust.evaluation.isometry import (
    ALL_CLASSES, first_per_class, hidden_features, measure_isometry, pair_distances, summarise,
)

PLOT_NAME = "isometry_boundary.png"
MAP_NAME = "isometry_torus.png"
MAP_TABLE = "isometry_torus.csv"
RATIO_LABEL = "K̂·d_z/d_x (1 = isometric)"


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


def region_extras(data: Any) -> dict[str, Any]:
    """``isometry_report``'s extras for ``data``: the near/far rows where the test points know their
    distance to a class boundary (the torus), nothing otherwise."""
    distance = getattr(data, "test_boundary_distance", None)
    if distance is None:
        return {}

    def near_far(model: nn.Module, data: Any, run_dir: Path, layers: Sequence[int] | None,
                 max_per_class: int | None) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
        return boundary_report(model, data.test, distance, layers, max_per_class, run_dir)

    return {"near_far": near_far}


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


# --- The torus' (u, v) map of the local distortion ------------------------------------------------

TICKS = ([0, math.pi / 2, math.pi, 3 * math.pi / 2, 2 * math.pi], ["0", "π/2", "π", "3π/2", "2π"])


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


def run_title(weight: float, scale: float, accuracy: float | None, regularized: bool = True) -> str:
    """'β = 1, K = 1 · clean accuracy 99.8 %' (β = 0 says so without K)."""
    head = f"β = {weight:g}, K = {scale:g}" if regularized and weight > 0 else "β = 0 (no isometric term)"
    return head if accuracy is None else f"{head} · clean accuracy {100 * accuracy:.1f} %"


def _grid(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Cell index of each angle on the regular test grid, and the number of cells around the circle."""
    distinct = np.unique(np.round(values, 5))
    step = float(np.diff(distinct).min()) if distinct.size > 1 else 2 * math.pi
    n = max(1, int(round(2 * math.pi / step)))
    return np.clip(np.floor(values / (2 * math.pi / n)).astype(int), 0, n - 1), n


def _on_grid(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, float, float]:
    """The layer's ratios and labels as (n_u, n_v) arrays (NaN / -1 where the test set has no point)."""
    iu, n_u = _grid(table["u"].to_numpy())
    iv, n_v = _grid(table["v"].to_numpy())
    ratio = np.full((n_u, n_v), np.nan)
    label = np.full((n_u, n_v), -1)
    ratio[iu, iv] = table["ratio"].to_numpy()
    label[iu, iv] = table["label"].to_numpy()
    return ratio, label, 2 * math.pi / n_u, 2 * math.pi / n_v


def boundary_segments(label: np.ndarray, su: float, sv: float) -> list[list[tuple[float, float]]]:
    """Line segments between neighbouring grid cells of different classes (the torus wraps around:
    a change between the last and the first cell is drawn at both 0 and 2π)."""
    segments = []
    for axis in (0, 1):
        other = np.roll(label, -1, axis=axis)
        for i, j in zip(*np.nonzero((label != other) & (label >= 0) & (other >= 0))):
            if axis == 0:  # between u-cells i and i+1: a line u = const
                for u in ((i + 1) * su,) + ((0.0,) if i + 1 == label.shape[0] else ()):
                    segments.append([(u, j * sv), (u, (j + 1) * sv)])
            else:
                for v in ((j + 1) * sv,) + ((0.0,) if j + 1 == label.shape[1] else ()):
                    segments.append([(i * su, v), ((i + 1) * su, v)])
    return segments


def typical_stretch(table: pd.DataFrame) -> dict[str, float]:
    """exp(median |ln ratio|) of the points near (closest third) and far (farthest third) from a class
    boundary: ×1.00 = isometric, ×2 = distances typically doubled or halved."""
    regions = boundary_regions(torch.tensor(table["boundary_distance"].to_numpy(dtype=float)))
    log_ratio = np.abs(np.log(table["ratio"].to_numpy()))
    return {name: float(np.exp(np.nanmedian(log_ratio[mask.numpy()]))) for name, mask in regions.items()}


def draw_map(ax: Any, table: pd.DataFrame, norm: Any, cmap: Any, title: str) -> Any:
    """One panel: the layer's local ratios on the (u, v) square, class boundaries in black."""
    from matplotlib.collections import LineCollection

    ratio, label, su, sv = _on_grid(table)
    mesh = ax.pcolormesh(np.arange(ratio.shape[0] + 1) * su, np.arange(ratio.shape[1] + 1) * sv,
                         np.ma.masked_invalid(ratio.T), norm=norm, cmap=cmap, shading="flat", rasterized=True)
    ax.add_collection(LineCollection(boundary_segments(label, su, sv), colors="black", linewidths=1.6))
    ax.set_xlim(0, 2 * math.pi)
    ax.set_ylim(0, 2 * math.pi)
    ax.set_aspect("equal")
    ax.set_xticks(*TICKS)
    ax.set_yticks(*TICKS)
    ax.set_xlabel("u: angle along the big circle")
    ax.set_ylabel("v: angle around the tube")
    stretch = typical_stretch(table)
    layer = int(table["layer"].iloc[0])
    which = " (last hidden)" if layer == int(table["n_hidden"].iloc[0]) - 1 else ""
    lines = [title] if title else []
    lines += [f"hidden layer {layer}{which}, K̂ = {float(table['scale'].iloc[0]):.2g}",
              f"typical distortion: far from boundaries ×{stretch['far']:.2f}, near ×{stretch['near']:.2f}"]
    ax.set_title("\n".join(lines), fontsize=10)
    return mesh


def map_figure(panels: Sequence[tuple[pd.DataFrame, str]], suptitle: str | None = None, limit: float = 4.0) -> bytes:
    """PNG: one (u, v) panel per (table of one layer, title), one shared colour bar (log scale,
    1/limit … limit, white = isometric, red = stretched, blue = contracted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="#d9d9d9")  # grey: no test point in that cell
    norm = LogNorm(vmin=1 / limit, vmax=limit)
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n + 1.2, 5.6), squeeze=False, layout="constrained")
    mesh = None
    for ax, (table, title) in zip(axes[0], panels):
        mesh = draw_map(ax, table, norm, cmap, title)
    ticks = [t for t in (1 / 8, 1 / 4, 1 / 2, 1, 2, 4, 8) if 1 / limit <= t <= limit]
    bar = fig.colorbar(mesh, ax=axes[0].tolist(), extend="both", ticks=ticks, shrink=0.85)
    bar.ax.minorticks_off()
    bar.ax.set_yticklabels([f"{t:g}" if t >= 1 else f"1/{1 / t:g}" for t in ticks])
    bar.set_label(RATIO_LABEL + "\nlocal: 8 nearest same-class test points")
    fig.suptitle(suptitle or "Local distortion of the hidden representation on the torus' (u, v) square\n"
                 "white: isometric, red: stretched, blue: contracted; black lines: class boundaries", fontsize=11.5)
    fig.supxlabel("typical distortion = exp(median |ln K̂·d_z/d_x|) over the third of the test points closest to (near)"
                  " / farthest from (far)\na class boundary; K̂: the least-squares scale of all within-class pairs "
                  "of the layer (as isometry.csv's scale)", fontsize=8.5)
    buffer = _bytes_io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def isometry_map_report(model: nn.Module, data: Any, run_dir: Path, layers: Sequence[int] | None,
                        title: str) -> pd.DataFrame:
    """``isometry_torus.csv`` and ``isometry_torus.png`` (one panel per measured layer) of a torus run."""
    from isorobust import io

    table = isometry_map_table(model, data.test, data.test_angles, data.test_boundary_distance, layers)
    io.write_csv(run_dir / MAP_TABLE, table)
    panels = [(t, "") for _, t in table.groupby("layer", sort=True)]
    png = map_figure(panels, suptitle=f"{title}\nlocal distortion of each hidden layer on the torus' (u, v) square "
                                      "(white: isometric); black lines: class boundaries")
    io.atomic_write(run_dir / MAP_NAME, lambda f: f.write(png))
    return table


# --- Several runs side by side ----------------------------------------------------------------------


def torus_runs(paths: Sequence[Path | str]) -> list[Path]:
    """Run directories holding ``isometry_torus.csv``: each path is one, or a folder (a sweep) whose
    runs are taken in the order of their β (then seed)."""
    import json

    from isorobust.errors import IsorobustError

    runs: list[Path] = []
    for path in map(Path, paths):
        if (path / MAP_TABLE).is_file():
            runs.append(path)
            continue
        found = sorted(p.parent for p in path.glob(f"**/{MAP_TABLE}")) if path.is_dir() else []
        if not found:
            raise IsorobustError(f"{path} holds no finished torus run ({MAP_TABLE} not found)")

        def order(run: Path) -> tuple[float, int, str]:
            try:
                m = json.loads((run / "metrics.json").read_text())
                return float(m.get("reg_weight", 0.0)), int(m.get("seed", 0)), str(run)
            except (OSError, ValueError):
                return math.inf, 0, str(run)

        runs.extend(sorted(found, key=order))
    return runs


def side_by_side(paths: Sequence[Path | str], out: Path | str, layer: int | None = None, limit: float = 4.0) -> Path:
    """One layer of each torus run (default: the layer the run's isometric term acts on, else the last)
    next to each other, one colour scale: the figure that compares β = 0 with β > 0."""
    import json

    from isorobust import io
    from isorobust.errors import IsorobustError

    panels = []
    for run in torus_runs(paths):
        try:
            metrics = json.loads((run / "metrics.json").read_text())
        except (OSError, ValueError):
            raise IsorobustError(f"{run} is not a finished run (no readable metrics.json)") from None
        table = pd.read_csv(run / MAP_TABLE)
        n_hidden = int(table["n_hidden"].iloc[0])
        wanted = layer if layer is not None else int(metrics.get("isometric_loss_layer", -1))
        if not -n_hidden <= wanted < n_hidden or (table["layer"] == wanted % n_hidden).sum() == 0:
            raise IsorobustError(f"{run}: layer {wanted} was not measured (layers: "
                                 f"{sorted(set(table['layer'].tolist()))})")
        regularized = "isometric" in str(metrics.get("reg", "none"))
        title = run_title(float(metrics.get("reg_weight", 0.0)), float(metrics.get("reg_scale", 0.0)),
                          metrics.get("clean_accuracy"), regularized)
        panels.append((table[table["layer"] == wanted % n_hidden], title))
    out = Path(out)
    io.atomic_write(out, lambda f: f.write(map_figure(panels, limit=limit)))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    from isorobust.cli import fail
    from isorobust.errors import IsorobustError

    parser = argparse.ArgumentParser(
        prog="python -m isorobust.evaluation.isometry_regions",
        description="Put torus runs side by side: each run's local distortion K̂·d_z/d_x on the (u, v) "
                    "square, class boundaries on top, one colour scale (e.g. β = 0 beside β > 0).",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN", help="a torus run directory, or a sweep directory "
                        "(its runs in the order of β)")
    parser.add_argument("--out", required=True, type=Path, metavar="FILE.png")
    parser.add_argument("--layer", type=int, default=None,
                        help="hidden layer (default: the one the isometric term acts on, -1 = the last)")
    parser.add_argument("--limit", type=float, default=4.0, help="colour scale from 1/LIMIT to LIMIT (default 4)")
    parser.error = fail  # type: ignore[method-assign]  # one line, like every other error
    options = parser.parse_args(argv)
    if not options.limit > 1:
        fail(f"--limit must be > 1 (got {options.limit})")
    try:
        out = side_by_side(options.runs, options.out, options.layer, options.limit)
    except IsorobustError as exc:
        fail(str(exc))
    print(f"wrote {out}", flush=True)


__all__ = [
    "boundary_regions", "boundary_report", "region_extras", "local_ratios", "local_ratios_by_class", "isometry_map_report",
    "isometry_map_table", "map_figure", "side_by_side", "torus_runs", "within_class_scale",
    "MAP_NAME", "MAP_TABLE", "PLOT_NAME",
]


if __name__ == "__main__":
    main()
