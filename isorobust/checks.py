"""Sanity checks for gradient masking: signs that an evaluation, not a model, is robust.

Each check compares numbers that must stand in a known order when the attacks work (Carlini et
al. 2019, 'On evaluating adversarial robustness'; Athalye et al. 2018). A failure is a warning
about the evaluation, with the numbers behind it, not an error. ``noise`` allows for sampling
error: two standard errors of a proportion, plus one sample.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from isorobust.attacks.base import Attack, LinfPGD, frozen, robust_accuracy_curve, robust_masks
from isorobust.metrics.clean import predict
from isorobust.rundir import finest_level


CHECKS_DOC = "docs/sanity-checks.md"  # one entry per check: when it fails and what to do


@dataclass
class CheckResult:
    check: str
    passed: bool
    detail: str

    def __post_init__(self) -> None:
        self.passed = bool(self.passed)  # comparisons of pandas numbers give numpy bools

    def line(self) -> str:
        if self.passed:
            return f"[pass] {self.check}: {self.detail}"
        return f"[FAIL] {self.check}: {self.detail} (what it means, what to do: {self.doc})"

    @property
    def doc(self) -> str:
        """Where docs/sanity-checks.md explains this check."""
        return f"{CHECKS_DOC}#{self.check.replace('_', '-')}"


def noise(p: float, n: int) -> float:
    """Sampling allowance for an accuracy ``p`` measured on ``n`` samples."""
    return 2.0 * math.sqrt(max(p * (1.0 - p), 0.0) / max(n, 1)) + 1.0 / max(n, 1)


def _fmt(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{100 * v:.1f}" for v in values) + "]%"


# --- checks on a finished robustness table -------------------------------------------------------

def check_pgd_not_above_fgsm(table: pd.DataFrame) -> CheckResult | None:
    attacks = set(table["attack"])
    if not {"pgd", "fgsm"} <= attacks:
        return None
    wide = table.pivot_table(index="epsilon", columns="attack", values="robust_accuracy")
    n = int(table["n_samples"].iloc[0])
    bad = [(e, r.pgd, r.fgsm) for e, r in wide.iterrows() if r.pgd > r.fgsm + noise(r.fgsm, n)]
    detail = ("PGD ≤ FGSM (+noise) at every ε" if not bad else
              "PGD above FGSM at " + ", ".join(f"ε={e:.3g}: {100 * p:.1f}% > {100 * f:.1f}%" for e, p, f in bad))
    return CheckResult("pgd_not_above_fgsm", not bad, detail)


def check_monotone_in_epsilon(table: pd.DataFrame) -> CheckResult:
    # Per attack and sample count: the worst case at the radii of an attack run on the first N samples
    # only covers those N, and points over different samples are not one curve.
    bad = []
    for (attack, n), rows in table.sort_values("epsilon").groupby(["attack", "n_samples"], sort=False):
        acc = rows["robust_accuracy"].tolist()
        if any(b > a + noise(a, int(n)) for a, b in zip(acc, acc[1:])):
            bad.append(f"{attack} ({int(n)} samples) {_fmt(acc)}")
    return CheckResult("accuracy_non_increasing_in_epsilon", not bad,
                       "every attack's accuracy falls or stays as ε grows" if not bad else "; ".join(bad))


def check_full_ball_breaks_everything(table: pd.DataFrame, threshold: float = 0.01) -> CheckResult | None:
    """At L∞ ε = 1 any image can become any other: an attack that works reaches ~0%."""
    at_one = table[(table["norm"] == "linf") & (table["epsilon"] >= 1.0)]
    if at_one.empty:
        return None
    best = at_one["robust_accuracy"].min()
    return CheckResult("epsilon_1_gives_zero", best <= threshold,
                       f"lowest accuracy at ε=1: {100 * best:.2f}% (threshold {100 * threshold:.0f}%)")


def table_checks(table: pd.DataFrame) -> list[CheckResult]:
    checks = [check_pgd_not_above_fgsm(table), check_monotone_in_epsilon(table),
              check_full_ball_breaks_everything(table)]
    return [c for c in checks if c is not None]


# --- checks that run further attacks --------------------------------------------------------------

def transfer_robust_accuracy(
    target: nn.Module, surrogate: nn.Module, attack: Attack, x: Tensor, y: Tensor,
    epsilon: float, batch_size: int, seed: int,
) -> float:
    """Accuracy of ``target`` on adversarial examples crafted against ``surrogate`` (black-box)."""
    torch.manual_seed(seed)
    correct = predict(target, x, batch_size) == y
    with frozen(surrogate), frozen(target):
        for s in range(0, x.shape[0], batch_size):
            adv = attack.perturb(surrogate, x[s : s + batch_size], y[s : s + batch_size], epsilon)
            with torch.no_grad():
                correct[s : s + batch_size] &= target(adv).argmax(1) == y[s : s + batch_size]
    return correct.float().mean().item()


def attack_checks(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    epsilons: Sequence[float],
    pgd: LinfPGD,
    fgsm: Attack,
    gradient_free: Attack,
    surrogate: nn.Module | None,
    batch_size: int,
    seed: int,
    reference: Attack | None = None,
) -> list[CheckResult]:
    """Run the extra attacks on (x, y) at ``epsilons`` and compare them with PGD and FGSM.
    ``reference``: a stronger attack (APGD-CE + APGD-T) that the default pair must come close to."""
    n = x.shape[0]
    eps = sorted(float(e) for e in epsilons)
    _, base = robust_accuracy_curve(model, pgd, x, y, eps, batch_size, seed)
    _, one_step = robust_accuracy_curve(model, fgsm, x, y, eps, batch_size, seed)
    gradient_best = [min(a, b) for a, b in zip(base, one_step)]
    results = []

    # The same PGD (step, schedule, loss) with 4× the steps and 3 restarts.
    stronger = dataclasses.replace(pgd, steps=4 * pgd.steps, restarts=3, random_start=True, epsilons=None, n_samples=None)
    _, strong = robust_accuracy_curve(model, stronger, x, y, eps, batch_size, seed + 1)
    bad = [e for e, b, s in zip(eps, base, strong) if s > b + noise(b, n)]
    results.append(CheckResult(
        "more_steps_and_restarts_never_raise_accuracy", not bad,
        f"PGD {pgd.steps} steps {_fmt(base)} vs {stronger.steps} steps × 3 restarts {_fmt(strong)} at ε={eps}"))
    gain = [b - s for b, s in zip(base, strong)]
    converged = all(g <= noise(b, n) for g, b in zip(gain, base))
    results.append(CheckResult(
        "pgd_converged", converged,
        f"a 12× larger PGD budget lowers accuracy by {_fmt(gain)}"
        + (" (within noise)" if converged else ": more than noise, the default PGD is too weak for this model")))

    if reference is not None:
        results.append(check_pgd_matches_reference(model, pgd, fgsm, reference, x, y, eps, batch_size, seed))

    _, at_one = robust_accuracy_curve(model, pgd, x, y, [1.0], batch_size, seed)
    results.append(CheckResult("pgd_at_epsilon_1_gives_zero", at_one[0] <= 0.01,
                               f"PGD accuracy at ε=1: {100 * at_one[0]:.2f}% (threshold 1%)"))

    if surrogate is not None:
        transfer = [transfer_robust_accuracy(model, surrogate, pgd, x, y, e, batch_size, seed) for e in eps]
        bad = [e for e, t, b in zip(eps, transfer, gradient_best) if t < b - noise(b, n)]
        results.append(CheckResult(
            "transfer_never_beats_white_box", not bad,
            f"transfer from a cross-entropy surrogate {_fmt(transfer)} vs white-box {_fmt(gradient_best)} at ε={eps}"))

    _, free = robust_accuracy_curve(model, gradient_free, x, y, eps, batch_size, seed)
    bad = [e for e, f, b in zip(eps, free, gradient_best) if f < b - noise(b, n)]
    results.append(CheckResult(
        "gradient_free_never_beats_gradient_attacks", not bad,
        f"{gradient_free.name} {_fmt(free)} vs best gradient attack {_fmt(gradient_best)} at ε={eps}"))
    return results


def paired_gap(weak: Tensor, strong: Tensor) -> tuple[float, float]:
    """Accuracy of ``weak`` minus that of ``strong`` (robust masks of the same samples) and its
    paired sampling allowance 2·sqrt(b + c)/n + 1/n, where b and c count the samples only one of
    the two broke (McNemar): far tighter than two independent binomial errors."""
    n = max(weak.numel(), 1)
    only_strong = int((weak & ~strong).sum())  # robust to the weak attack, broken by the strong one
    only_weak = int((strong & ~weak).sum())
    return (only_strong - only_weak) / n, 2.0 * math.sqrt(only_strong + only_weak) / n + 1.0 / n


def check_pgd_matches_reference(
    model: nn.Module, pgd: Attack, fgsm: Attack, reference: Attack, x: Tensor, y: Tensor,
    epsilons: Sequence[float], batch_size: int, seed: int, slack: float = 0.005,
) -> CheckResult:
    """The run's worst case of FGSM and PGD against a stronger reference (APGD-CE + APGD-T) on the
    same samples: a step too short, too few steps or a poor loss leave samples that the reference
    breaks. More steps of a step that is too short cannot show that; a different optimiser can.
    Allowed: ``slack`` (0.5 point: a cross-entropy PGD trails the targeted DLR loss by a little)
    plus the paired sampling allowance."""
    eps = sorted(float(e) for e in epsilons)
    _, base = robust_masks(model, pgd, x, y, eps, batch_size, seed)
    _, one_step = robust_masks(model, fgsm, x, y, eps, batch_size, seed)
    _, strong = robust_masks(model, reference, x, y, eps, batch_size, seed + 2)
    gaps = [(gap, allowance + slack) for gap, allowance in
            (paired_gap(b & f, s) for b, f, s in zip(base, one_step, strong))]
    bad = [e for e, (gap, allowance) in zip(eps, gaps) if gap > allowance]
    detail = (f"worst(fgsm, pgd) minus {reference.name} at ε={eps}: "
              + ", ".join(f"{100 * g:+.1f} (allowance {100 * a:.1f})" for g, a in gaps) + " points"
              + ("" if not bad else f": {reference.name} breaks more than noise explains, the default PGD is too weak"))
    return CheckResult("pgd_close_to_apgd", not bad, detail)


def checks_frame(results: Sequence[CheckResult]) -> pd.DataFrame:
    return pd.DataFrame([asdict(r) for r in results], columns=["check", "passed", "detail"])


def summary_text(results: Sequence[CheckResult]) -> str:
    failed = sum(not r.passed for r in results)
    head = (f"Sanity checks: {len(results) - failed}/{len(results)} passed"
            + ("" if not failed else f" — WARNING: signs of gradient masking or a weak attack; see {CHECKS_DOC}"))
    return "\n".join([head, *(r.line() for r in results)]) + "\n"


def train_surrogate(data, num_classes: int, epochs: int, seed: int, batch_size: int = 100) -> nn.Module:
    """A cross-entropy-only reference MLP trained from another seed: the transfer attack's source."""
    import tempfile
    from pathlib import Path

    from isorobust.models import mlp
    from isorobust.training.standard import StandardTrainer

    torch.manual_seed(seed)
    surrogate = mlp(data.input_shape, num_classes).to(data.train.x.device)
    with tempfile.TemporaryDirectory() as tmp:
        StandardTrainer(epochs=epochs, batch_size=batch_size, progress=False).fit(
            surrogate, data, None, seed=seed, run_dir=Path(tmp))
    return surrogate.eval()


