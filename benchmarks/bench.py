"""Side-by-side speed and memory measurements of isorobust; writes benchmarks/RESULTS.md.

    python benchmarks/bench.py                 # everything (about 6 minutes on 2 cores)
    python benchmarks/bench.py --quick         # small sizes, for a smoke run
    python benchmarks/bench.py --skip-e2e      # without the full `isorobust train` run
    python benchmarks/bench.py --only-certify --output benchmarks/RESULTS_certify.md   # IBP, CROWN, certify=crown e2e
    python benchmarks/bench.py --only-tight --output benchmarks/RESULTS_tight.md       # α-CROWN, branch and bound

Every figure is a ratio of two things measured in the same process, interleaved in rounds
(A B A B ...), so that load from elsewhere hits both sides alike; the median round counts.
Needs ISOROBUST_DATA (MNIST) for the attack and end-to-end parts.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from isorobust.data import load_mnist
from isorobust.attacks.base import LinfPGD, robust_masks
from isorobust.io import write_text
from isorobust.losses import isometric_loss, isometric_loss_reference
from isorobust.models import MLP
try:
    from isorobust.training.standard import make_adam
except ImportError:  # older versions of isorobust (for before/after tables): plain Adam

    def make_adam(model: torch.nn.Module, lr: float) -> torch.optim.Adam:
        return torch.optim.Adam(model.parameters(), lr=lr)

EPSILONS = [float(e) for e in torch.logspace(-2, 0, 10, dtype=torch.float64)]
HERE = Path(__file__).resolve().parent


def train_steps(loss_term: Callable | None, x: torch.Tensor, y: torch.Tensor, batch: int = 100):
    """A closure that runs `n` training steps of the reference MLP (CE [+ 0.1 * term]) on shuffled
    batches, gathered and logged as StandardTrainer does."""
    torch.manual_seed(0)
    model = MLP()
    opt = make_adam(model, 1e-3)
    shuffle = torch.Generator().manual_seed(0)

    def run(n: int) -> None:
        for _ in range(n):
            idx = torch.randint(0, x.shape[0], (batch,), generator=shuffle)
            xb, yb = x.index_select(0, idx), y.index_select(0, idx)
            logits, feats = model.forward_features(xb)
            loss = F.cross_entropy(logits, yb)
            if loss_term is not None:
                term = loss_term(xb, feats[-1], yb, scale=10.0)
                loss = loss + 0.1 * term
                term.item()
            loss.item()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return run


def interleaved(runners: dict[str, Callable[[], None]], rounds: int) -> dict[str, list[float]]:
    """Seconds of every round of each runner, the runners alternating within every round."""
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
    return times


def bench_training(x, y, rounds: int, steps: int) -> list[tuple[str, str]]:
    runs = {
        "cross-entropy only": train_steps(None, x, y),
        "+ isometric (isorobust)": train_steps(isometric_loss, x, y),
        "+ isometric (straightforward: two cdist matrices through autograd)":
            train_steps(partial(isometric_loss_reference, compute_mode="use_mm_for_euclid_dist"), x, y),
        "+ isometric (literal formula, B×B×D differences)": train_steps(isometric_loss_reference, x, y),
    }
    for run in runs.values():
        run(50)  # warm-up
    times = interleaved({k: (lambda r=r: r(steps)) for k, r in runs.items()}, rounds)
    base = times["cross-entropy only"]
    rows = []
    for name, sec in times.items():
        # Each round's ratio to the plain round run just before it: load that drifts over the
        # run hits both sides of a ratio alike. Median and quartiles over the rounds.
        ratios = [a / b for a, b in zip(sec, base)]
        q1, med, q3 = statistics.quantiles(ratios, n=4)
        rows.append((name, f"{steps * 100 / statistics.median(sec):,.0f} samples/s, {med:.3f}× the plain "
                           f"step time (quartiles {q1:.3f}–{q3:.3f})"))
    return rows


def plain_pgd_sweep(model, x, y, epsilons, steps=40, rel_stepsize=1 / 30, batch=1000, seed=0) -> list[float]:
    """A hand-written batched L∞ PGD (random start), every sample attacked at every ε."""
    torch.manual_seed(seed)
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    curve = []
    for eps in epsilons:
        robust = correct.clone()
        for s in range(0, x.shape[0], batch):
            xb, yb = x[s : s + batch], y[s : s + batch]
            adv = (xb + torch.empty_like(xb).uniform_(-eps, eps)).clamp(0, 1)
            for _ in range(steps):
                adv.requires_grad_(True)
                loss = F.cross_entropy(model(adv), yb, reduction="sum")
                (grad,) = torch.autograd.grad(loss, adv)
                adv = adv.detach() + rel_stepsize * eps * grad.sign()
                adv = torch.min(torch.max(adv, xb - eps), xb + eps).clamp(0, 1)
            with torch.no_grad():
                robust[s : s + batch] &= model(adv).argmax(1) == yb
        curve.append(robust.float().mean().item())
    for p in model.parameters():
        p.requires_grad_(True)
    return curve


class FoolboxLinfPGD(LinfPGD):
    """The previous L∞ PGD, for before/after rows: foolbox's LinfPGD through its extension points (the
    step schedule, the loss, a record of the first fooling iterate), every sample for every step."""

    def perturb(self, model, x, y, epsilon):
        import foolbox as fb
        from foolbox.attacks.gradient_descent_base import Optimizer

        from isorobust.attacks.pgd import step_size

        outer = self

        class Scheduled(Optimizer):
            def __init__(self, x, stepsize):
                self.stepsize, self.t = stepsize, 0

            def __call__(self, gradient):
                self.t += 1
                return step_size(self.stepsize, self.t - 1, outer.steps, outer.schedule) * gradient

        fooled_at = torch.full_like(x, float("nan"))

        class Recording(fb.attacks.LinfPGD):
            def get_optimizer(self, x, stepsize):
                return Scheduled(x, stepsize)

            def get_loss_fn(self, model, labels):
                def loss_fn(inputs):
                    import eagerpy as ep

                    logits = model(inputs).raw
                    new = (logits.argmax(1) != labels.raw) & fooled_at.flatten(1)[:, 0].isnan()
                    fooled_at[new] = inputs.raw.detach()[new]
                    return ep.astensor(F.cross_entropy(logits, labels.raw, reduction="sum"))

                return loss_fn

        attack = Recording(steps=self.steps, rel_stepsize=self.rel_stepsize, abs_stepsize=self.abs_stepsize,
                           random_start=self.random_start)
        _, adv, _ = attack(fb.PyTorchModel(model, bounds=(0.0, 1.0)), x, y, epsilons=float(epsilon))
        earlier = ~fooled_at.flatten(1)[:, 0].isnan()
        return torch.where(earlier.view(-1, *[1] * (x.dim() - 1)), fooled_at, adv)


def bench_attack(data, n: int) -> list[tuple[str, str]]:
    model = trained_reference(data)
    x, y = data.test.x[:n], data.test.y[:n]
    t0 = time.perf_counter()
    # The old default's budget (40 constant steps of ε/30), against a plain loop with the same budget.
    same_budget = LinfPGD(steps=40, rel_stepsize=1 / 30, schedule="constant", keep_fooled=False)
    correct, masks = robust_masks(model, same_budget, x, y, EPSILONS, batch_size=1000, seed=0)
    ours = time.perf_counter() - t0
    attacked = sum(int(m.sum()) for m in [correct] + masks[:-1])  # survivors of the previous ε
    t0 = time.perf_counter()
    plain_curve = plain_pgd_sweep(model, x, y, EPSILONS)
    plain = time.perf_counter() - t0
    ours_curve = [m.float().mean().item() for m in masks]
    evaluations = n * len(EPSILONS)
    return [
        ("plain batched PGD loop, every sample at every ε",
         f"{evaluations / plain:,.0f} sample·ε/s ({plain:.1f} s for {n} samples × {len(EPSILONS)} ε)"),
        ("isorobust PGD sweep (foolbox, survivors only)",
         f"{evaluations / ours:,.0f} sample·ε/s ({ours:.1f} s), {plain / ours:.2f}× the plain loop's throughput"),
        ("  of which attacked (sample, ε) pairs", f"{attacked} of {evaluations}; per attacked pair "
         f"{attacked / ours:,.0f}/s vs plain {evaluations / plain:,.0f}/s = {(attacked / ours) / (evaluations / plain):.2f}×"),
        ("robust accuracy, plain loop", " ".join(f"{a:.4f}" for a in plain_curve)),
        ("robust accuracy, isorobust sweep", " ".join(f"{a:.4f}" for a in ours_curve)),
    ]


class CountingModel(torch.nn.Module):
    """Counts the samples that pass through the model's forward (one per attack iteration each)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model, self.rows = model, 0

    def forward(self, x):
        self.rows += x.shape[0]
        return self.model(x)


