"""L∞ PGD written here (isorobust.attacks.pgd) against foolbox's LinfPGD, the test oracle: the same
random start, steps and projections give the same bits; fooled samples leave the batch without changing
what the others do."""
from __future__ import annotations

import math

import foolbox as fb
import pytest
import torch
from foolbox.attacks.gradient_descent_base import Optimizer

from isorobust.attacks import _working_set
from isorobust.attacks.base import LinfPGD, frozen
from isorobust.attacks.pgd import pgd_linf, step_size


class _Cosine(Optimizer):
    def __init__(self, x, stepsize, steps):
        self.stepsize, self.steps, self.t = stepsize, steps, 0

    def __call__(self, gradient):
        factor = 0.5 * (1 + math.cos(math.pi * self.t / self.steps))
        self.t += 1
        return self.stepsize * factor * gradient


class _FoolboxCosinePGD(fb.attacks.LinfPGD):
    def get_optimizer(self, x, stepsize):
        return _Cosine(x, stepsize, self.steps)


def foolbox_adv(model, x, y, eps, attack):
    torch.manual_seed(3)
    _, adv, _ = attack(fb.PyTorchModel(model, bounds=(0.0, 1.0)), x, y, epsilons=eps)
    return adv


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_same_bits_as_foolbox(tiny, schedule):
    model, x, y = tiny
    eps, steps = 0.05, 20
    cls = fb.attacks.LinfPGD if schedule == "constant" else _FoolboxCosinePGD
    theirs = foolbox_adv(model, x, y, eps, cls(rel_stepsize=0.25, steps=steps, random_start=True))
    torch.manual_seed(3)
    ours = pgd_linf(model, x, y, eps, steps, 0.25 * eps, schedule, keep_fooled=False)
    assert torch.equal(ours, theirs)


def test_fooled_samples_leave_without_changing_the_others(tiny, monkeypatch):
    model, x, y = tiny
    eps, steps = 0.08, 30
    runs = {}
    for share in (0.1, 2.0):  # 2.0: nobody ever leaves
        monkeypatch.setattr(_working_set, "COMPACT_SHARE", share)
        rows = []
        handle = model.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
        torch.manual_seed(0)
        try:
            runs[share] = (pgd_linf(model, x, y, eps, steps, 0.25 * eps, "cosine"), sum(rows))
        finally:
            handle.remove()
    (adv, forwards), (adv_full, forwards_full) = runs[0.1], runs[2.0]
    with torch.no_grad():
        fooled = model(adv).argmax(1) != y
    assert torch.equal(fooled, model(adv_full).argmax(1) != y)
    assert torch.allclose(adv, adv_full, atol=1e-6)
    assert 0.1 < fooled.float().mean() < 0.9
    assert forwards_full == steps * x.shape[0] and forwards < 0.9 * forwards_full


def test_keeps_the_first_fooling_iterate_in_the_ball(tiny):
    model, x, y = tiny
    eps = 0.06
    torch.manual_seed(0)
    kept = pgd_linf(model, x, y, eps, 30, 0.25 * eps, "constant", keep_fooled=True)
    torch.manual_seed(0)
    last = pgd_linf(model, x, y, eps, 30, 0.25 * eps, "constant", keep_fooled=False)
    with torch.no_grad():
        fooled_kept, fooled_last = model(kept).argmax(1) != y, model(last).argmax(1) != y
    assert (fooled_kept | ~fooled_last).all()  # keeping the first success never loses one
    for adv in (kept, last):
        assert (adv - x).abs().max() <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1


def test_cosine_schedule():
    assert step_size(0.1, 0, 50, "cosine") == pytest.approx(0.1)
    assert step_size(0.1, 25, 50, "cosine") == pytest.approx(0.05)
    assert step_size(0.1, 49, 50, "constant") == 0.1


def test_attack_object_uses_relative_or_absolute_steps(tiny):
    model, x, y = tiny
    with frozen(model):
        torch.manual_seed(0)
        a = LinfPGD(steps=5, rel_stepsize=0.5).perturb(model, x, y, 0.1)
        torch.manual_seed(0)
        b = LinfPGD(steps=5, abs_stepsize=0.05).perturb(model, x, y, 0.1)
    assert torch.equal(a, b)
