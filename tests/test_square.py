"""Square (L∞) written here: inside the ε-ball and [0, 1], queries only what is not yet fooled, and at least
as strong as torchattacks' Square (the test oracle) on the same model, images and budget."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from isorobust.attacks.square import bump, p_selection, square_l2, square_linf, square_patch
from tests.conftest import brightest_row_data, fit_tiny_mlp


@pytest.fixture(scope="module")
def model_and_data():
    x, y = brightest_row_data(400)
    x = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # 1×8×10 images: room for windows
    model = nn.Sequential(nn.AvgPool2d(2), fit_tiny_mlp(0, brightest_row_data(400)[0], y))
    return model.eval(), x, y


def fooled(model, adv, y):
    with torch.no_grad():
        return model(adv).argmax(dim=1) != y


def test_iterates_stay_in_the_ball_and_the_box(model_and_data):
    model, x, y = model_and_data
    for eps in (0.05, 0.3):
        adv = square_linf(model, x, y, eps, n_queries=200, seed=1)
        assert (adv - x).abs().amax() <= eps + 1e-6
        assert adv.min() >= 0 and adv.max() <= 1


def test_schedule_of_the_window():
    assert p_selection(0.8, 0, 5000) == 0.8
    assert p_selection(0.8, 5000 * 30 // 10000, 5000) == 0.4
    assert p_selection(0.8, 4999, 5000) == pytest.approx(0.8 / 512)


def test_fooled_samples_are_not_queried_again(model_and_data):
    model, x, y = model_and_data
    rows = []
    handle = model.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
    try:
        adv = square_linf(model, x, y, 0.3, n_queries=100, seed=0)
    finally:
        handle.remove()
    broken = int(fooled(model, adv, y).sum())
    assert broken > 0
    assert sum(rows) < x.shape[0] * 100  # survivors only: far fewer forward rows than images × queries
    assert len(rows) <= 100 and rows[0] == x.shape[0]


def test_at_least_as_strong_as_torchattacks(model_and_data):
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = model_and_data
    eps, budget = 0.12, 300
    ours = fooled(model, square_linf(model, x, y, eps, n_queries=budget, seed=0), y).float().mean().item()
    theirs = fooled(model, torchattacks.Square(model, norm="Linf", eps=eps, n_queries=budget, n_restarts=1,
                                               seed=0, loss="margin")(x, y), y).float().mean().item()
    noise = 2 * math.sqrt(max(theirs * (1 - theirs), 0.01) / x.shape[0])
    assert 0.05 < theirs < 0.95  # a radius where the comparison says something
    assert ours >= theirs - noise, (ours, theirs)


def test_l2_bump_and_patch():
    b = bump(5, 7)
    assert b.norm().item() == pytest.approx(1.0) and b[2, 3] == b.max()  # heaviest at the centre
    assert b[0, 0] < b[1, 1] < b[2, 2]  # lighter ring by ring
    patch = square_patch(9, torch.Generator().manual_seed(0))
    assert patch.shape == (9, 9) and patch.norm().item() == pytest.approx(1.0)
    assert abs(patch.sum().item()) < 0.2 * patch.abs().sum().item()  # a bump and minus a bump


@pytest.mark.parametrize("eps", [0.3, 1.0])
def test_l2_iterates_stay_in_the_ball_and_the_box(model_and_data, eps):
    model, x, y = model_and_data
    adv = square_l2(model, x, y, eps, n_queries=100, seed=1)
    assert (adv - x).flatten(1).norm(dim=1).max() <= eps + 1e-5
    assert adv.min() >= 0 and adv.max() <= 1
    assert fooled(model, adv, y).any()


class _Crop(nn.Module):
    """The first 8 rows: square 10×10 images for torchattacks' L2 Square, which needs them square."""

    def forward(self, x):
        return x[:, :, :8, :]


def test_l2_at_least_as_strong_as_torchattacks(model_and_data):
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = model_and_data
    model = nn.Sequential(_Crop(), model).eval()
    x = torch.cat([x, torch.zeros_like(x[:, :, :2])], dim=2)[:200]
    y = y[:200]
    budget = 150  # torchattacks' L2 Square takes about 8 s for this, ours well under 1 s
    for eps in (0.6,):
        ours = fooled(model, square_l2(model, x, y, eps, n_queries=budget, seed=0), y).float().mean().item()
        theirs = fooled(model, torchattacks.Square(model, norm="L2", eps=eps, n_queries=budget, n_restarts=1,
                                                   seed=0, loss="margin")(x, y), y).float().mean().item()
        noise = 2 * math.sqrt(max(theirs * (1 - theirs), 0.01) / x.shape[0])
        assert 0.05 < theirs < 0.95, (eps, theirs)  # a radius where the comparison says something
        assert ours >= theirs - noise, (eps, ours, theirs)
