"""The objective of an optimizing sweep, read from a finished run's files, and the Optuna study in a sweep summary.

``objective`` in configs/train.yaml: the run's robust accuracy of ``objective.metric`` (one of its attacks,
or ``worst_case``) at ``objective.epsilon``, read from the run's robustness.csv (the finest level of a
hierarchical model). A run whose clean accuracy (metrics.json, whole test split) is below
``objective.min_clean_accuracy`` scores PENALTY.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from isorobust import rundir
from isorobust.errors import IsorobustError

log = logging.getLogger(__name__)

# Below every accuracy (they lie in [0, 1]), so a run under the clean-accuracy floor ranks after every
# run above it, even one with 0 robust accuracy; finite, so that every sampler can model it (-inf is
# not accepted by all of them) and optimization_results.yaml stays a plain number.
PENALTY = -1.0
RESULTS = "optimization_results.yaml"  # written by the Optuna sweeper into the sweep directory
STUDY_FILE = "study.csv"


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def value_from(table: pd.DataFrame, clean_accuracy: float, metric: str, epsilon: float,
               min_clean_accuracy: float | None, where: Path) -> float:
    """The objective of one run's table (the finest level of a hierarchical model)."""
    table = rundir.finest_level(table)
    rows = table[(table["attack"] == metric) & table["epsilon"].map(lambda e: _close(float(e), float(epsilon)))]
    if rows.empty:
        have = ", ".join(sorted(table["attack"].astype(str).unique()))
        raise IsorobustError(f"objective: {where} has no {metric} row at ε={epsilon:g} (its attacks: {have})")
    if min_clean_accuracy is not None and clean_accuracy < float(min_clean_accuracy):
        return PENALTY
    return float(rows["robust_accuracy"].iloc[0])


def run_objective(run_dir: Path, objective: Any | None = None) -> float:
    """A complete run's objective, from its files; ``objective`` defaults to the one in its metrics.json."""
    metrics = rundir.read_metrics(run_dir)
    table = rundir.read_robustness(run_dir)
    node = objective if objective is not None else (metrics.config or {}).get("objective")
    if not node:
        raise IsorobustError(f"objective: {run_dir}/{rundir.METRICS} records no objective")
    clean = metrics.clean_accuracy if metrics.clean_accuracy is not None else float("nan")
    return value_from(table, float(clean), str(node["metric"]), float(node["epsilon"]),
                      node.get("min_clean_accuracy"), run_dir / rundir.ROBUSTNESS_CSV)


@dataclass
class Study:
    markdown: str
    frame: pd.DataFrame


def study_report(root: Path, summary: pd.DataFrame) -> Study | None:
    """An Optuna sweep's trials (every complete run below ``root``, its searched parameters and
    objective) and its best trial, for summary.md and study.csv; None where ``root`` holds no study."""
    results_path = root / RESULTS
    if not results_path.is_file():
        return None
    try:
        results = yaml.safe_load(results_path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise IsorobustError(f"cannot read {results_path}: {str(exc).splitlines()[0]}") from None
    params = list((results.get("best_params") or {}).keys())
    rows = []
    for run in summary["run"].drop_duplicates():
        first = summary[summary["run"] == run].iloc[0]
        row: dict[str, Any] = {"run": run}
        for p in params:
            row[p] = first.get(f"override.{p}")
        row["clean_accuracy"] = first.get("test_clean_accuracy")
        try:
            row["objective"] = run_objective(root / run)
        except IsorobustError as exc:  # a run copied in from elsewhere: listed, not ranked
            log.warning("study: %s", exc)
            row["objective"] = float("nan")
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty or frame["objective"].isna().all():
        return None
    best = int(frame["objective"].idxmax())  # the first of equal values, like Optuna's best trial
    frame["best"] = frame.index == best
    metrics = rundir.read_metrics(root / str(frame.loc[best, "run"]))
    node = (metrics.config or {}).get("objective") or {}
    floor = node.get("min_clean_accuracy")
    what = (f"robust accuracy of {node.get('metric')} at ε = {node.get('epsilon')}, maximised"
            + (f"; a run below {float(floor):.1%} clean accuracy scores {PENALTY:g}" if floor is not None else ""))
    lines = [
        "", "## Optuna study", "",
        f"Objective: {what}. {len(frame)} trials; best: run `{frame.loc[best, 'run']}` ("
        + ", ".join(f"{p}={frame.loc[best, p]}" for p in params)
        + f"), objective {frame.loc[best, 'objective']:.4f} (Optuna's {RESULTS}: best_value "
        f"{results.get('best_value')}). All trials, in the order they ran (also in {STUDY_FILE}):", "",
        "| run | " + " | ".join(params) + " | clean acc. (%) | objective |",
        "|---:|" + "---:|" * len(params) + "---:|---:|",
    ]
    for _, r in frame.iterrows():
        mark = " **best**" if r["best"] else ""
        cells = [str(r[p]) for p in params]
        lines.append(f"| {r['run']}{mark} | " + " | ".join(cells)
                     + f" | {100 * float(r['clean_accuracy']):.2f} | {r['objective']:.4f} |")
    return Study("\n".join(lines) + "\n", frame)