def matmul_macs_per_second(size: int = 1024, repeats: int = 10) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return repeats * size**3 / (time.perf_counter() - t0)


def stream_bytes_per_second(mib: int = 256, repeats: int = 5) -> float:
    """Memory bandwidth as an attack step sees it: c = a + b over arrays far larger than the caches
    (3 × 4 bytes moved per element: two reads, one write), best of ``repeats``."""
    n = mib * 2**20 // 4
    a, b, c = torch.rand(n), torch.rand(n), torch.empty(n)
    torch.add(a, b, out=c)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.add(a, b, out=c)
        best = min(best, time.perf_counter() - t0)
    return 3 * 4 * n / best


def mlp_bytes_per_iteration(model: torch.nn.Module, input_numel: int, batch: int = 1000) -> float:
    """The fp32 bytes one attack iteration must move per sample, at the least: the input-sized passes of a
    step (read x_adv for the forward; read the input gradient, x_adv and the clean x, write x_adv: 5), each
    hidden activation written by the forward and read twice by the backward (3 per unit), and the weights
    read by the forward and the backward once per batch (2 × weights / batch)."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    activations = sum(m.out_features for m in linears)
    weights = sum(m.weight.numel() + (m.bias.numel() if m.bias is not None else 0) for m in linears)
    return 4 * (5 * input_numel + 3 * activations + 2 * weights / batch)


def model_matmul_seconds(model: torch.nn.Module, batch: int = 1000, repeats: int = 20) -> float:
    """Seconds of the model's own matrix products for one attack iteration on ``batch`` samples, nothing
    else: per linear layer the forward x·Wᵀ + b and the backward to its input g·W, at the layer's real
    shapes (thin: 784×100, 100×100), best of ``repeats``. The rate these reach is the ceiling an attack on
    this model meets before any attack work; the 1024³ rate is one no 100-wide layer reaches."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    operands = [(torch.rand(batch, m.in_features), torch.rand(batch, m.out_features), m.weight.detach(),
                 m.bias.detach() if m.bias is not None else torch.zeros(m.out_features)) for m in linears]

    def once() -> None:
        for x, g, w, b in operands:
            torch.addmm(b, x, w.t())
            torch.mm(g, w)

    once()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        once()
        best = min(best, time.perf_counter() - t0)
    return best