@dataclass(frozen=True)
class CheckSettings:
    """``check``: whether the extra attacks run, on how many test images, at which radii, and the
    transfer attack's surrogate (the table checks always run)."""

    enabled: bool
    n_samples: int
    epsilons: list[float]
    surrogate_epochs: int
    gradient_free: Any = field(repr=False)  # an Attack (Square by default); None when not enabled

    @classmethod
    def from_config(cls, node: Any) -> CheckSettings | None:
        from hydra.utils import instantiate

        if node is None:
            return None
        return cls(bool(node.enabled), int(node.n_samples), [float(e) for e in node.epsilons],
                   int(node.surrogate_epochs), instantiate(node.gradient_free) if node.enabled else None)


def run_checks(model: nn.Module, data: Any, table: pd.DataFrame, attacks: Mapping[str, Attack],
               settings: CheckSettings | None, batch_size: int, seed: int) -> list[CheckResult]:
    """The table checks on ``table`` (the finest level of a hierarchical model) and, where ``settings``
    enable them and the inputs are images, the extra attacks on the first ``settings.n_samples``."""
    from isorobust.attacks.apgd import APGD
    from isorobust.attacks.base import FGSM

    results = table_checks(finest_level(table))  # hierarchical: the finest level is the model's own classifier
    # The extra attacks need image-shaped inputs (Square works on pixels).
    if settings is not None and settings.enabled and data.test.x.dim() == 4:
        x, y = data.test.x[: settings.n_samples], data.test.y[: settings.n_samples]
        pgd = next((a for a in attacks.values() if isinstance(a, LinfPGD)), LinfPGD())
        surrogate = train_surrogate(data, data.num_classes, settings.surrogate_epochs, seed=seed + 1000)
        # The default pair must come close to APGD-CE + APGD-T (the run's own settings if it ran apgd).
        reference = next((a for a in attacks.values() if isinstance(a, APGD)), None)
        reference = dataclasses.replace(reference, epsilons=None, n_samples=None) if reference else APGD()
        if data.num_classes < 4:  # the targeted DLR loss needs 4 classes
            reference = dataclasses.replace(reference, n_target_classes=0)
        results += attack_checks(model, x, y, settings.epsilons, pgd, FGSM(), settings.gradient_free,
                                 surrogate, batch_size, seed, reference=reference)
    return results
