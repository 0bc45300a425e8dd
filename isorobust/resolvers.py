"""OmegaConf resolvers the configs use; registered when the package's CLI starts.

``${isorobust.threads_per_job:}``  torch threads of one job (see ``sweeps/threads.py``).
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


def isometric_setting(key: str, default: Any, *, _root_: DictConfig) -> Any:
    for term in regularizer_terms(_root_.get("reg")).values():
        if term.get("name") == "isometric":
            return term.get(key, default)
    return default


def register_resolvers() -> None:
    register_threads_resolver()
    if not OmegaConf.has_resolver(ISOMETRIC):
        OmegaConf.register_new_resolver(ISOMETRIC, isometric_setting)


register_resolvers()