def _layout_worker(state: dict, attack: str, x: torch.Tensor, y: torch.Tensor, start, results) -> None:
    """One of the study layout's processes: one torch thread, the sweep of ``attack`` on (x, y)."""
    torch.set_num_threads(1)
    from isorobust.attacks.apgd import APGD

    model = MLP()
    model.load_state_dict(state)
    pgd_cfg = OmegaConf.load(HERE.parent / "configs" / "attack" / "pgd.yaml")
    chosen = APGD() if attack == "apgd" else LinfPGD(**{k: v for k, v in pgd_cfg.items()
                                                        if not k.startswith("_") and k not in ("epsilons", "n_samples")})
    counted = CountingModel(model.eval())
    robust_masks(counted, chosen, x[:50], y[:50], EPSILONS[:2], batch_size=1000, seed=0)  # warm up
    counted.rows = 0
    start.wait()
    t0 = time.perf_counter()
    robust_masks(counted, chosen, x, y, EPSILONS, batch_size=1000, seed=0)
    results.put((counted.rows, time.perf_counter() - t0))


def study_layout_rate(model: torch.nn.Module, attack: str, x: torch.Tensor, y: torch.Tensor,
                      processes: int = 2) -> tuple[float, float]:
    """The machine's attack throughput as the studies use it (hydra's joblib launcher: ``processes`` jobs of one
    torch thread each): the same sweep in each process at once, started together. Returns (sample·iterations
    per second summed over the processes, the slowest process's seconds)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    start, results = ctx.Barrier(processes), ctx.Queue()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    workers = [ctx.Process(target=_layout_worker, args=(state, attack, x, y, start, results))
               for _ in range(processes)]
    for w in workers:
        w.start()
    done = [results.get() for _ in workers]
    for w in workers:
        w.join()
    rows, slowest = sum(r for r, _ in done), max(sec for _, sec in done)
    return rows / slowest, slowest


def mlp_macs_per_iteration(model: torch.nn.Module) -> int:
    """Forward + backward to the input of a stack of linear layers: 2 × the weights' size per sample
    (the attacks need no weight gradients)."""
    return 2 * sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def bench_attack_strength(data, n: int, n_autoattack: int) -> list[tuple[str, str]]:
    """The full-strength attacks: default PGD and apgd sweeps over the grid, AutoAttack on
    ``n_autoattack`` images at 4 radii with per-component times, each as attacked
    (sample, ε, iteration) per second next to the model's arithmetic limit."""
    from isorobust.attacks.apgd import APGD
    from isorobust.attacks.autoattack import AutoAttack

    model = trained_reference(data)
    macs = mlp_macs_per_iteration(model)
    rate = matmul_macs_per_second()
    arithmetic = rate / macs
    moved = mlp_bytes_per_iteration(model, data.test.x[0].numel())
    bandwidth = stream_bytes_per_second()
    traffic = bandwidth / moved
    limit = min(arithmetic, traffic)  # the roofline: whichever the step runs into first
    binding = "arithmetic" if arithmetic <= traffic else "memory traffic"
    own = 1000 / model_matmul_seconds(model)  # sample·iterations/s of the model's matmuls alone, batch 1000
    x, y = data.test.x[:n], data.test.y[:n]
    rows = [("machine's fp32 matmul rate (1024³, torch threads)", f"{rate / 1e9:.1f} GMAC/s"),
            ("model cost per attack iteration (forward + backward to the input)",
             f"{macs / 1e3:.0f} kMAC per sample → arithmetic limit {arithmetic:,.0f} sample·iterations/s"),
            ("machine's memory bandwidth (c = a + b on 256 MiB arrays)", f"{bandwidth / 1e9:.1f} GB/s"),
            ("bytes an attack iteration must move per sample (see mlp_bytes_per_iteration)",
             f"{moved / 1e3:.1f} kB → memory-traffic limit {traffic:,.0f} sample·iterations/s"),
            ("roofline: the limit that binds", f"{binding}, {limit:,.0f} sample·iterations/s"),
            ("the model's own matmuls alone (forward + backward to the input at its real thin shapes, 1000 "
             "samples, no attack work)", f"{own:,.0f} sample·iterations/s = {macs * own / 1e9:.1f} GMAC/s, "
             f"{own / limit:.0%} of the binding limit: the ceiling of any attack on this model")]
    pgd_cfg = OmegaConf.load(HERE.parent / "configs" / "attack" / "pgd.yaml")
    pgd = LinfPGD(**{k: v for k, v in pgd_cfg.items() if not k.startswith("_") and k not in ("epsilons", "n_samples")})
    previous = FoolboxLinfPGD(**{k: v for k, v in pgd_cfg.items() if not k.startswith("_")
                                 and k not in ("epsilons", "n_samples")})
    for name, attack, grid, xs, ys in [
        ("default PGD sweep, previous (foolbox, every sample every step)", previous, EPSILONS, x, y),
        ("default PGD sweep (" + pgd.describe() + f"), {n} images × {len(EPSILONS)} ε", pgd, EPSILONS, x, y),
        (f"apgd sweep (APGD-CE + APGD-T, 100 iterations, 9 targets), {n} images × {len(EPSILONS)} ε",
         APGD(), EPSILONS, x, y),
    ]:
        counted = CountingModel(model)
        t0 = time.perf_counter()
        _, masks = robust_masks(counted, attack, xs, ys, grid, batch_size=1000, seed=0)
        sec = time.perf_counter() - t0
        rows.append((name, f"{sec:.1f} s, {counted.rows / sec:,.0f} sample·iterations/s = "
                           f"{counted.rows / sec / limit:.0%} of the binding limit ({binding}), "
                           f"{counted.rows / sec / own:.0%} of the model's own matmul rate; robust accuracy "
                           + " ".join(f"{100 * m.float().mean().item():.1f}" for m in masks) + " %"))
    for attack in ("pgd", "apgd"):  # the same sweeps as the studies run them: 2 jobs of 1 thread at once
        rate, sec = study_layout_rate(model, attack, x, y)
        rows.append((f"{'default PGD' if attack == 'pgd' else 'apgd'} sweep in the studies' layout (2 processes "
                     f"of 1 torch thread, each the whole sweep on the {n} images, at once)",
                     f"{sec:.1f} s, {rate:,.0f} sample·iterations/s summed = {rate / limit:.0%} of the binding "
                     f"limit ({binding}), {rate / own:.0%} of the model's own matmul rate"))
    aa = AutoAttack()
    grid = [0.05, 0.1, 0.2, 0.3]
    xs, ys = data.test.x[:n_autoattack], data.test.y[:n_autoattack]
    t0 = time.perf_counter()
    robust_masks(model, aa, xs, ys, grid, batch_size=1000, seed=0)
    total = time.perf_counter() - t0
    rows.append((f"AutoAttack standard, {n_autoattack} images × ε {grid}", f"{total:.1f} s in all"))
    iterations = {"apgd-ce": 100, "apgd-t": 100, "fab-t": 100 * 9, "square": 5000}
    for component in ["apgd-ce", "apgd-t", "fab-t", "square"]:
        for eps in grid:
            runs = [(m, s) for c, e, m, s in aa.runs if c == component and e == eps]
            if not runs:
                continue
            samples, sec = sum(m for m, _ in runs), sum(s for _, s in runs)
            work = samples * iterations[component]  # upper bound: broken samples leave APGD early
            kind = "queries (forward only)" if component == "square" else "sample·iterations"
            rows.append((f"  {component} at ε={eps:g}", f"{sec:.1f} s on {samples} samples"
                         + ("" if component != "apgd-t" else " (summed over targets)")
                         + f"; at most {work / max(sec, 1e-9):,.0f} {kind}/s"))
    return rows


