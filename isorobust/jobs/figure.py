"""``isorobust figure torus RUN_OR_SWEEP... --out FILE.png``: figures across runs, from their files.

``torus``: one layer of each torus run (default: the layer the run's isometric term acts on, else the
last) next to each other on one colour scale: the figure that compares β = 0 with β > 0.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from isorobust import io, rundir
from isorobust.errors import IsorobustError


def torus_runs(paths: Sequence[Path | str]) -> list[Path]:
    """Run directories holding ``isometry_torus.csv``: each path is one, or a folder (a sweep) whose
    runs are taken in the order of their β (then seed)."""
    runs: list[Path] = []
    for path in map(Path, paths):
        if (path / rundir.TORUS_CSV).is_file():
            runs.append(path)
            continue
        found = sorted(p.parent for p in path.glob(f"**/{rundir.TORUS_CSV}")) if path.is_dir() else []
        if not found:
            raise IsorobustError(f"{path} holds no finished torus run ({rundir.TORUS_CSV} not found)")

        def order(run: Path) -> tuple[float, int, str]:
            try:
                m = rundir.read_metrics(run)
                return float(m.reg_weight), int(m.seed), str(run)
            except IsorobustError:
                return math.inf, 0, str(run)

        runs.extend(sorted(found, key=order))
    return runs


def side_by_side(paths: Sequence[Path | str], out: Path | str, layer: int | None = None, limit: float = 4.0) -> Path:
    """One layer of each torus run next to each other, one colour scale (see the module's docstring)."""
    from isorobust.plots.isometry import map_figure, run_title

    if not limit > 1:
        raise IsorobustError(f"--limit must be > 1 (got {limit})")
    panels = []
    for run in torus_runs(paths):
        try:
            metrics = rundir.read_metrics(run)
        except IsorobustError:
            raise IsorobustError(f"{run} is not a finished run (no readable metrics.json)") from None
        table = rundir.read_table(run / rundir.TORUS_CSV)
        n_hidden = int(table["n_hidden"].iloc[0])
        wanted = layer if layer is not None else int(metrics.isometric_loss_layer if metrics.isometric_loss_layer
                                                     is not None else -1)
        if not -n_hidden <= wanted < n_hidden or (table["layer"] == wanted % n_hidden).sum() == 0:
            raise IsorobustError(f"{run}: layer {wanted} was not measured (layers: "
                                 f"{sorted(set(table['layer'].tolist()))})")
        regularized = "isometric" in str(metrics.reg)
        title = run_title(float(metrics.reg_weight), float(metrics.reg_scale), metrics.clean_accuracy, regularized)
        panels.append((table[table["layer"] == wanted % n_hidden], title))
    out = Path(out)
    io.atomic_write(out, lambda f: f.write(map_figure(panels, limit=limit)))
    return out
