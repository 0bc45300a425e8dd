"""Torch threads per job, so that parallel jobs never ask for more threads than there are cores.

``threads`` in configs/train.yaml defaults to ``${isorobust.threads_per_job:}``, resolved inside each
job from the launcher that runs it (see ``threads_per_job``); an int overrides it.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from omegaconf import OmegaConf

from isorobust.errors import ConfigError

RESOLVER = "isorobust.threads_per_job"


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # respects taskset / cgroup cpusets
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def threads_per_job(launcher: Mapping[str, Any] | None, cores: int) -> int | None:
    """floor(cores / parallel jobs) under joblib, cpus_per_task under submitit, else None (torch's default).

    joblib's n_jobs follows joblib's convention: -1 = all cores, -2 = all but one, ...
    """
    target = str((launcher or {}).get("_target_", ""))
    if target.endswith("JoblibLauncher"):
        n_jobs = int(launcher.get("n_jobs") or -1)
        parallel = n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)
        return max(1, cores // min(parallel, cores))
    if target.endswith(("SlurmLauncher", "LocalLauncher")) and launcher.get("cpus_per_task"):
        return int(launcher["cpus_per_task"])
    return None


def _resolve_threads_per_job() -> int | None:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return threads_per_job(HydraConfig.get().launcher, available_cores())


def register_resolver() -> None:
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, _resolve_threads_per_job)


def apply_threads(threads: Any) -> None:
    """torch.set_num_threads(threads); None keeps torch's default."""
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads must be null or an integer >= 1 (got {threads!r})")
    import torch

    torch.set_num_threads(threads)


register_resolver()
