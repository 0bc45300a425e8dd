"""``logger=mlflow`` (pip install 'isorobust[mlflow]'): each run an MLflow run, each ``-m`` sweep an experiment.

Everything goes through ``MlflowClient`` with explicit run ids, not the fluent ``mlflow.start_run`` API:
no process-wide active run, so nothing leaks between the jobs of a sweep that share one process.
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from isorobust import rundir
from isorobust.tracking import (
    RUN_ARTIFACTS, SWEEP_ARTIFACTS, RunInfo, Scalar, TrackerError, first_line, flat_config, missing_package,
    read_run, run_scalars,
)

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "isorobust"  # single runs; a -m sweep's jobs go to an experiment named after its directory
SWEEP_RUN = "sweep summary"
# MLflow 3's UI opens an experiment of unknown kind on its GenAI (traces) pages; this kind opens the runs
# table and charts of model training.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
# MLflow's own limits (mlflow.utils.validation): a longer value is refused, so it is cut, saying so.
PARAM_LIMIT, TAG_LIMIT, PARAMS_PER_BATCH, METRICS_PER_BATCH = 6000, 8000, 100, 1000
# The store is checked before training with few retries: a wrong server address should not cost MLflow's
# default 7 retries with exponential back-off before the error. Set these variables to choose otherwise.
PROBE_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
             "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


def _cut(text: str, limit: int, where: str) -> str:
    return text if len(text) <= limit else text[: limit - 60] + f"\n… (cut; the whole text is in {where})"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """MLflow and alembic announce database creation and migrations at INFO, and MLflow logs a database
    error with its traceback before raising it; isorobust reports each outcome in one line of its own."""
    loggers = [logging.getLogger(name) for name in ("mlflow", "alembic")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@contextlib.contextmanager
def _probe_env() -> Iterator[None]:
    added = {k: v for k, v in PROBE_ENV.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///path`` URI (relative to the working directory), else None."""
    if not uri.startswith("sqlite:///") or uri in ("sqlite:///", "sqlite:///:memory:"):
        return None
    return Path(uri[len("sqlite:///"):].split("?", 1)[0])


def _ms(seconds: float) -> int:
    return int(round(seconds * 1000))


