"""FAB-T (L∞) written here: the step to a hyperplane is the exact minimum, the attack stays in the ball and
the box, rows of a broken sample leave the batch, the compiled step agrees with the eager one, and it breaks
what torchattacks' FAB (the test oracle) breaks on the same model, images and budget."""
from __future__ import annotations

import pytest
import torch

from isorobust.attacks import _compiled
from isorobust.attacks.autoattack import AutoAttack
from isorobust.attacks.fab import fab_step, fab_step_fused, fab_targeted, linf_step_to_hyperplane
from isorobust.checks import noise


def fooled(model, adv, y):
    with torch.no_grad():
        return model(adv).argmax(dim=1) != y


def reach(p, w, lam):
    """The most w·(p + d) can rise with ‖d‖∞ ≤ λ inside [0, 1]: Σ |w_i|·min(λ, room_i) (from the definition)."""
    room = torch.where(w > 0, 1 - p, p)
    return (w.abs() * torch.minimum(room, lam[:, None])).sum(dim=1)


def random_rows(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(n, d, generator=g, dtype=torch.float64)
    p[: n // 2, : d // 2] = (p[: n // 2, : d // 2] > 0.5).double()  # saturated pixels, as in MNIST
    w = torch.randn(n, d, generator=g, dtype=torch.float64) * (torch.rand(n, d, generator=g) < 0.7)
    b = (w * p).sum(dim=1) + torch.randn(n, generator=g, dtype=torch.float64) * 2
    return p, w, b


def test_step_to_hyperplane_is_the_smallest_in_the_box():
    p, w, b = random_rows(400, 12, 0)
    d = linf_step_to_hyperplane(p, w, b)
    v = p + d
    assert v.min() >= -1e-12 and v.max() <= 1 + 1e-12
    # orient each row so that reaching the hyperplane means raising w·v
    sign = torch.where(b - (w * p).sum(dim=1) < 0, -1.0, 1.0)[:, None]
    ws, need = w * sign, (b - (w * p).sum(dim=1)).abs()
    capacity = reach(p, ws, torch.full_like(need, torch.inf))
    feasible = capacity >= need
    assert 0 < int(feasible.sum()) < p.shape[0]  # both cases occur
    on_plane = (w * v).sum(dim=1) - b
    assert on_plane[feasible].abs().max() < 1e-9
    lam = d.abs().amax(dim=1)
    # a smaller radius falls short of the hyperplane: no shorter step exists
    assert (reach(p, ws, lam * (1 - 1e-6))[feasible] < need[feasible]).all()
    # out of reach: every coordinate at its box edge in the direction that brings w·v closest
    assert torch.allclose(((ws * d).sum(dim=1))[~feasible], capacity[~feasible])


def test_step_matches_a_linear_program():
    scipy_optimize = pytest.importorskip("scipy.optimize")
    import numpy as np

    p, w, b = random_rows(60, 6, 1)
    d = linf_step_to_hyperplane(p, w, b)
    for i in range(p.shape[0]):
        n = p.shape[1]
        res = scipy_optimize.linprog(
            np.r_[np.zeros(n), 1.0],
            A_ub=np.vstack([np.c_[np.eye(n), -np.ones(n)], np.c_[-np.eye(n), -np.ones(n)]]), b_ub=np.zeros(2 * n),
            A_eq=np.r_[w[i].numpy(), 0.0][None], b_eq=[float(b[i] - (w[i] * p[i]).sum())],
            bounds=[(-float(p[i, j]), 1 - float(p[i, j])) for j in range(n)] + [(0, None)])
        if res.status == 0:
            assert float(d[i].abs().max()) == pytest.approx(res.x[-1], abs=1e-7)


def test_unrolled_step_agrees_where_it_settled_and_says_where_not():
    g = torch.Generator().manual_seed(2)
    x, x0 = torch.rand(300, 50, generator=g), torch.rand(300, 50, generator=g)
    grad, f = torch.randn(300, 50, generator=g), torch.randn(300, generator=g)
    exact = fab_step(x, x0, f, grad)
    for steps in (1, 2, 6):
        new, settled = fab_step_fused(x, x0, f, grad, steps=steps)
        assert torch.allclose(new[settled], exact[settled], atol=1e-6)
    assert not fab_step_fused(x, x0, f, grad, steps=1)[1].all()  # one step cannot settle every row


@pytest.mark.parametrize("eps", [0.05, 0.3])
def test_results_in_the_ball_and_the_box_and_misclassified_where_changed(tiny, eps):
    model, x, y = tiny
    adv = fab_targeted(model, x, y, eps, steps=30, n_target_classes=3)
    assert (adv - x).abs().amax() <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    changed = (adv != x).flatten(1).any(dim=1)
    assert changed.any()
    assert torch.equal(changed, fooled(model, adv, y))  # an unbroken sample comes back as it was


def test_a_broken_sample_leaves_the_batch(tiny):
    model, x, y = tiny
    rows = []
    handle = model.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
    try:
        adv = fab_targeted(model, x, y, 0.3, steps=30, n_target_classes=3)
    finally:
        handle.remove()
    assert fooled(model, adv, y).float().mean() > 0.9
    # two forwards per iteration (gradient, check) on every row would be 2 × 30 × 3 × 400
    assert sum(rows) < 0.25 * 2 * 30 * 3 * x.shape[0]


@pytest.mark.parametrize("eps", [0.03, 0.06, 0.1])
def test_breaks_what_torchattacks_fab_breaks(tiny, eps):
    ta = pytest.importorskip("torchattacks")
    model, x, y = tiny
    ours = ~fooled(model, fab_targeted(model, x, y, eps, steps=50, n_target_classes=3), y)
    attack = ta.FAB(model, norm="Linf", eps=eps, steps=50, multi_targeted=True, n_classes=4, n_restarts=1, seed=0)
    attack.n_target_classes = 3
    adv = attack(x, y)
    theirs = ~fooled(model, adv, y) | ((adv - x).flatten(1).abs().amax(dim=1) > eps + 1e-6)
    p, n = theirs.float().mean().item(), x.shape[0]
    assert ours.float().mean().item() <= p + noise(p, n), (ours.float().mean(), p)
    assert 0.0 < p < 1.0  # the radius decides something


def test_compiled_step_gives_the_same_outcomes(tiny):
    model, x, y = tiny
    eager = fooled(model, fab_targeted(model, x, y, 0.06, steps=30, n_target_classes=3), y)
    compiled = fooled(model, fab_targeted(model, x, y, 0.06, steps=30, n_target_classes=3, compile=True), y)
    assert abs(int(eager.sum()) - int(compiled.sum())) <= 2  # rounding may flip a sample on the boundary
    assert fab_step_fused in _compiled._compiled and not _compiled._failed  # it did go through torch.compile


def test_autoattack_compile_setting():
    assert AutoAttack()._compile_fab(10) is False and AutoAttack()._compile_fab(10**5) is True
    assert AutoAttack(compile=False)._compile_fab(10**5) is False


def test_the_same_iterates_as_torchattacks_sample_by_sample(tiny):
    """One sample and one target at a time (no batch to change the rounding): torchattacks' FAB returns the
    closest misclassified iterate it met, at distance r; ours breaks the sample within 1.001·r and not within
    0.999·r when its iterates are the same. Catches a wrong target, a wrong mixing weight or step."""
    ta = pytest.importorskip("torchattacks")
    model, x, y = tiny
    agree = tried = 0
    for i in range(40):
        xi, yi = x[i:i + 1], y[i:i + 1]
        attack = ta.FAB(model, norm="Linf", eps=1.0, steps=20, multi_targeted=True, n_classes=4, n_restarts=1)
        attack.target_class = 2  # the runner-up class, our first target
        adv = attack.attack_single_run_targeted(xi, yi, use_rand_start=False)
        if not fooled(model, adv, yi):
            continue
        r = float((adv - xi).abs().max())
        tried += 1
        inside = fooled(model, fab_targeted(model, xi, yi, r * 1.001, steps=20, n_target_classes=1), yi)
        short = fooled(model, fab_targeted(model, xi, yi, r * 0.999, steps=20, n_target_classes=1), yi)
        agree += bool(inside) and not bool(short)
    assert tried >= 20 and agree >= 0.9 * tried, (agree, tried)
