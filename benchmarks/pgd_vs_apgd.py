"""Is the default PGD at full strength? Default worst case (fgsm + pgd) against APGD-CE + APGD-T.

For each saved run given, on its test split over an ε grid (default: the default eval grid), the
per-sample worst case of FGSM and of each PGD setting is compared with the per-sample worst case
of APGD-CE and APGD-T (``attack=apgd``, 100 iterations each, 9 targets). The tolerance is the
one of issue 11: 0.5 point plus 2·sqrt(p(1-p)/n). Writes a markdown table (``--out``).

    python benchmarks/pgd_vs_apgd.py outputs/ref/b0 outputs/ref/b01 --out benchmarks/PGD_VS_APGD.md
"""
from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from isorobust import io
from isorobust.models import load_model
from isorobust.attacks.apgd import APGD
from isorobust.attacks.base import FGSM, LinfPGD, robust_masks
from isorobust.config import resolve_device

_PGD = OmegaConf.load(Path(__file__).parents[1] / "configs" / "attack" / "pgd.yaml")
NEW_DEFAULT = f"{_PGD.steps}:{_PGD.rel_stepsize}:{_PGD.restarts}:{_PGD.schedule}"  # configs/attack/pgd.yaml
DEFAULT_GRID = [float(e) for e in OmegaConf.load(Path(__file__).parents[1] / "configs" / "train.yaml").eval.epsilons]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run directories (model.pt, .hydra/config.yaml)")
    p.add_argument("--n", type=int, default=None, help="first N test images (default: all)")
    p.add_argument("--pgd", action="append", default=None,
                   help="PGD setting steps:rel_stepsize[:restarts[:schedule]], repeatable (default: the old and the new default)")
    p.add_argument("--epsilons", type=float, nargs="+", default=DEFAULT_GRID)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    from hydra.utils import instantiate

    device = resolve_device(args.device)
    settings = args.pgd or ["40:0.0333333333:1:constant", NEW_DEFAULT]
    pgds = {}
    for s in settings:
        parts = s.split(":")
        steps, rel, restarts, schedule = parts + ["1", "constant"][len(parts) - 2:]
        label = f"pgd {steps}×{float(rel):.4g}ε {schedule}" + (f" ×{restarts} restarts" if int(restarts) > 1 else "")
        pgds[label] = LinfPGD(steps=int(steps), rel_stepsize=float(rel), restarts=int(restarts), schedule=schedule)
    eps = sorted(args.epsilons)
    lines = ["# Default PGD vs APGD-CE + APGD-T", "",
             f"Command: `python benchmarks/pgd_vs_apgd.py {' '.join(sys.argv[1:])}`", "",
             f"Machine: {platform.machine()}, torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads.",
             "Tolerance (issue 11): worst(fgsm, pgd) − worst(apgd) ≤ 0.5 + 2·sqrt(p(1−p)/n) points, p = APGD's accuracy.", ""]
    all_ok = True
    for run in args.runs:
        cfg = OmegaConf.load(Path(run) / ".hydra" / "config.yaml")
        data = instantiate(cfg.dataset).to(device)
        model = load_model(Path(run) / "model.pt").to(device).eval()
        x, y = data.test.x, data.test.y
        if args.n:
            x, y = x[: args.n], y[: args.n]
        n = x.shape[0]
        times, masks = {}, {}
        for name, attack in {"fgsm": FGSM(), **pgds, "apgd": APGD()}.items():
            t0 = time.perf_counter()
            _, masks[name] = robust_masks(model, attack, x, y, eps, args.batch_size, int(cfg.seed))
            times[name] = time.perf_counter() - t0
        reg = cfg.get("reg")
        label = f"{run}: reg {'none' if reg is None else f'{reg.name} β={reg.weight:g}, K={reg.scale:g}'}, seed {cfg.seed}, {n} test images"
        lines += [f"## {label}", "",
                  "| ε | fgsm | " + " | ".join(pgds) + " | apgd | " + " | ".join(f"worst(fgsm, {k}) − apgd" for k in pgds) + " | tolerance |",
                  "|---:|" + "---:|" * (2 * len(pgds) + 3)]
        for i, e in enumerate(eps):
            acc = {k: 100 * m[i].float().mean().item() for k, m in masks.items()}
            pa = acc["apgd"] / 100
            tol = 0.5 + 100 * 2 * math.sqrt(pa * (1 - pa) / n)
            gaps = []
            for k in pgds:
                worst = 100 * (masks["fgsm"][i] & masks[k][i]).float().mean().item()
                gap = worst - acc["apgd"]
                gaps.append(f"{gap:+.2f}" + ("" if gap <= tol else " ✗"))
                if k == list(pgds)[-1] and gap > tol:
                    all_ok = False
            lines.append(f"| {e:.4g} | {acc['fgsm']:.2f} | " + " | ".join(f"{acc[k]:.2f}" for k in pgds)
                         + f" | {acc['apgd']:.2f} | " + " | ".join(gaps) + f" | {tol:.2f} |")
        lines += ["", "Seconds for the whole grid: " + ", ".join(f"{k} {v:.1f}" for k, v in times.items()), ""]
        print("\n".join(lines[-len(eps) - 6:]), flush=True)
    lines.append(f"Last PGD setting within tolerance everywhere: {'yes' if all_ok else 'NO'}")
    text = "\n".join(lines) + "\n"
    if args.out:
        io.write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
