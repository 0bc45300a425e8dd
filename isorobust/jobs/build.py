"""One configuration pass per command: the composed config is validated once and turned into typed
objects here; nothing below the jobs reads the raw ``DictConfig``.

Each group keeps its rules beside the code that uses them (``config.RULES`` for plain values, the
certifier's option classes, the isometry and hierarchy rules below); ``validate_all`` runs them all and
reports every problem in one message.
"""
from __future__ import annotations

import platform
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from isorobust.config import regularizer_terms, sorted_epsilons, validate
from isorobust.errors import ConfigError


@dataclass(frozen=True)
class EvalSettings:
    """``eval``: the ε grid every attack runs on unless it has its own, how many test images, the batch,
    and which hidden layers the isometry table measures."""

    epsilons: list[float]
    n_samples: int | None
    batch_size: int
    isometry_layers: list[int] | None = None
    isometry_max_per_class: int | None = 200

    @classmethod
    def from_config(cls, node: Any) -> EvalSettings:
        return cls(sorted_epsilons(node.epsilons), node.get("n_samples"), int(node.batch_size),
                   _layers(node.get("isometry_layers")), node.get("isometry_max_per_class", 200))

    def check_layers(self, num_hidden: int) -> None:
        """The isometry settings against the model's hidden layers, before any work starts."""
        problems = []
        layers = self.isometry_layers
        if layers is not None:
            bad = [l for l in layers if not isinstance(l, int) or isinstance(l, bool) or not -num_hidden <= l < num_hidden]
            if bad or not layers:
                problems.append(f"eval.isometry_layers must be null or hidden-layer indices in "
                                f"[{-num_hidden}, {num_hidden - 1}] (got {layers!r})")
        per_class = self.isometry_max_per_class
        if per_class is not None and (not isinstance(per_class, int) or isinstance(per_class, bool) or per_class < 2):
            problems.append(f"eval.isometry_max_per_class must be null or an integer >= 2 (got {per_class!r})")
        if problems:
            raise ConfigError("invalid configuration: " + "; ".join(problems))


def _layers(value: Any) -> list[int] | None:
    if value is None:
        return None
    return [value] if isinstance(value, int) else list(value)


def check_hierarchy(cfg: DictConfig) -> None:
    """A hierarchical model needs a ``hierarchy`` config (and vice versa), caught before any work."""
    has_hierarchy = cfg.get("hierarchy") is not None
    wants_levels = "levels" in cfg.model
    if wants_levels and not has_hierarchy:
        raise ConfigError(f"model={cfg.model.get('name')} needs a label hierarchy (e.g. +hierarchy=mnist_3level)")
    if has_hierarchy and not wants_levels:
        raise ConfigError(f"a hierarchy needs model=hierarchical_mlp (got model={cfg.model.get('name')})")
    if has_hierarchy and "HierarchicalTrainer" not in str(cfg.trainer.get("_target_", "")):
        raise ConfigError(f"a hierarchy needs trainer=hierarchical (got trainer={cfg.trainer.get('name')})")


def build_attacks(attack_cfg: Mapping[str, Any] | None, required: bool = True) -> dict[str, Any]:
    """The attacks of ``attack``; an entry set to null is dropped (an experiment's way to remove an
    attack its parent selected). ``required``: none left is an error (train, attack), else an empty dict
    (certify, whose attack is optional)."""
    chosen = {name: c for name, c in (attack_cfg or {}).items() if c is not None}
    if not chosen and not required:
        return {}
    if not chosen:
        raise ConfigError("no attack selected (use attack=fgsm, attack=pgd or attack=[fgsm,pgd])")
    bare = [name for name, c in chosen.items() if not isinstance(c, Mapping) or "_target_" not in c]
    if bare:
        raise ConfigError(f"attack.{bare[0]} has settings but no attack: add it to the list, e.g. "
                          f"attack=[fgsm,pgd,{bare[0]}], or set attack.{bare[0]}=null")
    return {name: instantiate(c, name=name) for name, c in chosen.items()}


def build_certifier(certify_cfg: Mapping[str, Any] | None) -> Any:
    """The ``certify`` group (off unless asked: ``certify=crown``, ``alpha_crown``, ``bab`` or ``ibp``)."""
    return instantiate(certify_cfg) if certify_cfg else None


def regularizer_configs(reg_cfg: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    """The ``reg`` node as a list: one regularizer (``+reg=isometric``) or several under their own
    keys (``+reg=isometric_jacobian``, or ``+reg@reg.isometric=isometric +reg@reg.jacobian=jacobian``)."""
    if reg_cfg is None:
        return []
    terms = [c for c in regularizer_terms(reg_cfg).values() if "_target_" in c]
    if not terms:
        raise ConfigError("reg holds no regularizer (expected _target_ in reg or in each reg.<name>)")
    return terms


def build_regularizers(reg_cfg: Mapping[str, Any] | None) -> list[Any]:
    return [instantiate(c) for c in regularizer_configs(reg_cfg)]


def build_model(node: Mapping[str, Any], input_shape: tuple[int, ...], num_classes: int) -> Any:
    """The model of a ``model`` node: its ``_target_`` called with the node's settings, and with the data
    set's ``input_shape`` and ``num_classes`` where it takes them (this tool's factories do; a class from
    elsewhere may take neither). ``name`` is passed only to a target that has that parameter."""
    import inspect

    from hydra.utils import get_method

    target = node.get("_target_")
    try:
        factory = get_method(str(target))
    except Exception as exc:
        raise ConfigError(f"model._target_={target}: cannot import it ({str(exc).splitlines()[0]})") from None
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        parameters = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    settings = {k: v for k, v in node.items() if k != "_target_" and (k != "name" or "name" in parameters or takes_any)}
    extra = {k: v for k, v in (("input_shape", tuple(input_shape)), ("num_classes", num_classes))
             if k in parameters or takes_any}
    return instantiate({"_target_": target, **settings}, **extra)


def model_name(node: Mapping[str, Any]) -> str:
    """A model's name in the tables: its config's ``name``, else the last part of its ``_target_``."""
    return str(node.get("name") or str(node.get("_target_", "model")).rsplit(".", 1)[-1])


def run_meta(cfg: DictConfig) -> dict[str, Any]:
    """The run's identity in every table row. With several regularizers, ``reg`` joins their names
    and ``reg_weight``/``reg_scale`` are the isometric term's (β, K) where there is one."""
    terms = regularizer_configs(cfg.get("reg"))
    main = next((t for t in terms if t.get("name") == "isometric"), terms[0] if terms else None)
    return {
        "dataset": cfg.dataset.name,
        "model": model_name(cfg.model),
        "reg": "+".join(str(t.get("name")) for t in terms) if terms else "none",
        "reg_weight": float(main.weight) if main is not None else 0.0,
        "reg_scale": float(main.get("scale") or 0.0) if main is not None else 0.0,
        "seed": int(cfg.seed),
    }


def environment(device: Any) -> dict[str, Any]:
    import torch

    return {
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def validate_all(cfg: DictConfig) -> None:
    """Every rule that needs nothing but the composed config, in one message: config.py's rules for plain
    values and the certifier's own (``Certifier.problems``); then the rules across groups."""
    from isorobust.certification import Certifier

    validate(cfg, more=Certifier.problems(cfg.get("certify")))
    if "model" in cfg and "trainer" in cfg:
        check_hierarchy(cfg)