class MlflowTracker:
    label = "logger=mlflow"

    def __init__(self, tracking_uri: str, experiment_name: str | None = None, run_name: str | None = None,
                 artifact_location: str | None = None) -> None:
        try:
            import mlflow  # noqa: F401  (the check: the extra is installed)
        except ImportError:
            raise missing_package(self.label, "mlflow", "mlflow") from None
        if not str(tracking_uri or "").strip():
            raise TrackerError(f"{self.label}: logger.tracking_uri is empty")
        self.tracking_uri = str(tracking_uri)
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.artifact_location = artifact_location
        self._client: Any = None

    # --- the store -----------------------------------------------------------------------------------
    def client(self) -> Any:
        if self._client is None:
            from mlflow import MlflowClient

            db = _sqlite_path(self.tracking_uri)
            if db is not None:
                db.parent.mkdir(parents=True, exist_ok=True)  # sqlite creates the file, not its folder
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def _default_artifacts(self) -> str | None:
        # Beside a SQLite store (outputs/mlartifacts), not MLflow's ./mlruns in the working directory;
        # a tracking server chooses its own.
        if self.artifact_location:
            return str(self.artifact_location)
        db = _sqlite_path(self.tracking_uri)
        return str((db.parent / "mlartifacts").resolve()) if db is not None else None

    def experiment_id(self, info: RunInfo) -> str:
        from mlflow.exceptions import MlflowException

        name = self.experiment_name or info.experiment or DEFAULT_EXPERIMENT
        client = self.client()
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            try:
                return client.create_experiment(name, artifact_location=self._default_artifacts(), tags=EXPERIMENT_TAGS)
            except MlflowException:  # another job of the same sweep created it in between
                experiment = client.get_experiment_by_name(name)
                if experiment is None:
                    raise
        if experiment.lifecycle_stage != "active":
            raise TrackerError(f"{self.label}: experiment {name!r} is deleted in {self.tracking_uri}; restore it "
                               "(mlflow experiments restore) or set logger.experiment_name")
        return experiment.experiment_id

    def open(self, info: RunInfo) -> None:
        try:
            with _quiet(), _probe_env():
                self.experiment_id(info)
        except TrackerError:
            raise
        except Exception as exc:
            raise TrackerError(f"{self.label}: cannot use the tracking store {self.tracking_uri} "
                               f"({first_line(exc)})") from None

    # --- runs ------------------------------------------------------------------------------------------
    def _finished_runs(self, experiment_id: str, tag: str, value: str) -> list[Any]:
        quote = "'" if "'" not in value else '"'
        return self.client().search_runs(
            [experiment_id], filter_string=f"tags.`{tag}` = {quote}{value}{quote} and attributes.status = 'FINISHED'")

    def _log(self, run_id: str, params: dict[str, str], scalars: list[Any], start_ms: int) -> None:
        from mlflow.entities import Metric, Param

        client = self.client()
        items = [Param(k, _cut(v, PARAM_LIMIT, "the run's metrics.json")) for k, v in params.items()]
        for i in range(0, len(items), PARAMS_PER_BATCH):
            client.log_batch(run_id, params=items[i : i + PARAMS_PER_BATCH])
        metrics = [Metric(s.key, s.value, start_ms + _ms(s.seconds), s.step) for s in scalars]
        for i in range(0, len(metrics), METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=metrics[i : i + METRICS_PER_BATCH])

    def _run(self, experiment_id: str, name: str, tags: dict[str, str], start_ms: int, end_ms: int,
             fill: Any) -> str:
        """Create a run, ``fill(run_id)`` it, mark it FINISHED; a failure marks it FAILED (and is raised)."""
        client = self.client()
        run = client.create_run(experiment_id, start_time=start_ms, tags=tags, run_name=name)
        run_id = run.info.run_id
        try:
            fill(run_id)
            client.set_terminated(run_id, "FINISHED", end_time=max(end_ms, start_ms))
        except BaseException:
            with contextlib.suppress(Exception):
                client.set_terminated(run_id, "FAILED")
            raise
        return run_id

    def log_run(self, run_dir: Path, info: RunInfo) -> None:
        metrics, table = read_run(run_dir)
        where = str(run_dir.resolve())
        with _quiet():
            experiment_id = self.experiment_id(info)
            if self._finished_runs(experiment_id, "isorobust.run_dir", where):
                log.info("%s: %s is already logged in experiment %s", self.label, run_dir, experiment_id)
                return
            client = self.client()
            # The run's own times: metrics.json is written last, seconds.total is the run's duration.
            end_ms = _ms(rundir.finished_at(run_dir))
            start_ms = end_ms - _ms(float((metrics.get("seconds") or {}).get("total") or 0.0))
            markdown = (run_dir / "robustness.md").read_text() if (run_dir / "robustness.md").is_file() else ""
            tags = {
                "isorobust.kind": "run",
                "isorobust.run_dir": where,
                "isorobust.overrides": _cut(" ".join(metrics.get("overrides") or []), TAG_LIMIT, "overrides.yaml"),
                "mlflow.note.content": _cut(markdown, TAG_LIMIT, "robustness.md"),  # the run's description
            }

            def fill(run_id: str) -> None:
                self._log(run_id, flat_config(metrics.get("config") or {}),
                          list(run_scalars(metrics, table, per_epsilon=True)), start_ms)
                for name in RUN_ARTIFACTS:
                    if (run_dir / name).is_file():
                        client.log_artifact(run_id, str(run_dir / name))
                if (run_dir / ".hydra").is_dir():
                    client.log_artifacts(run_id, str(run_dir / ".hydra"), "hydra")

            run_id = self._run(experiment_id, self.run_name or info.name, tags, start_ms, end_ms, fill)
        log.info("%s: logged %s as run %s (%s)", self.label, run_dir, run_id, self.tracking_uri)

    def log_sweep(self, sweep_dir: Path, info: RunInfo) -> None:
        """One "sweep summary" run in the sweep's experiment: the summary files, the figure, and for an
        Optuna sweep the best value and parameters. It replaces the one an earlier end of the same sweep
        (resume=true) logged, so the experiment holds one current summary."""
        where = str(sweep_dir.resolve())
        results = sweep_dir / "optimization_results.yaml"
        best = (yaml.safe_load(results.read_text()) or {}) if results.is_file() else {}
        summary = sweep_dir / "summary.md"
        with _quiet():
            experiment_id = self.experiment_id(info)
            client = self.client()
            earlier = self._finished_runs(experiment_id, "isorobust.sweep_dir", where)
            now_ms = _ms(summary.stat().st_mtime) if summary.is_file() else None
            tags = {
                "isorobust.kind": "sweep",
                "isorobust.sweep_dir": where,
                "mlflow.note.content": _cut(summary.read_text() if summary.is_file() else "", TAG_LIMIT, "summary.md"),
            }

            def fill(run_id: str) -> None:
                params = {f"best.{k}": str(v) for k, v in (best.get("best_params") or {}).items()}
                value = best.get("best_value")
                scalars = [Scalar("objective/best", float(value), 0, 0.0)] if isinstance(value, (int, float)) else []
                self._log(run_id, params, scalars, start_ms=now_ms or 0)
                for name in SWEEP_ARTIFACTS:
                    if (sweep_dir / name).is_file():
                        client.log_artifact(run_id, str(sweep_dir / name))

            start = now_ms if now_ms is not None else _ms(sweep_dir.stat().st_mtime)
            run_id = self._run(experiment_id, SWEEP_RUN, tags, start, start, fill)
            for run in earlier:
                client.delete_run(run.info.run_id)  # soft delete: `mlflow runs restore` undoes it
        log.info("%s: logged the sweep summary of %s as run %s", self.label, sweep_dir, run_id)
