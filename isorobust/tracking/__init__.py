"""Experiment trackers, ``logger=mlflow`` and ``logger=tensorboard`` (configs/logger/): mirrors of run directories.

The run directory stays the source of truth. A tracker is built, and its store opened, before training,
so a missing package or an unusable store stops the run there with one line (exit status 2). A run is
logged only after all its files are written, and what is logged is read back from those files. A tracker
failure at that point costs nothing the run produced: one warning line on stderr, exit status 0, and the
same command with ``resume=true`` logs the run later (MLflow skips a run directory it already holds).
"""
from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from isorobust import rundir
from isorobust.config import flatten, result_neutral
from isorobust.errors import IsorobustError, find_user_error

log = logging.getLogger(__name__)

# What a run's tracker record carries besides the scalars (those that exist; model.pt is left out: up
# to 75 MB per run, and the run directory keeps it).
RUN_ARTIFACTS = rundir.ARTIFACTS
# ... and a sweep's (the SweepSummary callback's files, and the Optuna sweeper's own result).
SWEEP_ARTIFACTS = ("robustness.png", "robustness.pdf", "summary.md", "summary.csv", "isometry_summary.csv",
                   "study.csv", "optimization_results.yaml")



class TrackerError(IsorobustError):
    """A tracker that cannot be used: its package is missing, or its store does not answer."""


def install_command(extra: str) -> str:
    """How to install isorobust's optional ``extra``: its own requirements, as the installed metadata lists
    them. Not `pip install -e '.[mlflow]'`: that resolves isorobust's dependencies again, and torchattacks'
    pin of requests (~=2.25.1) sent pip's resolver through old MLflow releases for over 50 minutes (Makefile)."""
    from importlib.metadata import PackageNotFoundError, requires

    try:
        declared = requires("isorobust") or []
    except PackageNotFoundError:
        declared = []
    wanted = [r.split(";", 1)[0].strip() for r in declared
              if ";" in r and f'extra == "{extra}"' in r.split(";", 1)[1].replace("'", '"')]
    if not wanted:
        return f"pip install -e '.[{extra}]'"
    return "pip install " + " ".join(f"'{r}'" for r in wanted) + f" (the extra isorobust[{extra}])"


def missing_package(label: str, package: str, extra: str) -> TrackerError:
    return TrackerError(f"{label} needs the {package} package, which is not installed: {install_command(extra)}")


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The reason of an exception in one line; for a database error, the database's own words."""
    # SQLAlchemy wraps the DB-API error (sqlite3: "database is locked") in .orig, and MLflow wraps that
    # in an MlflowException raised from it: the database's words are down that chain.
    orig, seen, link = None, set(), exc
    while link is not None and orig is None and id(link) not in seen:
        seen.add(id(link))
        orig = getattr(link, "orig", None) if isinstance(getattr(link, "orig", None), BaseException) else None
        link = link.__cause__ or link.__context__
    if orig is not None:
        exc = orig
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    if orig is not None:
        text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class RunInfo:
    """How a tracker names what it logs, from Hydra: a ``-m`` sweep's jobs share its experiment."""
    experiment: str | None  # the sweep directory for the jobs of a -m sweep; None for a single run
    name: str               # the job's overrides in a sweep, the run directory otherwise


class Tracker(Protocol):
    label: str

    def open(self, info: RunInfo) -> None:
        """Before any work: raise TrackerError if the store cannot be used."""

    def log_run(self, run_dir: Path, info: RunInfo) -> None:
        """Log a finished run from its files."""

    def log_sweep(self, sweep_dir: Path, info: RunInfo) -> None:
        """Log a finished sweep's summary files (after the SweepSummary callback wrote them)."""


def override_key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def tracking_key(override: str) -> bool:
    """Overrides that do not change results (config.RESULT_NEUTRAL) are left out of run names."""
    return result_neutral(override_key(override))