def bench_fab(data, n: int, eps: float = 0.05) -> list[tuple[str, str]]:
    """FAB-T as AutoAttack runs it (100 iterations, 9 targets, L∞), ours (eager and compiled) against
    torchattacks' on the same images side by side: the images APGD-CE + APGD-T left robust among the first
    ``n`` test images, which is what FAB-T gets inside AutoAttack (so nearly every row runs all iterations)."""
    import torchattacks as ta

    from isorobust.attacks.apgd import apgd_ce_then_targeted
    from isorobust.attacks.fab import fab_targeted

    model = trained_reference(data)
    for p in model.parameters():
        p.requires_grad_(False)
    x, y = data.test.x[:n], data.test.y[:n]
    torch.manual_seed(0)
    with torch.no_grad():
        robust = model(apgd_ce_then_targeted(model, x, y, eps)).argmax(dim=1) == y
    x, y = x[robust], y[robust]
    t0 = time.perf_counter()
    fab_targeted(model, x[:8], y[:8], eps, steps=2, compile=True)  # compiles fab_step_fused once
    compile_s = time.perf_counter() - t0
    limit = matmul_macs_per_second() / (1.5 * mlp_macs_per_iteration(model))  # forward + backward + forward
    out, rows = {}, []

    def theirs(xs, ys):
        attack = ta.FAB(model, norm="Linf", eps=eps, steps=100, multi_targeted=True, n_classes=10, n_restarts=1)
        attack.n_target_classes = 9
        return attack(xs, ys)

    for name, run in [("torchattacks FAB (multi-targeted)", theirs),
                      ("isorobust fab_targeted, eager", lambda xs, ys: fab_targeted(model, xs, ys, eps)),
                      ("isorobust fab_targeted, compiled", lambda xs, ys: fab_targeted(model, xs, ys, eps,
                                                                                         compile=True))]:
        t0 = time.perf_counter()
        adv = run(x, y)
        sec = time.perf_counter() - t0
        with torch.no_grad():
            still = (model(adv).argmax(dim=1) == y) | ((adv - x).flatten(1).abs().amax(dim=1) > eps + 1e-6)
        work = x.shape[0] * 9 * 100  # sample·target·iterations; a broken sample ends its rows early
        out[name] = sec
        rows.append((f"{name}, {x.shape[0]} images APGD left robust at ε = {eps:g}",
                     f"{sec:.1f} s, {work / sec:,.0f} sample·iterations/s (≤ {work / sec / limit:.0%} of the "
                     f"arithmetic limit of forward + backward + forward); still robust {int(still.sum())}"))
    rows.append(("torch.compile of the FAB step, once per process (not in the rows above)", f"{compile_s:.1f} s"))
    base = out["torchattacks FAB (multi-targeted)"]
    rows.append(("speed-up over torchattacks (same images, same budget): eager, compiled",
                 f"{base / out['isorobust fab_targeted, eager']:.1f}×, "
                 f"{base / out['isorobust fab_targeted, compiled']:.1f}×"))
    return rows


