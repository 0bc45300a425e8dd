"""The stronger attacks and the original protocol on a tiny model with a known, learnable rule."""
import pytest
import torch

from isorobust.attacks.base import FGSM, L2PGD, LinfPGD, robust_accuracy_curve
from isorobust.attacks.autoattack import AutoAttack, Square
from isorobust.attacks.paper import PaperFGSM
from tests.conftest import brightest_row_data, fit_tiny_mlp


@pytest.fixture(scope="module")
def tiny():
    x, y = brightest_row_data()
    return fit_tiny_mlp(0, x, y), x, y


def curve(model, attack, x, y, eps):
    return robust_accuracy_curve(model, attack, x, y, eps, batch_size=100, seed=0)


@pytest.mark.parametrize("attack,eps", [
    (L2PGD(steps=20), [0.0, 0.1, 0.3, 1.0, 3.0]),
    (AutoAttack(steps=10, square_queries=50), [0.0, 0.02, 0.05, 0.1, 0.3]),
    (Square(n_queries=100), [0.0, 0.02, 0.05, 0.1, 0.3]),
])
def test_success_rises_with_epsilon(tiny, attack, eps):
    model, x, y = tiny
    clean, accs = curve(model, attack, x, y, eps)
    assert clean > 0.9 and accs[0] == clean
    assert all(a >= b for a, b in zip(accs, accs[1:]))
    assert accs[-1] < 0.5 * clean  # the largest ball breaks most samples


def test_autoattack_at_least_as_strong_as_pgd(tiny):
    model, x, y = tiny
    eps = [0.02, 0.05, 0.1]
    _, pgd = curve(model, LinfPGD(steps=20), x, y, eps)
    _, aa = curve(model, AutoAttack(steps=10, square_queries=50), x, y, eps)
    assert all(a <= p for a, p in zip(aa, pgd)), (aa, pgd)


def test_restarts_never_lower_success(tiny):
    model, x, y = tiny
    eps = [0.02, 0.05, 0.1]
    _, one = curve(model, LinfPGD(steps=5, rel_stepsize=0.1), x, y, eps)
    _, five = curve(model, LinfPGD(steps=5, rel_stepsize=0.1, restarts=5), x, y, eps)
    assert all(b <= a for a, b in zip(one, five))


def test_paper_fgsm_equals_fgsm_without_the_isometric_term(tiny):
    model, x, y = tiny
    eps = [0.02, 0.05, 0.1, 0.3]
    assert curve(model, PaperFGSM(weight=0.0), x, y, eps) == curve(model, FGSM(), x, y, eps)


def test_paper_fgsm_depends_on_the_batch_and_the_weight(tiny):
    model, x, y = tiny
    attack = PaperFGSM(weight=10.0, scale=10.0)
    full = attack.perturb(model, x[:100], y[:100], 0.1)
    half = attack.perturb(model, x[:50], y[:50], 0.1)
    assert not torch.equal(full[:50], half)  # the isometric term couples the batch
    assert not torch.equal(full, PaperFGSM(weight=0.0).perturb(model, x[:100], y[:100], 0.1))
    assert full.min() >= 0 and full.max() <= 1 and (full - x[:100]).abs().max() <= 0.1 + 1e-6


def test_trimmed_attack_runs_on_the_first_samples_and_the_worst_case_follows(tiny):
    from isorobust.data import Split
    from isorobust.attacks.sweep import robustness_table
    from isorobust.reports.run import markdown_table

    model, x, y = tiny
    attacks = {"fgsm": FGSM(), "pgd": LinfPGD(steps=10, n_samples=120, epsilons=[0.05, 0.1])}
    meta = {"dataset": "toy", "model": "mlp", "reg": "none", "reg_weight": 0.0, "reg_scale": 0.0, "seed": 0}
    table = robustness_table(model, Split(x, y), attacks, [0.02, 0.05, 0.1], None, 100, 0, meta, progress=False)
    n = table.set_index(["attack", "epsilon"])["n_samples"]
    assert n[("fgsm", 0.02)] == 300 and n[("pgd", 0.05)] == 120
    rows = table.set_index(["attack", "epsilon"])
    # The headline worst case covers every sample: here only fgsm ran on all 300 at 0.05 and 0.1.
    worst = table[table["attack"] == "worst_case"].set_index("epsilon")
    assert sorted(worst.index) == [0.05, 0.1] and (worst["n_samples"] == 300).all()
    _, fgsm_all = curve(model, FGSM(), x, y, [0.05, 0.1])
    assert list(worst["robust_accuracy"]) == pytest.approx(fgsm_all)
    # On the 120 samples pgd attacked: the worst case over both, and fgsm restricted to them.
    first = table[table["attack"] == "worst_case_first120"].set_index("epsilon")
    assert sorted(first.index) == [0.05, 0.1] and (first["n_samples"] == 120).all()
    _, fgsm = curve(model, FGSM(), x[:120], y[:120], [0.05, 0.1])
    assert list(rows.loc["fgsm_first120"]["robust_accuracy"]) == pytest.approx(fgsm)
    pgd = list(rows.loc["pgd"]["robust_accuracy"])
    for eps, p, f in zip([0.05, 0.1], pgd, fgsm):
        assert first.loc[eps, "robust_accuracy"] <= min(p, f) + 1e-9
    text = markdown_table(table, attacks)
    assert "first 120 test samples only" in text and "—" in text  # pgd has no entry at ε=0.02
