"""Robustness tables: run every configured attack over the ε grid, long-format rows, markdown."""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from isorobust.attacks.base import AttackCost, FoolboxAttack, robust_accuracy, robust_masks
from isorobust.attacks.progress import ProgressFolder
from isorobust.data import Split
from isorobust.rundir import LEVEL, TABLE_COLUMNS, TREE_DISTANCE, WORST_CASE
from isorobust.metrics.clean import predict
from isorobust.metrics.hierarchy import mean_error_tree_distance, model_hierarchy
from isorobust.models.hierarchical import LevelReadout

log = logging.getLogger(__name__)

def robustness_table(
    model: Any,
    test: Split,
    attacks: Mapping[str, FoolboxAttack],
    epsilons: Sequence[float],
    n_samples: int | None,
    batch_size: int,
    seed: int,
    meta: Mapping[str, Any],
    progress: bool | None = None,
    broken: dict[float, torch.Tensor] | None = None,
    costs: list[dict[str, Any]] | None = None,
    attack_state: ProgressFolder | None = None,
) -> pd.DataFrame:
    """One row per (attack, ε) with the columns of ``TABLE_COLUMNS`` (and ``meta`` filled in). ``broken``,
    when given, receives per L∞ radius the samples some attack broke there (misclassified included), as long
    as the most samples an attack covered there (an attack on the first N only: N), for certification to skip
    (``certify=alpha_crown``) and to bound from above on the same images.
    ``costs``, when given, receives one ``AttackCost.record()`` per (attack, ε). ``attack_state``, when
    given, keeps each attack's state after every ε and resumes from it (``attacks.progress``)."""
    x, y = (test.x, test.y) if n_samples is None else (test.x[:n_samples], test.y[:n_samples])
    rows = []
    outcomes: dict[tuple, list[tuple]] = {}  # (norm, ε) -> per attack: (name, robust mask, clean accuracy)

    def add_rows(name: str, norm: str, clean: float, grid: Sequence[float], masks: list) -> None:
        for eps, mask in zip(grid, masks):
            rows.append({
                **meta, "attack": name, "norm": norm, "epsilon": float(eps),
                "n_samples": int(mask.shape[0]), "clean_accuracy": clean, "robust_accuracy": robust_accuracy(mask),
            })

    for name, attack in tqdm(attacks.items(), desc="attacks", disable=None if progress is None else not progress):
        grid = sorted(float(e) for e in attack.epsilons) if attack.epsilons else list(epsilons)
        n = x.shape[0] if attack.n_samples is None else min(int(attack.n_samples), x.shape[0])
        spent: list[AttackCost] | None = [] if costs is not None else None
        key = name + (f"@level{meta[LEVEL]}" if LEVEL in meta else "")
        saved = None if attack_state is None else attack_state.attack(key)
        correct, masks = robust_masks(model, attack, x[:n], y[:n], grid, batch_size, seed, spent, saved)
        if costs is not None:
            costs.extend({**c.record(), **({LEVEL: meta[LEVEL]} if LEVEL in meta else {})} for c in spent)
        clean = robust_accuracy(correct)
        log.info("%s: clean %.4f, robust %s", name, clean, " ".join(f"{robust_accuracy(m):.4f}" for m in masks))
        add_rows(name, attack.norm, clean, grid, masks)
        for eps, mask in zip(grid, masks):
            outcomes.setdefault((attack.norm, float(eps)), []).append((name, mask, clean))
            if broken is not None and attack.norm == "linf":
                # as long as the most samples an attack covered at this ε: the length says how many were attacked
                hit = broken.get(float(eps), torch.zeros(0, dtype=torch.bool))
                if hit.shape[0] < mask.shape[0]:
                    hit = torch.cat([hit, torch.zeros(mask.shape[0] - hit.shape[0], dtype=torch.bool)])
                hit[: mask.shape[0]] |= ~mask.cpu()
                broken[float(eps)] = hit
    norms = {norm for norm, _ in outcomes}
    n_all = x.shape[0]
    # Worst case per (norm, ε) over every attack that ran there on all samples: the headline. Where an
    # attack ran on the first N only (AutoAttack on a CPU budget), also the worst case over every
    # attack on those N, and each full attack restricted to them (so that, e.g., AutoAttack minus the
    # APGD pair can be read off on the same images).
    for (norm, eps), results in outcomes.items():
        worst_name = WORST_CASE if len(norms) == 1 else f"{WORST_CASE}_{norm}"
        full = [(name, mask, c) for name, mask, c in results if mask.shape[0] == n_all]
        trimmed_sizes = sorted({mask.shape[0] for _, mask, _ in results if mask.shape[0] < n_all})
        if len(full) > 1 or (full and trimmed_sizes):
            worst = torch.stack([mask for _, mask, _ in full]).all(dim=0)
            add_rows(worst_name, norm, full[0][2], [eps], [worst])
        elif not full and len(results) > 1:  # only trimmed attacks here: over the samples all of them attacked
            n = trimmed_sizes[0]
            worst = torch.stack([mask[:n] for _, mask, _ in results]).all(dim=0)
            add_rows(worst_name, norm, next(c for _, m, c in results if m.shape[0] == n), [eps], [worst])
        for n in trimmed_sizes if full else []:
            clean_n = next(c for _, m, c in results if m.shape[0] == n)
            worst = torch.stack([mask[:n] for _, mask, _ in results]).all(dim=0)
            add_rows(f"{worst_name}_first{n}", norm, clean_n, [eps], [worst])
            for name, mask, _ in full:
                add_rows(f"{name}_first{n}", norm, clean_n, [eps], [mask[:n]])
    frame = pd.DataFrame(rows)
    extra = [c for c in frame.columns if c not in TABLE_COLUMNS]
    return frame[TABLE_COLUMNS + extra]


def robustness_by_level(
    model: nn.Module,
    test: Split,
    attacks: Mapping[str, FoolboxAttack],
    epsilons: Sequence[float],
    n_samples: int | None,
    batch_size: int,
    seed: int,
    meta: Mapping[str, Any],
    broken: dict | None = None,
    costs: list[dict[str, Any]] | None = None,
    attack_state: ProgressFolder | None = None,
) -> pd.DataFrame:
    """``robustness_table`` for an ordinary model; for a hierarchical one, the table of every level's
    read-out stacked, with a ``level`` column, and ``error_tree_distance`` (clean errors of the
    finest level on the attacked samples) filled in on the finest level's rows. ``broken``: see
    ``robustness_table`` (ordinary models only); ``attack_state``: see ``robustness_table``."""
    hierarchy = model_hierarchy(model)
    if hierarchy is None:
        return robustness_table(model, test, attacks, epsilons, n_samples, batch_size, seed, meta, broken=broken,
                                costs=costs, attack_state=attack_state)
    frames = []
    for level in range(hierarchy.depth):
        split = Split(test.x, hierarchy.level_labels(test.y, level))
        frames.append(robustness_table(LevelReadout(model, level), split, attacks, epsilons, n_samples,
                                       batch_size, seed, {**meta, LEVEL: level}, costs=costs,
                                       attack_state=attack_state))
    table = pd.concat(frames, ignore_index=True)
    x, y = (test.x, test.y) if n_samples is None else (test.x[:n_samples], test.y[:n_samples])
    distance = mean_error_tree_distance(hierarchy, predict(model, x, batch_size), y)
    table[TREE_DISTANCE] = float("nan")
    table.loc[table[LEVEL] == hierarchy.depth - 1, TREE_DISTANCE] = float("nan") if distance is None else distance
    return table
