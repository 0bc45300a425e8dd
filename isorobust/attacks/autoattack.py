"""AutoAttack-strength evaluation and the gradient-free Square attack.

``AutoAttack`` runs, on each batch, APGD-CE, then APGD-T (9 target classes), FAB-T (9 target
classes), then Square, each on the samples the earlier ones did not break (Croce & Hein 2020,
'standard' version). Defaults follow the original: 100 iterations, 5000 Square queries. The sweep
gives it only the samples still robust at the previous ε. All four components are written here
(``apgd``, ``fab``, ``square``), as is the L2 Square.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from isorobust.errors import ConfigError
from isorobust.attacks.apgd import apgd_ce_then_targeted
from isorobust.attacks.base import Attack
from isorobust.attacks.fab import fab_targeted
from isorobust.attacks.square import square_l2, square_linf

# compile="auto" compiles FAB-T's elementwise arithmetic from this many rows (samples × targets) on: below it,
# compiling (about 3-20 s once per process on a 2-core CPU) costs more than it saves.
COMPILE_MIN_ROWS = 2000


def _num_classes(model: nn.Module, x: Tensor) -> int:
    with torch.no_grad():
        return int(model(x[:1]).shape[1])


@dataclass
class AutoAttack(Attack):
    """AutoAttack 'standard' (Croce & Hein 2020): APGD-CE, APGD-T, FAB-T, Square, in this order,
    each on the samples every earlier one left. The APGD pair is ``isorobust.attacks.apgd``
    (same algorithm as torchattacks', without running samples already broken), FAB-T is
    ``isorobust.attacks.fab`` (all targets in one batch, a sample leaving once broken), Square is
    ``isorobust.attacks.square`` (queries only the samples not yet fooled). ``compile``: FAB-T's
    elementwise arithmetic through torch.compile (true, false, or auto: from COMPILE_MIN_ROWS rows).
    ``runs`` receives (component, ε, samples attacked, seconds) per call, which is where
    ``benchmarks/bench.py`` reads the per-component times."""

    name: str = "autoattack"
    norm: str = "linf"
    steps: int = 100
    square_queries: int = 5000
    n_target_classes: int = 9
    seed: int = 0
    compile: bool | str = "auto"
    runs: list = field(default_factory=list, repr=False)

    def _compile_fab(self, rows: int) -> bool:
        if self.compile == "auto":
            return rows >= COMPILE_MIN_ROWS
        if isinstance(self.compile, bool):
            return self.compile
        raise ConfigError(f"attack.autoattack.compile must be true, false or auto (got {self.compile!r})")

    def _fab_and_square(self, model: nn.Module, n_classes: int, epsilon: float) -> list:
        n_targets = min(self.n_target_classes, n_classes - 1)  # the original: the 9 runner-up classes

        def fab(x: Tensor, y: Tensor) -> Tensor:
            return fab_targeted(model, x, y, epsilon, self.steps, n_targets,
                                compile=self._compile_fab(x.shape[0] * n_targets))

        def square(x: Tensor, y: Tensor) -> Tensor:
            return square_linf(model, x, y, epsilon, self.square_queries, seed=self.seed)

        return [("fab-t", fab), ("square", square)]

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, epsilon: float) -> Tensor:
        n_classes = _num_classes(model, x)
        if n_classes < 4:
            raise ConfigError(f"AutoAttack's targeted DLR loss needs at least 4 classes (the model has {n_classes})")
        if self.norm != "linf":
            raise ConfigError("this AutoAttack is the L∞ version (norm: linf)")
        apgd_runs: list = []
        adv = apgd_ce_then_targeted(model, x, y, epsilon, self.steps, self.n_target_classes, apgd_runs)
        self.runs += [(c, epsilon, n, s) for c, n, s in apgd_runs]
        with torch.no_grad():
            robust = model(adv).argmax(dim=1) == y
        for component, attack in self._fab_and_square(model, n_classes, epsilon):
            idx = robust.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            t0 = time.perf_counter()
            adv_c = attack(x[idx], y[idx])
            with torch.no_grad():
                fooled = model(adv_c).argmax(dim=1) != y[idx]
            adv[idx[fooled]] = adv_c[fooled]
            robust[idx[fooled]] = False
            self.runs.append((component, epsilon, int(idx.numel()), time.perf_counter() - t0))
        return adv

    def describe(self) -> str:
        return (f"AutoAttack standard ({self.norm}): APGD-CE, APGD-T ({self.n_target_classes} targets), "
                f"FAB-T ({self.steps} iterations), Square ({self.square_queries} queries), each on what "
                f"the earlier ones left")


@dataclass
class Square(Attack):
    """Square attack (Andriushchenko et al. 2020): gradient-free, random square-shaped updates."""

    name: str = "square"
    norm: str = "linf"
    n_queries: int = 5000
    p_init: float = 0.8
    seed: int = 0

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, epsilon: float) -> Tensor:
        if self.norm == "linf":
            return square_linf(model, x, y, epsilon, self.n_queries, self.p_init, self.seed)
        if self.norm == "l2":
            return square_l2(model, x, y, epsilon, self.n_queries, self.p_init, self.seed)
        raise ConfigError(f"attack.square.norm must be linf or l2 (got {self.norm!r})")

    def describe(self) -> str:
        return f"Square ({self.norm}, {self.n_queries} queries, gradient-free)"
