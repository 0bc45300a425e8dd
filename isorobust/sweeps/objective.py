"""The value an optimizing sweeper (``hydra/sweeper=optuna_maximize``) maximises: checked before training, returned after.

``objective`` in configs/train.yaml: the run's robust accuracy of ``objective.metric`` (one of its attacks,
or ``worst_case``) at ``objective.epsilon``, read from the run's robustness.csv (the finest level of a
hierarchical model). A run whose clean accuracy (metrics.json, whole test split) is below
``objective.min_clean_accuracy`` scores PENALTY. Under the basic sweeper (plain runs and ``-m`` grids),
which reads no return value, the objective is neither checked nor computed.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from isorobust.errors import ConfigError
from isorobust.reports.objective import run_objective

log = logging.getLogger(__name__)

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
                        "maximised (use hydra/sweeper=optuna_maximize, or hydra.sweeper.direction=maximize)")
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


def job_objective(cfg: Any, run_dir: Path) -> float:
    """The task function's return value under an optimizing sweeper."""
    value = run_objective(run_dir, cfg.objective)
    log.info("objective: %s at ε=%g = %.4f", cfg.objective.metric, float(cfg.objective.epsilon), value)
    return value
