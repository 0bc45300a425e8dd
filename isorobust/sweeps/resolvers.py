"""OmegaConf resolvers the configs use; registered when the package's CLI starts.

``${isorobust.threads_per_job:}``  torch threads of one job (see ``sweeps/threads.py``).
``${isorobust.beside_run:RUN,FOLDER}``  RUN/FOLDER, or outputs/FOLDER/<date>/<time> where RUN is null.
``${isorobust.isometric:KEY,DEFAULT}``  a setting of the run's isometric regularizer wherever it
sits (``reg`` or ``reg.isometric``), DEFAULT without one: ``attack=paper_fgsm`` attacks the
run's own training objective, and a Jacobian or input-gradient term is not part of it.
"""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from isorobust.config import regularizer_terms
from isorobust.sweeps.threads import register_resolver as register_threads_resolver

ISOMETRIC = "isorobust.isometric"
BESIDE_RUN = "isorobust.beside_run"


def isometric_setting(key: str, default: Any, *, _root_: DictConfig) -> Any:
    for term in regularizer_terms(_root_.get("reg")).values():
        if term.get("name") == "isometric":
            return term.get(key, default)
    return default


def beside_run(run: Any, folder: str) -> str:
    """``<run>/<folder>`` for a command on a run directory, ``outputs/<folder>/<date>/<time>`` without one."""
    if run is None:
        from datetime import datetime

        return f"outputs/{folder}/{datetime.now():%Y-%m-%d/%H-%M-%S}"
    return f"{run}/{folder}"


def register_resolvers() -> None:
    register_threads_resolver()
    if not OmegaConf.has_resolver(ISOMETRIC):
        OmegaConf.register_new_resolver(ISOMETRIC, isometric_setting)
    if not OmegaConf.has_resolver(BESIDE_RUN):
        OmegaConf.register_new_resolver(BESIDE_RUN, beside_run)


register_resolvers()
