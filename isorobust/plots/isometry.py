"""Figures of the isometry measurements: the near/far scatter and the torus' (u, v) map of the local
distortion (frames in, PNG bytes out; nothing here measures or writes files)."""
from __future__ import annotations

import io as _bytes_io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from isorobust.metrics.regions import typical_stretch

RATIO_LABEL = "K̂·d_z/d_x (1 = isometric)"


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


TICKS = ([0, math.pi / 2, math.pi, 3 * math.pi / 2, 2 * math.pi], ["0", "π/2", "π", "3π/2", "2π"])


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