def bench_autoattack_before_after(data, n: int) -> list[tuple[str, str]]:
    """AutoAttack as the previous version ran it (torchattacks' MultiAttack of its APGD, APGD-T, FAB-T
    and Square) against this one, on the same images and radii, side by side."""
    import torchattacks as ta

    from isorobust.attacks.base import Attack
    from isorobust.attacks.autoattack import AutoAttack

    class PreviousAutoAttack(Attack):
        name = "autoattack-previous"

        def perturb(self, model, x, y, epsilon):
            common = dict(norm="Linf", eps=epsilon, seed=0)
            apgdt = ta.APGDT(model, steps=100, n_classes=10, n_restarts=1, **common)
            fab = ta.FAB(model, steps=100, multi_targeted=True, n_classes=10, n_restarts=1, **common)
            apgdt.n_target_classes = fab.n_target_classes = 9
            return ta.MultiAttack([ta.APGD(model, steps=100, loss="ce", n_restarts=1, **common), apgdt, fab,
                                   ta.Square(model, n_queries=5000, n_restarts=1, **common)])(x, y)

    model = trained_reference(data)
    x, y = data.test.x[:n], data.test.y[:n]
    grid = [0.05, 0.1, 0.2, 0.3]
    out = {}
    for name, attack in [("previous (torchattacks MultiAttack)", PreviousAutoAttack()), ("this version", AutoAttack())]:
        t0 = time.perf_counter()
        _, masks = robust_masks(model, attack, x, y, grid, batch_size=1000, seed=0)
        out[name] = (time.perf_counter() - t0, [m.float().mean().item() for m in masks])
    (t_old, acc_old), (t_new, acc_new) = out.values()
    return [(f"AutoAttack, {n} images × ε {grid}: {name}",
             f"{sec:.1f} s; robust accuracy " + " ".join(f"{100 * a:.1f}" for a in acc) + " %")
            for name, (sec, acc) in out.items()] + [("speed-up", f"{t_old / t_new:.1f}×")]


