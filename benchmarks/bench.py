"""Side-by-side speed and memory measurements of isorobust; writes benchmarks/RESULTS.md.

    python benchmarks/bench.py                 # everything (about 6 minutes on 2 cores)
    python benchmarks/bench.py --quick         # small sizes, for a smoke run
    python benchmarks/bench.py --skip-e2e      # without the full `isorobust train` run

Every figure is a ratio of two things measured in the same process, interleaved in rounds
(A B A B ...), so that load from elsewhere hits both sides alike; the median round counts.
Needs ISOROBUST_DATA (MNIST) for the attack and end-to-end parts.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
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

from isorobust.data import load_mnist
from isorobust.evaluation.attacks import LinfPGD, robust_masks
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


def bench_attack(data, n: int) -> list[tuple[str, str]]:
    torch.manual_seed(0)
    model = MLP()
    opt = make_adam(model, 1e-3)
    for i in range(0, len(data.train), 100):  # one epoch: a real, non-trivial model to attack
        loss = F.cross_entropy(model(data.train.x[i : i + 100]), data.train.y[i : i + 100])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x, y = data.test.x[:n], data.test.y[:n]
    t0 = time.perf_counter()
    correct, masks = robust_masks(model, LinfPGD(), x, y, EPSILONS, batch_size=1000, seed=0)
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


def bench_end_to_end(extra: list[str]) -> list[tuple[str, str]]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "isorobust", "train", "+reg=isometric", f"hydra.run.dir={tmp}/run", *extra]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"end-to-end run failed: {proc.stderr.strip().splitlines()[-1:]}")
        import json

        seconds = json.loads((Path(tmp) / "run" / "metrics.json").read_text())["seconds"]
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return [
        ("command", "`isorobust train +reg=isometric " + " ".join(extra) + "`"),
        ("wall time", f"{wall:.1f} s (train {seconds['train']:.1f} s, evaluate {seconds['evaluate']:.1f} s, "
                      f"attack {seconds['attack']:.1f} s, sanity checks {seconds.get('checks', 0.0):.1f} s; "
                      "the rest is start-up and data loading); target < 180 s"),
        ("peak RSS", f"{peak_kib / 1024:.0f} MiB; target ≤ 2048 MiB"),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run, not for the record)")
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--output", type=Path, default=HERE / "RESULTS.md")
    args = ap.parse_args()

    data_root = os.environ.get("ISOROBUST_DATA", "data")
    data = load_mnist(root=data_root, download=False)
    rounds, steps, n_attack = (4, 10, 200) if args.quick else (80, 20, 10000)
    sections = [("Training throughput (reference MLP, batch 100, 1 step = forward + backward + Adam)",
                 bench_training(data.train.x, data.train.y, rounds, steps))]
    sections.append((f"PGD sweep over the 10-ε grid, {n_attack} test samples (40 steps of ε/30, random start)",
                     bench_attack(data, n_attack)))
    if not args.skip_e2e:
        extra = ["dataset.train_size=2000", "dataset.test_size=500", "trainer.epochs=1"] if args.quick else []
        sections.append(("End to end: default run with the regularizer", bench_end_to_end(extra)))

    lines = [
        "# isorobust benchmarks",
        "",
        f"Generated by `python benchmarks/bench.py{' --quick' if args.quick else ''}` on "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}.",
        "",
        "Ratios compare runs measured side by side in this one run (interleaved rounds, median).",
    ]
    for title, rows in sections:
        lines += ["", f"## {title}", "", "| what | result |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in rows]
    lines += [
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
