"""The value an optimizing sweeper (``hydra/sweeper=optuna``) maximises, and the study in the sweep summary.

``objective`` in configs/train.yaml: the run's robust accuracy of ``objective.metric`` (one of its attacks,
or ``worst_case``) at ``objective.epsilon``, read from the run's robustness.csv (the finest level of a
hierarchical model). A run whose clean accuracy (metrics.json, whole test split) is below
``objective.min_clean_accuracy`` scores PENALTY. Under the basic sweeper (plain runs and ``-m`` grids),
which reads no return value, the objective is neither checked nor computed.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from isorobust.errors import ConfigError, IsorobustError

log = logging.getLogger(__name__)

# Below every accuracy (they lie in [0, 1]), so a run under the clean-accuracy floor ranks after every
# run above it, even one with 0 robust accuracy; finite, so that every sampler can model it (-inf is
# not accepted by all of them) and optimization_results.yaml stays a plain number.
PENALTY = -1.0
RESULTS = "optimization_results.yaml"  # written by the Optuna sweeper into the sweep directory
STUDY_FILE = "study.csv"


def optimizing_sweep() -> bool:
    """Whether this Hydra job runs under a sweeper that reads the task's return value (not the basic one)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return False
    hc = HydraConfig.get()
    target = str(hc.sweeper.get("_target_", ""))
    return hc.mode == RunMode.MULTIRUN and not target.endswith("BasicSweeper")


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _grid(cfg: Any, name: str) -> list[float]:
    own = cfg.attack[name].get("epsilons")
    return sorted(float(e) for e in (own if own else cfg.eval.epsilons))


def _direction() -> str | None:
    from hydra.core.hydra_config import HydraConfig

    direction = HydraConfig.get().sweeper.get("direction") if HydraConfig.initialized() else None
    if direction is None or isinstance(direction, str):
        return direction
    return getattr(direction, "name", str(direction))  # Optuna's Direction enum (or a list: multi-objective)


def check_objective(cfg: Any) -> None:
    """Before training, under an optimizing sweeper: the objective names a row the run will have."""
    node = cfg.get("objective")
    if node is None:
        raise ConfigError("an optimizing sweeper needs the objective node (objective.metric, objective.epsilon)")
    problems = []
    direction = _direction()
    if direction is not None and direction != "maximize":
        problems.append(f"hydra.sweeper.direction={direction}: the objective is a robust accuracy, to be "
                        "maximised (hydra.sweeper.direction=maximize)")
    metric, eps, floor = node.get("metric"), node.get("epsilon"), node.get("min_clean_accuracy")
    if floor is not None and (isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0 <= floor <= 1):
        problems.append(f"objective.min_clean_accuracy={floor!r} must be null or in [0, 1]")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps < 0:
        problems.append(f"objective.epsilon={eps!r} must be a number >= 0")
    else:
        attacks = list(cfg.attack or {})
        having = [a for a in attacks if any(_close(float(eps), e) for e in _grid(cfg, a))]
        if metric in attacks:
            if metric not in having:
                grid = ", ".join(f"{e:g}" for e in _grid(cfg, metric))
                problems.append(f"objective.epsilon={eps:g} is not in the ε grid of {metric} ({grid}): add it "
                                f"(e.g. eval.epsilons=[0.05,{eps:g},0.2,0.3]) or choose one of those")
        elif str(metric).startswith("worst_case"):
            if len(having) < 2:
                problems.append(f"objective.metric={metric} needs two attacks at ε={eps:g} (attacks there: "
                                f"{', '.join(having) or 'none'}): put ε={eps:g} in their grids (eval.epsilons) "
                                "and run attack=[fgsm,pgd] or more")
        else:
            problems.append(f"objective.metric={metric!r} is not a column of this run's table "
                            f"(choose from: {', '.join([*attacks, 'worst_case'])})")
    if problems:
        raise ConfigError("; ".join(problems))


def value_from(table: pd.DataFrame, clean_accuracy: float, metric: str, epsilon: float,
               min_clean_accuracy: float | None, where: Path) -> float:
    """The objective of one run's table (the finest level of a hierarchical model)."""
    if "level" in table.columns and table["level"].notna().any():
        table = table[table["level"] == table["level"].max()]
    rows = table[(table["attack"] == metric) & table["epsilon"].map(lambda e: _close(float(e), float(epsilon)))]
    if rows.empty:
        have = ", ".join(sorted(table["attack"].astype(str).unique()))
        raise IsorobustError(f"objective: {where} has no {metric} row at ε={epsilon:g} (its attacks: {have})")
    if min_clean_accuracy is not None and clean_accuracy < float(min_clean_accuracy):
        return PENALTY
    return float(rows["robust_accuracy"].iloc[0])


def run_objective(run_dir: Path, objective: Any | None = None) -> float:
    """A complete run's objective, from its files; ``objective`` defaults to the one in its metrics.json."""
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        table = pd.read_csv(run_dir / "robustness.csv")
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise IsorobustError(f"cannot read the results in {run_dir}: {str(exc).splitlines()[0]}") from None
    node = objective if objective is not None else (metrics.get("config") or {}).get("objective")
    if not node:
        raise IsorobustError(f"objective: {run_dir}/metrics.json records no objective")
    return value_from(table, float(metrics.get("clean_accuracy", float("nan"))), str(node["metric"]),
                      float(node["epsilon"]), node.get("min_clean_accuracy"), run_dir / "robustness.csv")


def job_objective(cfg: Any, run_dir: Path) -> float:
    """The task function's return value under an optimizing sweeper."""
    value = run_objective(run_dir, cfg.objective)
    log.info("objective: %s at ε=%g = %.4f", cfg.objective.metric, float(cfg.objective.epsilon), value)
    return value


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
    metrics = json.loads((root / str(frame.loc[best, "run"]) / "metrics.json").read_text())
    node = (metrics.get("config") or {}).get("objective") or {}
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