def trained_reference(data) -> torch.nn.Module:
    """The reference MLP after one epoch of Adam: a real, non-trivial model to attack."""
    torch.manual_seed(0)
    model = MLP()
    opt = make_adam(model, 1e-3)
    for i in range(0, len(data.train), 100):
        loss = F.cross_entropy(model(data.train.x[i : i + 100]), data.train.y[i : i + 100])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def crown_macs_per_sample(model: torch.nn.Module) -> int:
    """Multiply-adds of full CROWN per sample and radius on a stack of linear layers: for every hidden
    pre-activation (2 × its width rows: lower and upper bound) and for the margins (classes − 1 rows),
    one product with every weight matrix below it, the first included (the input-wide one)."""
    weights = [m.weight.shape for m in model.modules() if isinstance(m, torch.nn.Linear)]
    total = 0
    for k in range(1, len(weights)):
        rows = weights[-1][0] - 1 if k == len(weights) - 1 else 2 * weights[k][0]
        total += rows * sum(out * inp for out, inp in weights[:k])
    return total


def bench_certify(data, n: int, eps: float = 0.01) -> list[tuple[str, str]]:
    """Certified accuracy of ``n`` test images at one ε by IBP and by CROWN (the one-epoch reference MLP,
    the default ``model=mlp``), CROWN next to its arithmetic limit at the machine's matmul rate."""
    from isorobust.certification import Certifier

    model = trained_reference(data)
    x, y = data.test.x[:n], data.test.y[:n]
    load_before = os.getloadavg()[0]
    macs, rate = crown_macs_per_sample(model), matmul_macs_per_second()
    rows = [("machine's fp32 matmul rate (1024³, torch threads)", f"{rate / 1e9:.1f} GMAC/s"),
            ("full CROWN per image and radius (784→100, 4×100 tanh, 10)",
             f"{macs / 1e6:.1f} M multiply-adds → arithmetic limit {n * macs / rate:.1f} s per radius for {n} images")]
    for method, batch in (("ibp", 1000), ("crown", 50)):
        certifier = Certifier(method=method, epsilons=[eps], batch_size=batch, radius_tolerance=None)
        t0, c0 = time.perf_counter(), time.process_time()
        result = certifier.run(model, x, y)
        sec, cpu = time.perf_counter() - t0, time.process_time() - c0
        text = (f"{sec:.2f} s wall ({cpu:.2f} s CPU), {1e3 * sec / n:.2f} ms per image; certified "
                f"{100 * result.certified_accuracy()[0]:.2f} % (clean {100 * result.clean_accuracy:.2f} %)")
        if method == "crown":
            text += f"; {n * macs / rate / sec:.0%} of the arithmetic limit"
            one_radius = sec
        rows.append((f"{method.upper()}, {n} images × ε={eps:g} (batch {batch})", text))
    # The default certify=crown: 5 radii by a binary search per image, then each image's radius.
    grid = Certifier(method="crown").epsilons
    for tolerance in (None, Certifier.radius_tolerance):
        t0 = time.perf_counter()
        result = Certifier(method="crown", radius_tolerance=tolerance).run(model, x, y)
        sec = time.perf_counter() - t0
        per = result.evaluations / n
        what = (f"CROWN default, {n} images × {len(grid)} radii" if tolerance is None else
                f"CROWN default + per-image radii to {100 * tolerance:g} %, {n} images")
        text = (f"{sec:.1f} s wall; {per:.2f} bounds per image ({sec / (one_radius * per):.2f}× the one-radius "
                f"row per bound) against {len(grid)} for every radius one by one ({len(grid) * one_radius:.0f} s "
                f"at the row above)")
        if tolerance is not None:
            text += f"; median radius {result.median_radius:.4f}"
        rows.append((what, text))
    # Other work on the machine slows the wall time, not the CPU time (much): say how loaded it was.
    rows.append(("load average (1 min) before / after", f"{load_before:.1f} / {os.getloadavg()[0]:.1f} "
                 f"on {os.cpu_count()} cores"))
    return rows


