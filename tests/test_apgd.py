"""APGD-CE / APGD-T (isorobust.attacks.apgd) against torchattacks' port, and AutoAttack's order."""
import pytest
import torch

from isorobust.attacks.apgd import APGD, apgd_ce_then_targeted, apgd_run, dlr_targeted_loss
from isorobust.attacks.base import LinfPGD, frozen, robust_accuracy_curve, robust_masks
from isorobust.attacks.autoattack import AutoAttack
from isorobust.checks import noise
from tests.conftest import brightest_row_data, fit_tiny_mlp


def robust(model, adv, y):
    with torch.no_grad():
        return model(adv).argmax(1) == y


@pytest.mark.parametrize("eps", [0.03, 0.06, 0.1])
def test_apgd_ce_finds_what_torchattacks_finds(tiny, eps):
    ta = pytest.importorskip("torchattacks")
    model, x, y = tiny
    torch.manual_seed(0)
    adv, fooled = apgd_run(model, x, y, eps, steps=50)
    ours = robust(model, adv, y)
    assert torch.equal(~ours, fooled)  # the fooled flag is what the returned inputs do
    theirs = robust(model, ta.APGD(model, eps=eps, steps=50, loss="ce", n_restarts=1, seed=0)(x, y), y)
    p, n = theirs.float().mean().item(), x.shape[0]
    assert abs(ours.float().mean().item() - p) <= noise(p, n), (ours.float().mean(), p)
    assert (adv - x).abs().max() <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1


@pytest.mark.parametrize("eps", [0.03, 0.06])
def test_apgd_pair_finds_what_torchattacks_apgd_and_apgdt_find(tiny, eps):
    ta = pytest.importorskip("torchattacks")
    model, x, y = tiny
    torch.manual_seed(0)
    ours = robust(model, apgd_ce_then_targeted(model, x, y, eps, steps=50, n_target_classes=3), y)
    adv_ce = ta.APGD(model, eps=eps, steps=50, loss="ce", n_restarts=1, seed=0)(x, y)
    theirs = robust(model, adv_ce, y)
    left = theirs.nonzero().squeeze(1)
    apgdt = ta.APGDT(model, eps=eps, steps=50, n_restarts=1, n_classes=4, seed=0)
    apgdt.n_target_classes = 3
    theirs[left] = robust(model, apgdt(x[left], y[left]), y[left])
    p, n = theirs.float().mean().item(), x.shape[0]
    assert abs(ours.float().mean().item() - p) <= noise(p, n), (ours.float().mean(), p)


def test_targeted_runs_are_stronger_than_ce_alone_somewhere(tiny):
    model, x, y = tiny
    eps = [0.03, 0.05, 0.08]
    _, ce_only = robust_accuracy_curve(model, APGD(steps=50, n_target_classes=0), x, y, eps, 100, 0)
    _, pair = robust_accuracy_curve(model, APGD(steps=50, n_target_classes=3), x, y, eps, 100, 0)
    assert all(b <= a for a, b in zip(ce_only, pair)) and any(b < a for a, b in zip(ce_only, pair)), (ce_only, pair)


def test_dropping_broken_samples_changes_nothing_for_the_others(tiny):
    """Every APGD quantity is per sample: taking broken samples out of the batch (the default)
    gives the same outcome as iterating on them (the ports' way), in float64."""
    model, x, y = tiny
    model64, x64 = model.double(), x.double()
    try:
        torch.manual_seed(1)
        adv_c, fooled_c = apgd_run(model64, x64, y, 0.05, steps=40)
        torch.manual_seed(1)
        adv_f, fooled_f = apgd_run(model64, x64, y, 0.05, steps=40, compact=False)
        assert 0 < fooled_c.sum() < x.shape[0]
        assert torch.equal(fooled_c, fooled_f)
        assert torch.allclose(adv_c, adv_f, atol=1e-12)
    finally:
        model.float()


def test_dlr_targeted_loss_matches_its_definition():
    logits = torch.tensor([[5.0, 3.0, 1.0, 0.0, -1.0]])
    y, t = torch.tensor([0]), torch.tensor([2])
    expected = -(5.0 - 1.0) / (5.0 - 0.5 * (1.0 + 0.0))
    assert dlr_targeted_loss(logits, y, t).item() == pytest.approx(expected)


