"""The run directory: the one module that knows its file names and formats.

A run directory is what ``isorobust train`` writes (``.hydra/`` from Hydra, then the results below);
``isorobust attack`` and ``isorobust certify`` write their own, smaller records. Everything that reads
or writes these files goes through here: ``metrics.json`` is a typed ``Metrics`` record with a version
(records written before the version existed read as version 1), a certification has one shape
(``Certification``) whether it was made during training or afterwards, and "is this run complete" has
one answer (``COMPLETE_MARKERS``).

No torch here: reports read run directories without importing it.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from isorobust import io
from isorobust.errors import IsorobustError

# --- file names -----------------------------------------------------------------------------------
METRICS = "metrics.json"  # written last by `isorobust train`: a run with it (and ROBUSTNESS_CSV) is complete
ROBUSTNESS_CSV = "robustness.csv"
ROBUSTNESS_MD = "robustness.md"
ROBUSTNESS_PNG = "robustness.png"
CERTIFIED_CSV = "certified.csv"
CERTIFY_JSON = "certify.json"  # `isorobust certify`: the summary of a certification made afterwards
ATTACK_JSON = "attack.json"  # `isorobust attack`: marks a re-attack record (not a training run)
CHECKS_CSV = "checks.csv"
ISOMETRY_CSV = "isometry.csv"
BOUNDARY_PNG = "isometry_boundary.png"
TORUS_CSV = "isometry_torus.csv"
TORUS_PNG = "isometry_torus.png"
MODEL = "model.pt"
CHECKPOINT = "checkpoint.pt"  # the trainer's resumable state
ATTACK_PROGRESS = "attack_progress"  # each attack's state after every ε, until the run is complete (resume=true)
LOG = "train.log"
HYDRA = ".hydra"
CERTIFY_DIR = "certify"  # `isorobust certify run=DIR` writes DIR/certify/ by default
METHOD_DIR_PREFIX = "certify_"  # DIR/certify_<method>/: a certification by one method, beside certify/

COMPLETE_MARKERS = (METRICS, ROBUSTNESS_CSV)
# What a fresh attempt removes first (results of an earlier attempt would look complete) ...
RESULT_FILES = (METRICS, ROBUSTNESS_CSV, ROBUSTNESS_MD, ROBUSTNESS_PNG, ISOMETRY_CSV, BOUNDARY_PNG, TORUS_CSV,
                TORUS_PNG, CHECKS_CSV, CERTIFIED_CSV)
# ... and what a tracker mirrors (model.pt stays in the run directory: up to 75 MB per run).
ARTIFACTS = (ROBUSTNESS_MD, ROBUSTNESS_CSV, CHECKS_CSV, ISOMETRY_CSV, METRICS, CERTIFIED_CSV, ROBUSTNESS_PNG,
             BOUNDARY_PNG, TORUS_CSV, TORUS_PNG)

# 1: records without a version field (before the run record had an owner); 2: versioned; 3: attack_cost
METRICS_VERSION = 3


# --- metrics.json -------------------------------------------------------------------------------------
@dataclass
class Metrics:
    """``metrics.json``: the run's identity, clean metrics, history, isometry, checks, timings and config.

    ``extra`` keeps keys this version does not name (a regularizer's ``train_<name>_loss``), so that a
    record read and written again loses nothing."""

    dataset: str = "?"
    model: str = "?"
    reg: str = "none"
    reg_weight: float = 0.0
    reg_scale: float = 0.0
    seed: int = 0
    clean_accuracy: float | None = None
    test_cross_entropy: float | None = None
    test_isometric_loss: float | None = None
    isometric_loss_scale: float | None = None
    isometric_loss_layer: Any = None
    train_cross_entropy: float | None = None
    train_isometric_loss: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    regularizers: list[dict[str, Any]] = field(default_factory=list)
    n_train: int | None = None
    n_test: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    isometry: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)
    hierarchy: dict[str, Any] | None = None
    certify: dict[str, Any] | None = None  # the summary of a certification made during training
    seconds: dict[str, float] = field(default_factory=dict)
    # per (attack, ε): seconds, samples attacked, sample-forwards (attacks.base.AttackCost); version >= 3
    attack_cost: list[dict[str, Any]] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] | None = None  # the resolved job config; resume=true compares against it
    overrides: list[str] | None = None
    version: int = METRICS_VERSION

    def to_json(self) -> dict[str, Any]:
        """The record as written: the order of the keys is the order of the fields, ``extra`` after
        ``train_isometric_loss``, optional sections only where present."""
        out: dict[str, Any] = {"version": self.version}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "version":
                continue
            if f.name == "extra":
                out.update(value)
            elif f.name in ("hierarchy", "certify") and value is None:
                continue
            else:
                out[f.name] = value
        return out

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> Metrics:
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {k: v for k, v in record.items() if k in names}
        known.setdefault("version", 1)
        return cls(**known, extra={k: v for k, v in record.items() if k not in names})

    @property
    def total_seconds(self) -> float:
        return float(self.seconds.get("total") or 0.0)


def read_metrics(run: Path) -> Metrics:
    path = Path(run) / METRICS
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise IsorobustError(f"cannot read {path}: {first_line(exc)}") from None
    if not isinstance(record, dict):
        raise IsorobustError(f"cannot read {path}: not a metrics record")
    return Metrics.from_json(record)


def write_metrics(run: Path, metrics: Metrics) -> Path:
    return io.write_json(Path(run) / METRICS, metrics.to_json())


def finished_at(run: Path) -> float:
    """When the run finished (metrics.json is written last): a POSIX time."""
    return (Path(run) / METRICS).stat().st_mtime


# --- which folders are runs -------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunDir:
    path: Path
    missing: tuple[str, ...]  # the COMPLETE_MARKERS it lacks; empty for a complete run

    @property
    def complete(self) -> bool:
        return not self.missing


def missing_markers(run: Path) -> tuple[str, ...]:
    return tuple(name for name in COMPLETE_MARKERS if not (Path(run) / name).is_file())


def is_complete(run: Path) -> bool:
    return not missing_markers(run)


def _natural_key(path: Path) -> list:
    # Sweep jobs are folders 0, 1, ..., 10: sort them as numbers, not as text.
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.as_posix())]


def _job_name(run: Path) -> str | None:
    import yaml

    hydra_yaml = run / HYDRA / "hydra.yaml"
    if not hydra_yaml.is_file():
        return None
    try:
        return ((yaml.safe_load(hydra_yaml.read_text()) or {}).get("hydra") or {}).get("job", {}).get("name")
    except (yaml.YAMLError, OSError, AttributeError):
        return None


def is_run_dir(folder: Path) -> bool:
    """A folder `isorobust train` made (or started): results or Hydra's .hydra/ record, not an attack run."""
    if not any((folder / name).exists() for name in (*COMPLETE_MARKERS, HYDRA)):
        return False
    # `isorobust attack` runs also hold .hydra/ and robustness.csv; they are not training runs.
    return not (folder / ATTACK_JSON).exists() and _job_name(folder) in (None, "train")


def find_runs(root: Path) -> list[RunDir]:
    """Every run directory at or below ``root``, complete or not, in natural order."""
    runs = []
    for folder, subdirs, _ in os.walk(root):
        # .hydra, .submitit and other hidden folders never hold runs
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        path = Path(folder)
        if is_run_dir(path):
            runs.append(RunDir(path, missing_markers(path)))
    return sorted(runs, key=lambda r: _natural_key(r.path))


# --- the configuration Hydra recorded ---------------------------------------------------------------
# Where code moved, configs saved by older versions still name the old place.
LEGACY_TARGETS = {
    "isorobust.evaluation.attacks.": "isorobust.attacks.base.",
    "isorobust.evaluation.apgd.": "isorobust.attacks.apgd.",
    "isorobust.evaluation.autoattack.": "isorobust.attacks.autoattack.",
    "isorobust.evaluation.paper.": "isorobust.attacks.paper.",
    "isorobust.evaluation.certify.": "isorobust.certification.",
}


def modern_target(target: str) -> str:
    for old, new in LEGACY_TARGETS.items():
        if target.startswith(old):
            return new + target[len(old):]
    return target


def _modernise(node: Any) -> Any:
    if isinstance(node, Mapping):
        return {k: modern_target(v) if k == "_target_" and isinstance(v, str) else _modernise(v)
                for k, v in node.items()}
    if isinstance(node, list):
        return [_modernise(v) for v in node]
    return node


def saved_config_path(run: Path) -> Path:
    return Path(run) / HYDRA / "config.yaml"


def read_config(run: Path) -> Any:
    """The composed configuration of a run (``.hydra/config.yaml``) as an OmegaConf node."""
    from omegaconf import OmegaConf

    run = Path(run)
    if not run.is_dir():
        raise IsorobustError(f"run directory {run} not found")
    saved = saved_config_path(run)
    if not saved.is_file():
        raise IsorobustError(f"{run} is not an isorobust run directory (no .hydra/config.yaml)")
    try:
        loaded = OmegaConf.to_container(OmegaConf.load(saved))
    except Exception as exc:
        raise IsorobustError(f"cannot read {saved}: {first_line(exc)}") from None
    return OmegaConf.create(_modernise(loaded))


def read_overrides(run: Path) -> list[str]:
    """The command-line overrides Hydra recorded for this run (``.hydra/overrides.yaml``), or none."""
    import yaml

    path = Path(run) / HYDRA / "overrides.yaml"
    if not path.is_file():
        return []
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise IsorobustError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    return [str(o) for o in loaded or []]


def restore_hydra_record(run: Path, metrics: Metrics) -> None:
    """Hydra rewrote .hydra/ for a refused job before it started; put back what the results came from."""
    from omegaconf import OmegaConf

    record = Path(run) / HYDRA
    if metrics.overrides is not None and record.is_dir():
        io.write_text(record / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(metrics.overrides)))
        io.write_text(record / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(metrics.config)))