def bench_tight(data, n: int, n_bab: int, eps: float = 0.01) -> list[tuple[str, str]]:
    """α-CROWN per optimisation step and branch and bound per image on the one-epoch reference MLP, on the
    images CROWN leaves open at ``eps``; α-CROWN next to its arithmetic limit (a step is a CROWN pass with an
    autograd graph and its backward pass: about 3× CROWN's multiply-adds)."""
    from isorobust.certification import AlphaOptions, Certifier, alpha_crown_margin_bounds, certifiable_layers
    from isorobust.certification.search import in_batches

    model = trained_reference(data)
    for p in model.parameters():
        p.requires_grad_(False)
    x, y = data.test.x[:n], data.test.y[:n]
    layers = certifiable_layers(model)
    macs, rate = crown_macs_per_sample(model), matmul_macs_per_second()
    crown = Certifier(method="crown", epsilons=[eps], radius_tolerance=None).run(model, x, y)
    todo = (crown.correct & ~crown.certified[0]).nonzero()[:, 0]
    rows = [(f"CROWN, {n} images × ε={eps:g}", f"certified {100 * crown.certified_accuracy()[0]:.2f} %; "
             f"{todo.numel()} correct images left open")]
    for intermediate in (False, True):
        options = AlphaOptions(iterations=30, lr=0.1, intermediate=intermediate)
        proved = torch.zeros(todo.numel(), dtype=torch.bool)

        def bound(part: slice) -> None:
            picked = todo[part]
            proved[part] = alpha_crown_margin_bounds(layers, x[picked], y[picked], eps, options).min(1).values > 0

        t0 = time.perf_counter()
        in_batches(todo.numel(), 50, x.device, bound)
        sec = time.perf_counter() - t0
        per_step = sec / (todo.numel() * options.iterations)
        limit = 3 * macs / rate if intermediate else 3 * macs / rate * (10 - 1) / (10 - 1 + 8 * 100)
        rows.append((f"α-CROWN, 30 steps, hidden boxes {'optimised' if intermediate else 'from CROWN'}, on those "
                     f"{todo.numel()} images", f"{sec:.1f} s wall, {1e3 * per_step:.2f} ms per image and step "
                     f"(arithmetic limit ~{1e3 * limit:.2f} ms: {limit / per_step:.0%}); proved "
                     f"{int(proved.sum())} more ({100 * (crown.certified_accuracy()[0] + proved.float().mean().item() * todo.numel() / n):.2f} % certified)"))
    certifier = Certifier(method="bab", epsilons=[eps], radius_tolerance=None, bab={"timeout": 10.0})
    t0 = time.perf_counter()
    result = certifier.run(model, x[:n_bab], y[:n_bab])
    sec = time.perf_counter() - t0
    row = result.tightened["per_epsilon"][0]
    ran = max(1, row["bab_ran_on"])
    rows.append((f"branch and bound (timeout 10 s), first {n_bab} images × ε={eps:g}",
                 f"{sec:.1f} s wall in all; {row['bab_seconds'] / ran:.1f} s per image it ran on ({row['bab_ran_on']}: "
                 f"{row['bab_verified']} verified, {row['bab_falsified']} falsified, {row['bab_unknown']} unknown; "
                 f"{row['bab_domains'] / ran:.0f} sub-domains per image); certified {100 * result.certified_accuracy()[0]:.2f} %, "
                 f"unknown {100 * result.unknown()[0]:.2f} %"))
    return rows


def peak_memory_mib(proc: subprocess.Popen) -> float:
    """Wait for ``proc``; its peak resident memory in MiB (Linux: the high-water mark VmHWM of its own
    address space, read until it exits; 0 elsewhere). Not ru_maxrss: a child forked from this large
    process starts its count at our size, before exec replaces it."""
    peak = 0
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]))  # kB
        except OSError:
            pass
        time.sleep(0.2)
    return peak / 1024