def test_apgd_restarts_are_used(tiny):
    model, x, y = tiny
    eps = [0.04]
    with frozen(model):
        calls = []

        class Counting(APGD):
            def perturb(self, model, x, y, epsilon):
                calls.append(x.shape[0])
                return super().perturb(model, x, y, epsilon)

        robust_masks(model, Counting(steps=10, n_target_classes=1, restarts=3), x, y, eps, 1000, 0)
    assert len(calls) == 3 and calls[1] <= calls[0]  # the 2nd run sees only the survivors of the 1st


def test_autoattack_runs_its_four_components_in_order_on_what_the_previous_left(tiny, monkeypatch):
    model, x, y = tiny
    aa = AutoAttack(steps=10, square_queries=20, n_target_classes=9)
    seen = []
    import isorobust.attacks.autoattack as autoattack

    real_pair = autoattack.apgd_ce_then_targeted

    def pair(model, x, y, eps, steps, n_targets, runs):
        seen.append(("apgd", x.shape[0]))
        return real_pair(model, x, y, eps, steps, n_targets, runs)

    monkeypatch.setattr(autoattack, "apgd_ce_then_targeted", pair)
    real_fab = autoattack.fab_targeted
    fab_targets = []

    def fab(model, x, y, eps, steps, n_targets, **kwargs):
        fab_targets.append(n_targets)
        return real_fab(model, x, y, eps, steps, n_targets, **kwargs)

    monkeypatch.setattr(autoattack, "fab_targeted", fab)
    real_components = aa._fab_and_square

    def components(model, n_classes, eps):
        out = []
        for name, attack in real_components(model, n_classes, eps):

            def wrapped(xs, ys, attack=attack, name=name):
                seen.append((name, xs.shape[0]))
                return attack(xs, ys)

            out.append((name, wrapped))
        return out

    monkeypatch.setattr(aa, "_fab_and_square", components)
    with frozen(model):
        adv = aa.perturb(model, x, y, 0.06)
    names = [s[0] for s in seen]
    assert names == ["apgd", "fab-t", "square"], names
    # the APGD pair ran CE then min(9, C - 1) = 3 targets, each on what was left
    components_run = [c for c, _, _, _ in aa.runs]
    assert components_run[:1] == ["apgd-ce"] and set(components_run[1:4]) <= {"apgd-t"}
    apgd_sizes = [n for c, _, n, _ in aa.runs if c.startswith("apgd")]
    assert all(b <= a for a, b in zip(apgd_sizes, apgd_sizes[1:]))
    assert sum(c == "apgd-t" for c in components_run) <= 3
    fab_n, square_n = seen[1][1], seen[2][1]
    assert fab_targets == [3]  # FAB-T: min(9, C-1) targets
    assert fab_n < x.shape[0] and square_n <= fab_n
    with torch.no_grad():
        assert (adv - x).abs().max() <= 0.06 + 1e-6


def test_apgd_is_stronger_than_a_short_pgd(tiny):
    model, x, y = tiny
    eps = [0.03, 0.05]
    _, weak = robust_accuracy_curve(model, LinfPGD(steps=5, rel_stepsize=0.01 / 0.3), x, y, eps, 100, 0)
    _, strong = robust_accuracy_curve(model, APGD(steps=50, n_target_classes=3), x, y, eps, 100, 0)
    assert all(s <= w for s, w in zip(strong, weak)) and any(s < w - 0.02 for s, w in zip(strong, weak))


def test_broken_samples_leave_the_batch_late_without_changing_anything(monkeypatch):
    """Broken rows stay in the batch until they are COMPACT_SHARE of it: the same bits as removing them at
    once, and every broken sample's example is the iterate that first fooled the model."""
    from isorobust.attacks import _working_set, apgd

    x, y = brightest_row_data(300)
    model = fit_tiny_mlp(0, x, y)
    results = []
    for share in (0.0, _working_set.COMPACT_SHARE, 0.9):
        monkeypatch.setattr(_working_set, "COMPACT_SHARE", share)
        torch.manual_seed(5)
        results.append(apgd.apgd_run(model, x, y, 0.08, steps=30))
    (adv0, fooled0), *others = results
    assert 0 < fooled0.sum() < x.shape[0]
    for adv, fooled in others:
        assert torch.equal(fooled, fooled0) and torch.equal(adv, adv0)
    with torch.no_grad():
        assert (model(adv0[fooled0]).argmax(dim=1) != y[fooled0]).all()
    assert (adv0 - x).abs().amax() <= 0.08 + 1e-6