# --- tables ----------------------------------------------------------------------------------------
def read_table(path: Path, required: tuple[str, ...] = ()) -> pd.DataFrame:
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise IsorobustError(f"cannot read {path}: {first_line(exc)}") from None
    missing = [c for c in required if c not in table]
    if missing:
        raise IsorobustError(f"{path} lacks the columns {', '.join(missing)}")
    return table


# robustness.csv: one row per (attack, ε) with these columns first ...
TABLE_COLUMNS = [
    "dataset", "model", "reg", "reg_weight", "reg_scale", "seed",
    "attack", "norm", "epsilon", "n_samples", "clean_accuracy", "robust_accuracy",
]

WORST_CASE = "worst_case"  # ... the name of the per-sample worst case over the attacks


LEVEL = "level"  # hierarchical runs: the label level a row's read-out and labels belong to
TREE_DISTANCE = "error_tree_distance"  # hierarchical runs: the finest level's mean tree distance of clean errors


def has_levels(table: pd.DataFrame) -> bool:
    """Whether a robustness table is a hierarchical model's (one block of rows per label level)."""
    return LEVEL in table.columns and bool(table[LEVEL].notna().any())


def finest_level(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of the model's own classifier: the finest level of a hierarchical model, else all rows
    (rows without a level, e.g. of another run in a summary, are kept)."""
    if not has_levels(table):
        return table
    return table[table[LEVEL].isna() | (table[LEVEL] == table[LEVEL].max())]


def read_robustness(run: Path, required: tuple[str, ...] = ()) -> pd.DataFrame:
    return read_table(Path(run) / ROBUSTNESS_CSV, required)


def write_robustness(out: Path, table: pd.DataFrame, markdown: str) -> None:
    io.write_csv(Path(out) / ROBUSTNESS_CSV, table)
    io.write_text(Path(out) / ROBUSTNESS_MD, markdown)


def write_table(out: Path, name: str, frame: pd.DataFrame) -> Path:
    return io.write_csv(Path(out) / name, frame)


# --- certifications ------------------------------------------------------------------------------------
CERTIFIED_REQUIRED = ("method", "epsilon", "n_samples", "certified_accuracy")
# certified.csv, where attacks ran on the certified images first: the share of them no attack broke at that ε
# (an upper bound on the same images; NaN at radii the attacks did not cover)
ATTACK_UPPER_BOUND = "attack_upper_bound"


@dataclass(frozen=True)
class Certification:
    """One certification of a run, however it was made: its table (certified.csv), its summary (the
    median radius lives there), its cost and whether it ran inside ``isorobust train``."""

    method: str  # one word: "crown (ibp through conv/max-pool)" is crown
    table_path: Path
    summary: dict[str, Any] | None
    seconds: float | None
    during_training: bool

    def table(self) -> pd.DataFrame:
        return read_table(self.table_path, CERTIFIED_REQUIRED)


def method_name(label: Any) -> str:
    return str(label).split()[0]


def _table_methods(path: Path) -> set[str] | None:
    try:
        return set(pd.read_csv(path, usecols=["method"])["method"].map(method_name))
    except (OSError, ValueError, pd.errors.ParserError):
        return None


def method_certification_tables(run: Path) -> list[Path]:
    """``certify_<method>/certified.csv`` of a run: certifications by one method each, made afterwards beside
    certify/ (``isorobust certify run=DIR certify=<method> hydra.run.dir=DIR/certify_<method>``). A folder
    whose name is not its table's method (an archived certification, say) is not one."""
    found = []
    for path in sorted(Path(run).glob(f"{METHOD_DIR_PREFIX}*/{CERTIFIED_CSV}")):
        if _table_methods(path) == {path.parent.name[len(METHOD_DIR_PREFIX):]}:
            found.append(path)
    return found


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise IsorobustError(f"cannot read {path}: {first_line(exc)}") from None


def _certification(table: Path, summary: dict[str, Any] | None, seconds: Any, during_training: bool) -> Certification:
    """A certification from its table and the record beside it: the method its summary names, else its
    table's."""
    method = method_name(summary["method"]) if summary and "method" in summary else \
        sorted(_table_methods(table) or {"?"})[0]
    return Certification(method, table, summary, float(seconds) if isinstance(seconds, (int, float)) else None,
                         during_training)


def _afterwards(table: Path) -> Certification:
    """One ``isorobust certify`` made: its table and certify.json beside it."""
    record = _read_json(table.parent / CERTIFY_JSON) or {}
    return _certification(table, record.get("certify"), record.get("seconds"), False)


def certifications(run: Path) -> list[Certification]:
    """Every certification of a run, the one the reports lead with first: the run's own (certified during
    training: certified.csv beside metrics.json), else the one ``isorobust certify run=DIR`` wrote to
    certify/, else the first of the per-method folders; then the per-method folders of other methods."""
    run = Path(run)
    found: list[Certification] = []
    if (run / CERTIFIED_CSV).is_file():
        metrics = read_metrics(run) if (run / METRICS).is_file() else Metrics()
        found.append(_certification(run / CERTIFIED_CSV, metrics.certify, metrics.seconds.get("certify"), True))
    if (run / CERTIFY_DIR / CERTIFIED_CSV).is_file():
        found.append(_afterwards(run / CERTIFY_DIR / CERTIFIED_CSV))
    for path in method_certification_tables(run):
        found.append(_afterwards(path))
    if not found:
        return []
    primary, rest = found[0], found[1:]
    # certify/ is used only where the run has no table of its own; a method folder adds a method the
    # primary does not have.
    others = [c for c in rest if c.table_path.parent.name != CERTIFY_DIR and c.method != primary.method]
    return [primary, *others]


def write_certification(out: Path, frame: pd.DataFrame, summary: Mapping[str, Any], seconds: float,
                        source: str, environment: Mapping[str, Any]) -> list[Path]:
    """What ``isorobust certify`` writes: certified.csv and certify.json (what was certified, summary,
    seconds, machine)."""
    return [io.write_csv(Path(out) / CERTIFIED_CSV, frame),
            io.write_json(Path(out) / CERTIFY_JSON, {"run": source, "certify": dict(summary),
                                                      "seconds": seconds, "environment": dict(environment)})]


def write_attack_record(out: Path, record: Mapping[str, Any]) -> Path:
    return io.write_json(Path(out) / ATTACK_JSON, dict(record))


# --- time -----------------------------------------------------------------------------------------
_LOG_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)[,.](\d{3})\]")