def bench_end_to_end(extra: list[str], certify: bool = False) -> list[tuple[str, str]]:
    """The default ``isorobust train +reg=isometric`` (wall time, peak memory); with ``certify``, the same
    run again with ``certify=crown`` right after it: what certification adds to the default run."""
    import json

    variants = [[], ["certify=crown"]] if certify else [[]]
    walls, seconds, peaks = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i, more in enumerate(variants):
            cmd = [sys.executable, "-m", "isorobust", "train", "+reg=isometric", f"hydra.run.dir={tmp}/run{i}",
                   *extra, *more]
            t0 = time.perf_counter()
            with open(Path(tmp) / f"stderr{i}.txt", "w") as err:
                proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
                peaks.append(peak_memory_mib(proc))
            walls.append(time.perf_counter() - t0)
            if proc.returncode != 0:
                last = (Path(tmp) / f"stderr{i}.txt").read_text().strip().splitlines()[-1:]
                raise SystemExit(f"end-to-end run failed: {last}")
            seconds.append(json.loads((Path(tmp) / f"run{i}" / "metrics.json").read_text())["seconds"])
    first = seconds[0]
    rows = [
        ("command", "`isorobust train +reg=isometric " + " ".join(extra) + "`"),
        ("wall time", f"{walls[0]:.1f} s (train {first['train']:.1f} s, evaluate {first['evaluate']:.1f} s, "
                      f"attack {first['attack']:.1f} s, sanity checks {first.get('checks', 0.0):.1f} s; "
                      "the rest is start-up and data loading); target < 180 s"),
    ]
    if certify:
        rows.append(("the same + `certify=crown` (whole test split, 5 radii, per-image radii to 2 %)",
                     f"{walls[1]:.1f} s wall, {walls[1] - walls[0]:+.1f} s over the run above; certification "
                     f"itself {seconds[1]['certify']:.1f} s (metrics.json); target: at most +120 s"))
    rows.append(("peak RSS (VmHWM)", " / ".join(f"{p:.0f} MiB" for p in peaks)
                 + (" (without / with certify=crown)" if certify else "") + "; target ≤ 2048 MiB"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run, not for the record)")
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--only-attacks", action="store_true", help="only the full-strength attack rows")
    ap.add_argument("--only-certify", action="store_true", help="only the certified-bound rows (IBP and CROWN)")
    ap.add_argument("--n-certify", type=int, default=None, help="images to certify (default 10000)")
    ap.add_argument("--only-tight", action="store_true", help="only the α-CROWN and branch-and-bound rows")
    ap.add_argument("--n-tight", type=int, default=None, help="images for α-CROWN (default 1000)")
    ap.add_argument("--n-bab", type=int, default=None, help="images for branch and bound (default 200)")
    ap.add_argument("--n-strong", type=int, default=None, help="images for the PGD/apgd sweeps (default 1000)")
    ap.add_argument("--n-autoattack", type=int, default=None, help="images for AutoAttack (default 1000)")
    ap.add_argument("--n-compare", type=int, default=None, help="images for AutoAttack before/after (default 300)")
    ap.add_argument("--output", type=Path, default=HERE / "RESULTS.md")
    args = ap.parse_args()

    data_root = os.environ.get("ISOROBUST_DATA", "data")
    data = load_mnist(root=data_root, download=False)
    rounds, steps, n_attack = (4, 10, 200) if args.quick else (80, 20, 10000)
    n_certify = args.n_certify or (500 if args.quick else 10000)
    if args.only_tight:
        n_tight, n_bab = args.n_tight or (200 if args.quick else 1000), args.n_bab or (30 if args.quick else 200)
        sections = [(f"Tight certified bounds at ε = 0.01, one-epoch reference MLP: α-CROWN on what CROWN left "
                     f"open of {n_tight} test images, branch and bound on the first {n_bab}",
                     bench_tight(data, n_tight, n_bab))]
        args.only_attacks = args.only_certify = True
        args.skip_e2e = True
    if args.only_certify:  # the certified-bound rows alone, and what certify=crown adds to the default run
        args.only_attacks = True
    sections = sections if args.only_tight else [] if args.only_attacks else [
        ("Training throughput (reference MLP, batch 100, 1 step = forward + backward + Adam)",
         bench_training(data.train.x, data.train.y, rounds, steps))]
    if not args.only_attacks:
        sections.append((f"PGD sweep machinery over the 10-ε grid, {n_attack} test samples (40 constant steps of ε/30, "
                         "random start, the same budget on both sides)", bench_attack(data, n_attack)))
    n_strong, n_aa = (200, 100) if args.quick else (1000, 1000)
    n_strong, n_aa = args.n_strong or n_strong, args.n_autoattack or n_aa
    if not args.only_certify:
        sections.append((f"Full-strength attacks on {n_strong} test images (AutoAttack on {n_aa}), "
                         "one-epoch reference MLP", bench_attack_strength(data, n_strong, n_aa)))
        sections.append((f"FAB-T, this version against torchattacks' (reference MLP, first {n_strong} test images)",
                         bench_fab(data, n_strong)))
        n_compare = args.n_compare or (100 if args.quick else 300)
        sections.append((f"AutoAttack before and after (same one-epoch MLP, first {n_compare} test images)",
                         bench_autoattack_before_after(data, n_compare)))
    if (not args.only_attacks or args.only_certify) and not args.only_tight:
        sections.append((f"Certified bounds on {n_certify} test images at one radius, one-epoch reference MLP",
                         bench_certify(data, n_certify)))
    if not args.skip_e2e and (not args.only_attacks or args.only_certify):
        extra = ["dataset.train_size=2000", "dataset.test_size=500", "trainer.epochs=1"] if args.quick else []
        sections.append(("End to end: default run with the regularizer, then with certify=crown",
                         bench_end_to_end(extra, certify=True)))

    lines = [
        "# isorobust benchmarks",
        "",
        f"Generated by `python benchmarks/bench.py {' '.join(sys.argv[1:])}` on "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}.",
        "",
        "Ratios compare runs measured side by side in this one run (interleaved rounds, median).",
    ]
    for title, rows in sections:
        lines += ["", f"## {title}", "", "| what | result |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in rows]
    lines += [] if args.only_certify else [
        "",
        "Notes: the isorobust PGD sweep attacks, at each ε, only the samples still robust at the previous ε "
        "(a success inside a smaller ball is a success inside every larger one), so it is at least as strong "
        "as the plain loop's independent attacks and monotone by construction; its robust-accuracy row can "
        "differ from the plain loop's by the random start only.",
    ]
    text = "\n".join(lines) + "\n"
    write_text(args.output, text)
    print(text)


if __name__ == "__main__":
    main()