def swept_keys(sweep_dir: Path) -> set[str] | None:
    """The keys a ``-m`` sweep varies (``reg.weight=0,0.1,1``), from the multirun.yaml that Hydra's basic
    sweeper writes before its first job; None where there is none (the Optuna sweeper writes none, and
    puts the parameters it searches first in each trial's overrides)."""
    import yaml
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        task = yaml.safe_load((sweep_dir / "multirun.yaml").read_text())["hydra"]["overrides"]["task"]
        return {o.key_or_group for o in OverridesParser.create().parse_overrides(task) if o.is_sweep_override()}
    except Exception:  # no such file, or not Hydra's: the run is named by all its overrides
        return None


def job_info() -> RunInfo:
    """The RunInfo of the Hydra job running now: a sweep's job is named by its number and the overrides
    its sweep varies (``3: reg.weight=0.1 seed=1``), a single run by its directory."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return RunInfo(None, "isorobust run")
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return RunInfo(None, str(hc.run.dir))
    overrides = [o for o in hc.overrides.task if not tracking_key(o)]
    swept = swept_keys(Path(str(hc.sweep.dir)))
    shown = [o for o in overrides if override_key(o) in swept] if swept else overrides
    return RunInfo(str(hc.sweep.dir), f"{hc.job.num}: {' '.join(shown)}" if shown else str(hc.job.num))


def build_tracker(logger_cfg: Any) -> Tracker | None:
    """The tracker of a ``logger`` node (None without one); importing its package is the first check."""
    if logger_cfg is None:
        return None
    from hydra.utils import instantiate

    try:
        return instantiate(logger_cfg)
    except Exception as exc:  # hydra wraps what the constructor raises
        raise (find_user_error(exc) or TrackerError(f"logger: {first_line(exc)}")) from None


def open_tracker(cfg: Any) -> Tracker | None:
    """Before training: the run's tracker, its store checked (TrackerError: one line, exit status 2)."""
    tracker = build_tracker(cfg.get("logger"))
    if tracker is not None:
        tracker.open(job_info())
    return tracker


def warn(message: str) -> None:
    print(f"isorobust: warning: {message}", file=sys.stderr, flush=True)


def log_finished_run(tracker: Tracker | None, run_dir: Path) -> None:
    """Log a run whose files are all written; a failure is one warning line, never an error."""
    if tracker is None:
        return
    try:
        tracker.log_run(run_dir, job_info())
    except Exception as exc:
        warn(f"{tracker.label}: run not logged ({first_line(exc)}); its files in {run_dir} are complete, "
             "and the same command with resume=true logs it")


def prepare_sweep(config: Any) -> None:
    """At the start of ``-m``: check the store once (and create the sweep's experiment) before any job."""
    tracker = build_tracker(config.get("logger"))
    if tracker is not None:
        tracker.open(RunInfo(str(config.hydra.sweep.dir), "sweep summary"))


def log_finished_sweep(config: Any, sweep_dir: Path) -> None:
    """At the end of ``-m``, after the summary files are written; a failure is one warning line."""
    if config.get("logger") is None:
        return
    tracker = None
    try:
        tracker = build_tracker(config.logger)
        tracker.log_sweep(sweep_dir, RunInfo(str(config.hydra.sweep.dir), "sweep summary"))
    except Exception as exc:
        label = getattr(tracker, "label", "logger")
        warn(f"{label}: sweep summary not logged ({first_line(exc)}); its files are in {sweep_dir}")


# --- what both trackers log, read from a run directory ---------------------------------------------

@dataclass(frozen=True)
class Scalar:
    key: str
    value: float
    step: int
    seconds: float  # since the run started (for the tracker's wall-time axis)


def read_run(run_dir: Path) -> tuple[dict[str, Any], pd.DataFrame]:
    """metrics.json (as its JSON record) and robustness.csv of a finished run."""
    return rundir.read_metrics(run_dir).to_json(), rundir.read_robustness(run_dir)


def epsilon_label(eps: float) -> str:
    """0.1 -> "0.1", 0.016681005372 -> "0.016681": plain decimals (no exponent), so that names sort by ε."""
    text = f"{eps:.6f}".rstrip("0").rstrip(".")
    return text or "0"


