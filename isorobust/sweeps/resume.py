"""``resume=true``: a job whose run directory already holds complete results of the same configuration
is skipped and returns those results; a different configuration in that directory is an error."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from collections.abc import Collection, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from isorobust import io
from isorobust.errors import IsorobustError
from isorobust.sweeps.aggregate import COMPLETE_MARKERS

log = logging.getLogger(__name__)

# Keys that do not change the results: a resumed sweep may set them differently.
IGNORED = ("resume", "threads", "device", "dataset.root", "dataset.download", "trainer.resume")
# Whole nodes that say how a run is tracked or ranked, not what it computes; runs made before they existed
# have neither, and must still resume.
IGNORED_NODES = ("logger", "objective")


def job_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved configuration stored in metrics.json, to compare against on resume."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def hydra_overrides() -> list[str] | None:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else None


def run_record(cfg: DictConfig) -> dict[str, Any]:
    """What metrics.json keeps of the job's configuration: the resolved config and the overrides."""
    return {"config": job_config(cfg), "overrides": hydra_overrides()}


def restore_hydra_record(run_dir: Path, metrics: dict[str, Any]) -> None:
    """Hydra rewrote .hydra/ for the refused job before it started; put back what the results came from."""
    record = run_dir / ".hydra"
    if metrics.get("overrides") is not None and record.is_dir():
        io.write_text(record / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(metrics["overrides"])))
        io.write_text(record / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(metrics["config"])))


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as dotted keys (``trainer.lr``) and its leaf values (lists stay one value)."""
    if isinstance(node, Mapping):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def differing_keys(a: Mapping[str, Any], b: Mapping[str, Any], ignore: Collection[str] = (),
                   ignore_nodes: Collection[str] = ()) -> list[str]:
    """The dotted keys (``trainer.lr``) whose values differ between two nested configs, leaving out the
    keys ``ignore`` and everything under the top-level nodes ``ignore_nodes``."""
    flat_a, flat_b = flatten(a), flatten(b)
    keys = sorted(k for k in (set(flat_a) | set(flat_b)) - set(ignore) if k.split(".", 1)[0] not in ignore_nodes)
    return [k for k in keys if flat_a.get(k) != flat_b.get(k)]


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    a, b = flatten(saved), flatten(current)
    return [f"{k}: {a.get(k)!r} there, {b.get(k)!r} now"
            for k in differing_keys(saved, current, IGNORED, IGNORED_NODES)]


def completed_metrics(cfg: DictConfig, run_dir: Path) -> dict[str, Any] | None:
    """The metrics of a complete earlier run of this configuration in ``run_dir``, or None."""
    if not all((run_dir / name).is_file() for name in COMPLETE_MARKERS):
        return None
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None  # unreadable: run the job again
    saved = metrics.get("config")
    if saved is None:
        raise IsorobustError(f"resume=true: {run_dir} holds results without their configuration; "
                             "use another hydra.sweep.dir (or hydra.run.dir)")
    differences = config_differences(saved, job_config(cfg))
    if differences:
        restore_hydra_record(run_dir, metrics)
        raise IsorobustError(f"resume=true: {run_dir} holds results of another configuration "
                             f"({'; '.join(differences[:3])}); use another hydra.sweep.dir")
    log.info("resume=true: %s already holds complete results, job skipped", run_dir)
    return metrics
