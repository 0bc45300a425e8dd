"""Checks on a composed configuration, gathered into one message before any work starts."""
from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from omegaconf import DictConfig

from isorobust.errors import ConfigError


def _get(cfg: DictConfig, dotted: str) -> Any:
    node: Any = cfg
    for key in dotted.split("."):
        if not isinstance(node, DictConfig) or key not in node:
            return None
        node = node[key]
    return node


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# Per regularizer (``reg`` itself, or each ``reg.<name>`` when a config holds several).
REG_RULES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("weight", lambda v: _is_number(v) and v >= 0, ">= 0"),
    ("scale", lambda v: _is_number(v) and v > 0, "> 0"),
    ("layer", lambda v: (isinstance(v, int) and not isinstance(v, bool)) or v == "all" or (
        isinstance(v, Sequence) and not isinstance(v, str) and len(v) > 0
        and all(isinstance(l, int) and not isinstance(l, bool) for l in v)), "an integer, a list of integers or 'all'"),
    ("n_projections", lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
]

RULES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("trainer.epochs", lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    ("trainer.batch_size", lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    ("trainer.lr", lambda v: _is_number(v) and v > 0, "> 0"),
    ("trainer.eval_every", lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    ("trainer.adv.eps", lambda v: _is_number(v) and 0 <= v <= 1, "in [0, 1]"),
    ("trainer.adv.steps", lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    ("trainer.adv.warmup_epochs", lambda v: _is_number(v) and v >= 0, ">= 0"),
    ("model.width", lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    ("model.depth", lambda v: isinstance(v, int) and v >= 0, "an integer >= 0"),
    ("model.channels", lambda v: isinstance(v, Sequence) and not isinstance(v, str) and len(v) == 2
     and all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in v), "two integers >= 1"),
    ("dataset.train_size", lambda v: isinstance(v, int) and v >= 1, "null or an integer >= 1"),
    ("dataset.test_size", lambda v: isinstance(v, int) and v >= 1, "null or an integer >= 1"),
    ("eval.n_samples", lambda v: isinstance(v, int) and v >= 1, "null or an integer >= 1"),
    ("eval.batch_size", lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    ("seed", lambda v: isinstance(v, int), "an integer"),
]
# (the certify group's rules live with the certifier: certification.Certifier.problems)


# Keys of a composed configuration that do not change a run's results: a resumed sweep may set them
# differently (resume), they do not make two runs different configurations (sweep reports, sensitivity
# matching), and trackers leave them out of run names. A dotted key covers everything below it: ``logger``,
# ``objective`` and ``certify`` say how a run is tracked, ranked or bounded, not what it trains or attacks
# (a certification is kept apart from the attack results, under its own method name).
RESULT_NEUTRAL = ("resume", "threads", "device", "dataset.root", "dataset.download", "trainer.resume",
                  "logger", "objective", "certify", "attack.autoattack.compile")


def result_neutral(key: str) -> bool:
    """Whether the dotted key (``trainer.lr``, ``+logger``, ``~certify``) is one of RESULT_NEUTRAL or below one."""
    key = key.lstrip("+~")
    return any(key == k or key.startswith(k + ".") for k in RESULT_NEUTRAL)


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as dotted keys (``trainer.lr``) and its leaf values (lists stay one value)."""
    if isinstance(node, Mapping):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def differing_keys(a: Mapping[str, Any], b: Mapping[str, Any], ignore: Collection[str] = ()) -> list[str]:
    """The dotted keys (``trainer.lr``) whose values differ between two nested configs, leaving out the
    result-neutral keys and everything under the top-level nodes ``ignore``."""
    flat_a, flat_b = flatten(a), flatten(b)
    keys = sorted(k for k in set(flat_a) | set(flat_b) if not result_neutral(k) and k.split(".", 1)[0] not in ignore)
    return [k for k in keys if flat_a.get(k) != flat_b.get(k)]


def regularizer_terms(reg: Any) -> dict[str, Any]:
    """The regularizers of a ``reg`` node by key path: ``{"reg": reg}`` for one (``+reg=isometric``),
    ``{"reg.<name>": node}`` for several (``+reg=isometric_jacobian``, ``+reg@reg.jacobian=jacobian``)."""
    if not isinstance(reg, Mapping):
        return {}
    if "_target_" in reg or not any(isinstance(v, Mapping) for v in reg.values()):
        return {"reg": reg}
    return {f"reg.{name}": term for name, term in reg.items() if isinstance(term, Mapping)}


def validate(cfg: DictConfig, required: tuple[str, ...] = (), more: Sequence[str] = ()) -> None:
    """Raise one ConfigError listing every bad value (keys absent from ``cfg`` are skipped), with the
    ``more`` problems the callers found by rules that live elsewhere (the certifier's)."""
    problems = list(problems_of(cfg, required)) + list(more)
    if problems:
        raise ConfigError("invalid configuration: " + "; ".join(problems))


def problems_of(cfg: DictConfig, required: tuple[str, ...] = ()) -> list[str]:
    """Every bad value of ``cfg`` by the rules of this module."""
    problems = []
    for key, ok, want in RULES:
        value = _get(cfg, key)
        if value is None:
            if key in required:
                problems.append(f"{key} must be {want} (got null)")
            continue
        if not ok(value):
            problems.append(f"{key} must be {want} (got {value!r})")
    for prefix, term in regularizer_terms(_get(cfg, "reg")).items():
        for key, ok, want in REG_RULES:
            value = _get(term, key)
            if value is not None and not ok(value):
                problems.append(f"{prefix}.{key} must be {want} (got {value!r})")
    epsilons = _get(cfg, "eval.epsilons")
    if epsilons is not None:
        if not list(epsilons):
            problems.append("eval.epsilons must not be empty")
        bad = [e for e in epsilons if not _is_number(e) or not 0 <= e <= 1]
        if bad:
            problems.append(f"eval.epsilons must lie in [0, 1] for inputs in [0, 1] (got {', '.join(map(str, bad))})")
    for name, attack in (_get(cfg, "attack") or {}).items():
        if not isinstance(attack, DictConfig):
            continue
        for key in ("steps", "restarts", "n_queries", "square_queries", "n_samples"):
            value = _get(attack, key)
            if value is not None and (not isinstance(value, int) or value < 1):
                problems.append(f"attack.{name}.{key} must be an integer >= 1 (got {value!r})")
        compile_ = _get(attack, "compile")
        if compile_ is not None and compile_ not in (True, False, "auto"):
            problems.append(f"attack.{name}.compile must be true, false or auto (got {compile_!r})")
        own = _get(attack, "epsilons")
        if own is not None:
            linf = _get(attack, "norm") in (None, "linf") and "L2" not in str(_get(attack, "_target_"))
            bad = [e for e in own if not _is_number(e) or e < 0 or (linf and e > 1)]
            if bad or not list(own):
                problems.append(f"attack.{name}.epsilons must be non-empty, >= 0 (and <= 1 for L∞) "
                                f"(got {', '.join(map(str, bad)) or 'none'})")
    device = _get(cfg, "device")
    if device is not None and device != "auto":
        import torch

        try:
            torch.device(device)
        except (RuntimeError, TypeError):
            problems.append(f"device must be auto, cpu, cuda, cuda:N or mps (got {device!r})")
    return problems


def resolve_device(name: str) -> Any:
    """``device=auto|cpu|cuda[:N]|mps`` as a torch.device (torch is imported here, not at start-up)."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but CUDA is not available here (use device=auto or cpu)")
    return device


def sorted_epsilons(epsilons: Any) -> list[float]:
    return sorted({float(e) for e in epsilons})