# Hydra appends each start of a job in the same directory to its log (a resumed sweep, a stopped run run
# again): every attempt of `isorobust train` logs its data set first, so the log splits into attempts there.
# A job that resume=true skipped did no work: its line is not an attempt.
_ATTEMPT_START = re.compile(r"\]\[isorobust\.jobs\.train\]\[INFO\] - data ")
_SKIPPED = re.compile(r"already holds complete results, job skipped")
# Shorter pauses between jobs' log lines are a sweep at work (a job starting, a silent phase); longer ones
# are a sweep that was not running (stopped, then resumed).
SWEEP_PAUSE_S = 300.0


def log_attempts(run: Path) -> list[tuple[float, float]]:
    """(first, last) timestamp, in seconds, of each attempt in a run's Hydra job log (``<job name>.log``,
    e.g. train.log), oldest first; [] where there is no log with timestamps. A stopped attempt ends at its
    last log line, which may be well before it was stopped (an attack sweep logs once per attack)."""
    run = Path(run)
    own = run / f"{_job_name(run) or 'train'}.log"  # not a later command's log left beside it (masking_checks.log)
    for log in ([own] if own.is_file() else sorted(run.glob("*.log"))):
        attempts: list[list[float]] = []
        for line in log.read_text(errors="replace").splitlines():
            if (m := _LOG_TIME.match(line)) is None or _SKIPPED.search(line):
                continue
            stamp = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").timestamp() + int(m.group(2)) / 1000
            if not attempts or _ATTEMPT_START.search(line):
                attempts.append([stamp, stamp])
            attempts[-1][1] = max(attempts[-1][1], stamp)
        if attempts:
            return [(a, b) for a, b in attempts]
    return []


def working_seconds(intervals: list[tuple[float, float]], pause: float = SWEEP_PAUSE_S) -> float:
    """From the first interval's start to the last one's end, less every stretch longer than ``pause`` in
    which none of them was running (a sweep stopped and later resumed); shorter stretches count as work."""
    total, start, end = 0.0, None, float("-inf")
    for a, b in sorted(intervals):
        if start is None or a - end > pause:
            if start is not None:
                total += end - start
            start = a
        end = max(end, b)
    return total + (end - start if start is not None else 0.0)


def results_line(folder: Path, files: list[Path] | None = None) -> str:
    """Every command's last line: the folder it wrote (and, where it wrote few, which files)."""
    folder = Path(folder)
    names = f" ({', '.join(p.name if p.parent == folder else str(p) for p in files)})" if files else ""
    return f"isorobust: results in {folder}{names}"


def first_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 1] + "…"

