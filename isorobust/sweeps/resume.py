"""``resume=true``: a job whose run directory already holds complete results of the same configuration
is skipped and returns those results; a different configuration in that directory is an error."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from isorobust import rundir
from isorobust.config import differing_keys, flatten, result_neutral
from isorobust.errors import IsorobustError

log = logging.getLogger(__name__)


def job_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved configuration stored in metrics.json, to compare against on resume."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def result_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved configuration as dotted keys, without the result-neutral ones: what a run's results
    depend on besides the code (attack progress is kept under its digest)."""
    return {k: v for k, v in flatten(job_config(cfg)).items() if not result_neutral(k)}


def hydra_overrides() -> list[str] | None:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else None


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    a, b = flatten(saved), flatten(current)
    return [f"{k}: {a.get(k)!r} there, {b.get(k)!r} now" for k in differing_keys(saved, current)]


def completed_metrics(cfg: DictConfig, run_dir: Path) -> rundir.Metrics | None:
    """The metrics of a complete earlier run of this configuration in ``run_dir``, or None."""
    if not rundir.is_complete(run_dir):
        return None
    try:
        metrics = rundir.read_metrics(run_dir)
    except IsorobustError:
        return None  # unreadable: run the job again
    if metrics.config is None:
        raise IsorobustError(f"resume=true: {run_dir} holds results without their configuration; "
                             "use another hydra.sweep.dir (or hydra.run.dir)")
    current = job_config(cfg)
    differences = config_differences(metrics.config, current)
    if differences:
        rundir.restore_hydra_record(run_dir, metrics)
        raise IsorobustError(f"resume=true: {run_dir} holds results of another configuration "
                             f"({'; '.join(differences[:3])}); use another hydra.sweep.dir")
    # certify does not change what the run trained or attacked, but a certification asked for now and
    # not made then would silently be missing
    if current.get("certify") and current.get("certify") != metrics.config.get("certify"):
        rundir.restore_hydra_record(run_dir, metrics)
        raise IsorobustError(f"resume=true: {run_dir} was not certified with this certify setting; certify it "
                             f"with `isorobust certify run={run_dir}`")
    log.info("resume=true: %s already holds complete results, job skipped", run_dir)
    return metrics