def epsilon_step(eps: float) -> int:
    """The integer step of ε in the robust-accuracy curves: ε in thousandths (0.1 -> 100, 1 -> 1000)."""
    return int(round(1000 * eps))


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def history_key(key: str) -> str:
    """A history record's key as a metric name: train_cross_entropy -> train/cross_entropy."""
    for prefix in ("train_", "test_"):
        if key.startswith(prefix):
            return f"{prefix[:-1]}/{key[len(prefix):]}"
    return f"epoch/{key}"


def run_scalars(metrics: Mapping[str, Any], table: pd.DataFrame, per_epsilon: bool) -> Iterator[Scalar]:
    """Per-epoch history (step = epoch), clean accuracy, wall times, checks, and robust accuracy:
    ``robust/<attack>/eps_<ε>`` (if ``per_epsilon``) and the curve ``robust_curve/<attack>`` with
    step = ``epsilon_step(ε)``. Hierarchical runs name each level's rows ``.../level_<l>/<attack>...``."""
    total = float((metrics.get("seconds") or {}).get("total") or 0.0)
    elapsed = 0.0
    for record in metrics.get("history") or []:
        elapsed += float(record.get("seconds") or 0.0)
        for key, value in record.items():
            if key != "epoch" and (number := _number(value)) is not None:
                yield Scalar(history_key(key), number, int(record["epoch"]), elapsed)
    if (clean := _number(metrics.get("clean_accuracy"))) is not None:
        yield Scalar("clean_accuracy", clean, 0, total)
    for part, value in (metrics.get("seconds") or {}).items():
        if (number := _number(value)) is not None:
            yield Scalar(f"seconds/{part}", number, 0, total)
    checks = metrics.get("checks") or {}
    if isinstance(checks.get("passed"), int):
        yield Scalar("checks/passed", float(checks["passed"]), 0, total)
        yield Scalar("checks/failed", float(len(checks.get("failed") or [])), 0, total)
    levels = rundir.has_levels(table)
    for row in table.itertuples(index=False):
        attack = f"level_{int(row.level)}/{row.attack}" if levels and pd.notna(row.level) else str(row.attack)
        eps, value = float(row.epsilon), float(row.robust_accuracy)
        if per_epsilon:
            yield Scalar(f"robust/{attack}/eps_{epsilon_label(eps)}", value, 0, total)
        yield Scalar(f"robust_curve/{attack}", value, epsilon_step(eps), total)
    yield from certified_scalars(metrics.get("certify") or {}, per_epsilon, total)


def certified_scalars(certify: Mapping[str, Any], per_epsilon: bool, total: float) -> Iterator[Scalar]:
    """A run's certification (metrics.json["certify"]) as ``certified/<method>/eps_<ε>`` (if
    ``per_epsilon``), the curve ``certified_curve/<method>`` (step = ``epsilon_step(ε)``) and
    ``certified/<method>/median_radius``; "crown (ibp through conv/max-pool)" is named crown."""
    if not certify:
        return
    method = str(certify.get("method", "certified")).split()[0]
    for eps, value in zip(certify.get("epsilons") or [], certify.get("certified_accuracy") or []):
        if (number := _number(value)) is None:
            continue
        if per_epsilon:
            yield Scalar(f"certified/{method}/eps_{epsilon_label(float(eps))}", number, 0, total)
        yield Scalar(f"certified_curve/{method}", number, epsilon_step(float(eps)), total)
    if (radius := _number(certify.get("median_radius"))) is not None:
        yield Scalar(f"certified/{method}/median_radius", radius, 0, total)


def flat_config(node: Any, prefix: str = "") -> dict[str, str]:
    """A nested config as dotted keys and text values (lists stay one value: ``[0.05, 0.1]``)."""
    return {key: "null" if value is None else json.dumps(value) if isinstance(value, list) else str(value)
            for key, value in flatten(node, prefix).items()}
