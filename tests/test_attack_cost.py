"""What each attack cost, per ε: recorded by the sweep, kept in metrics.json, summed in sweep reports."""
from __future__ import annotations

import pandas as pd
import torch

from isorobust.attacks.base import FGSM, LinfPGD, robust_masks
from isorobust.reports.aggregate import attack_cost_markdown, attack_cost_sums
from tests.conftest import brightest_row_data, fit_tiny_mlp


def test_costs_count_survivors_and_forward_rows_per_epsilon():
    x, y = brightest_row_data(200)
    model = fit_tiny_mlp(0, x, y)
    costs = []
    # keep_fooled=False: every sample runs every step (with it, fooled samples leave PGD early)
    correct, masks = robust_masks(model, LinfPGD(name="pgd", steps=5, keep_fooled=False), x, y, [0.0, 0.05, 0.2], 64, 0,
                                  costs)
    assert [c.epsilon for c in costs] == [0.0, 0.05, 0.2] and all(c.attack == "pgd" for c in costs)
    assert costs[0].samples == 0 and costs[0].sample_forwards == 0  # ε = 0 attacks nothing
    # survivors only: each ε attacks what the previous one left robust
    assert costs[1].samples == int(correct.sum()) and costs[2].samples == int(masks[1].sum())
    for c in costs[1:]:
        assert c.sample_forwards >= 5 * c.samples > 0  # at least one forward row per sample and step
        assert c.seconds > 0
    # the same outcome as without bookkeeping (the hook only counts)
    again_correct, again = robust_masks(model, LinfPGD(name="pgd", steps=5), x, y, [0.0, 0.05, 0.2], 64, 0)
    assert torch.equal(again_correct, correct) and all(torch.equal(a, b) for a, b in zip(again, masks))
    assert not model._forward_hooks  # the counting hook is gone


def test_sweep_report_sums_costs_per_attack_and_epsilon():
    costs = pd.DataFrame([
        {"run": r, "attack": a, "epsilon": e, "seconds": s, "samples": 10, "sample_forwards": f}
        for r, a, e, s, f in [("0", "fgsm", 0.1, 1.0, 20), ("1", "fgsm", 0.1, 3.0, 20),
                              ("0", "pgd", 0.1, 4.0, 400), ("1", "pgd", 0.1, 6.0, 400), ("0", "pgd", 0.3, 2.0, 100)]])
    sums = attack_cost_sums(costs).set_index(["attack", "epsilon"])
    assert sums.loc[("pgd", 0.1), "seconds"] == 10.0 and sums.loc[("pgd", 0.1), "sample_forwards"] == 800
    assert sums.loc[("fgsm", 0.1), "sample_forwards_per_s"] == 10.0
    text = "\n".join(attack_cost_markdown(costs))
    assert "## Attack cost" in text
    pgd = next(line for line in text.splitlines() if line.startswith("| pgd"))
    assert "6.0 ± 0.0 (2)" in pgd  # per run: 4 + 2 and 6
    assert attack_cost_markdown(costs.iloc[0:0]) == []


def test_fgsm_costs_one_forward_row_per_sample():
    x, y = brightest_row_data(100)
    model = fit_tiny_mlp(1, x, y)
    costs = []
    correct, _ = robust_masks(model, FGSM(name="fgsm"), x, y, [0.1], 100, 0, costs)
    assert costs[0].samples == int(correct.sum())
    assert costs[0].samples <= costs[0].sample_forwards <= 3 * costs[0].samples
