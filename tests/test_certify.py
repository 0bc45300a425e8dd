"""Certified lower bounds (isorobust.certification): soundness against sampling, corners and PGD
inside the ball, exactness on a linear network, CROWN never looser than IBP, the activation lines on
dense grids, the ε = 0 / monotonicity / radius properties, aggregation over seeds, and a real MNIST run
whose certified samples no attack of the run broke. Small float64 networks unless said otherwise."""
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import scipy.stats
import torch
from omegaconf import OmegaConf
from torch import nn

from isorobust.models import load_model
from isorobust.errors import ConfigError
from isorobust.certification import (
    CERTIFIED_COLUMNS, Certifier, certifiable_layers, certified_mask, certify_grid, clean_predictions,
    crown_margin_bounds, ibp_layer, ibp_margin_bounds, input_box, min_margin_bounds, relaxation,
)
from isorobust.rundir import TABLE_COLUMNS
from isorobust.models import CNN, MLP, HierarchicalMLP
from tests.conftest import brightest_row_data, finished_run, fit_tiny_mlp, requires_mnist, run_cli
from tests.test_cli import assert_one_line_error

EPSILONS = (0.02, 0.1, 0.3)


def scaled(model: nn.Module, factor: float, seed: int) -> nn.Module:
    """float64, weights drawn afresh and multiplied by ``factor``: PyTorch's default init keeps a tanh
    network nearly linear on [0, 1] inputs, where a wrong relaxation would hardly show."""
    torch.manual_seed(seed)
    model = model.double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * factor / math.sqrt(p.shape[-1] if p.dim() > 1 else 4))
    return model.eval()


def tiny_networks() -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    """name -> (float64 model, input shape): the activations and layer types the certifier handles."""
    return {
        "mlp_tanh": (scaled(MLP(6, width=8, depth=2, num_classes=4, activation="tanh"), 2.0, 0), (6,)),
        "mlp_relu": (scaled(MLP(6, width=8, depth=2, num_classes=4, activation="relu"), 2.0, 1), (6,)),
        "mlp_sigmoid": (scaled(MLP(6, width=8, depth=2, num_classes=4, activation="sigmoid"), 3.0, 2), (6,)),
        "cnn": (scaled(CNN((1, 6, 6), channels=(2, 3), width=8, depth=2, num_classes=4), 2.0, 3), (1, 6, 6)),
        "mixed": (scaled(nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU(),
                                       nn.Linear(8, 8), nn.Sigmoid(), nn.Linear(8, 4)), 2.0, 4), (6,)),
    }


def ball(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The L∞ ball ∩ [0, 1] written out here, not taken from the module under test."""
    return torch.clamp(x - eps, 0.0, 1.0), torch.clamp(x + eps, 0.0, 1.0)


def margins(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(..., K−1) true margins logit[y] − logit[j], j ≠ y, in increasing j (as the bounds are ordered)."""
    logits = model(x)
    k = logits.shape[-1]
    others = torch.stack([torch.tensor([j for j in range(k) if j != int(c)]) for c in y])
    return logits.gather(1, y[:, None]) - logits.gather(1, others)


def observed_minimum(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, seed: int = 0) -> torch.Tensor:
    """(B, K−1) smallest margin seen in the box: uniform samples, random corners, and per margin a
    sign-gradient descent (PGD) from the centre and from random starts, projected onto the box."""
    g = torch.Generator().manual_seed(seed)
    lower, upper = ball(x, eps)
    best = margins(model, x, y)
    with torch.no_grad():
        for corners in (False, True):
            for _ in range(40):
                u = torch.rand((50, *x.shape), generator=g, dtype=x.dtype)
                point = torch.where(u > 0.5, upper, lower) if corners else lower + (upper - lower) * u
                m = margins(model, point.reshape(-1, *x.shape[1:]), y.repeat(50)).view(50, *best.shape)
                best = torch.minimum(best, m.min(dim=0).values)
    k = best.shape[1]
    for start in range(3):
        point = (x if start == 0 else lower + (upper - lower) * torch.rand(x.shape, generator=g, dtype=x.dtype))
        point = point.unsqueeze(0).repeat(k, *[1] * x.dim()).clone()  # one copy per margin
        for step in range(40):
            point.requires_grad_(True)
            m = margins(model, point.reshape(-1, *x.shape[1:]), y.repeat(k)).view(k, *best.shape)
            objective = sum(m[j, :, j].sum() for j in range(k))
            (grad,) = torch.autograd.grad(objective, point)
            size = 0.5 * (upper - lower) * (1 + math.cos(math.pi * step / 40)) / 2 + 1e-12
            with torch.no_grad():
                point = torch.minimum(torch.maximum(point - size * grad.sign(), lower), upper)
                m = margins(model, point.reshape(-1, *x.shape[1:]), y.repeat(k)).view(k, *best.shape)
                best = torch.minimum(best, torch.stack([m[j, :, j] for j in range(k)], dim=1))
    return best


def tiny_case(name: str, n: int, seed: int):
    """One of ``tiny_networks``, its layers, a seeded generator and ``n`` float64 inputs in [0, 1] whose
    first lies on the edge of [0, 1] (all zeros: the box is cut there)."""
    model, shape = tiny_networks()[name]
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, *shape), generator=g, dtype=torch.float64)
    x[0] = 0.0
    return model, shape, certifiable_layers(model), g, x


@pytest.mark.parametrize("name", list(tiny_networks()))
def test_bounds_are_never_above_any_margin_found_inside_the_ball(name):
    model, _, layers, _, x = tiny_case(name, 8, seed=7)
    x[1] = 1.0  # the other edge
    y = torch.arange(8) % 4
    for eps in EPSILONS:
        seen = observed_minimum(model, x, y, eps)
        ibp, crown = ibp_margin_bounds(layers, x, y, eps), crown_margin_bounds(layers, x, y, eps)
        assert (ibp <= seen + 1e-10).all(), (name, eps, (ibp - seen).max())
        assert (crown <= seen + 1e-10).all(), (name, eps, (crown - seen).max())
        # and they are bounds worth having: CROWN within reach of what the search found at small ε
        if eps == EPSILONS[0] and name != "cnn":
            assert (seen - crown).mean() < 0.5 * (seen - ibp).mean()


@pytest.mark.parametrize("name", list(tiny_networks()))
def test_every_layers_output_stays_inside_its_ibp_box(name):
    model, shape, layers, g, x = tiny_case(name, 4, seed=8)
    lower, upper = ball(x, 0.1)
    assert all(torch.equal(a, b) for a, b in zip(input_box(x, 0.1), (lower, upper)))
    points = lower + (upper - lower) * torch.rand((500, *x.shape), generator=g, dtype=x.dtype)
    points = torch.cat([points, torch.where(torch.rand(points.shape, generator=g) > 0.5, upper, lower)])
    h = points.reshape(-1, *shape)
    box = (lower, upper)
    with torch.no_grad():
        for layer in layers:
            box = ibp_layer(layer, *box)
            h = layer(h)
            inside = h.view(-1, *box[0].shape)
            assert (inside >= box[0] - 1e-12).all() and (inside <= box[1] + 1e-12).all(), type(layer).__name__


def test_the_flat_layer_list_is_the_model():
    torch.manual_seed(0)
    cases = [(MLP(6, width=5, depth=3, num_classes=4), (6,)),
             (CNN((1, 8, 8), channels=(2, 3), width=5, depth=2, num_classes=4), (1, 8, 8)),
             (HierarchicalMLP(6, [[[0, 1], [2, 3]], [[0], [1], [2], [3]]], 4, width=5, depth_per_level=2), (6,))]
    for model, shape in cases:
        x = torch.rand(3, *shape)
        h = x
        for layer in certifiable_layers(model):
            h = layer(h)
        torch.testing.assert_close(h, model(x), rtol=0, atol=0)


def test_crown_is_exact_on_a_linear_network():
    torch.manual_seed(1)
    model = scaled(nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.Linear(5, 7), nn.Linear(7, 4)), 2.0, 5)
    layers = certifiable_layers(model)
    x = torch.rand(16, 6, dtype=torch.float64)
    y = torch.arange(16) % 4
    # the network is x ↦ Wx + b: the minimum of each margin over the box is attained at a corner
    weight = layers[3].weight @ layers[2].weight @ layers[1].weight
    bias = layers[3].weight @ (layers[2].weight @ layers[1].bias + layers[2].bias) + layers[3].bias
    for eps in (0.0, 0.05, 0.3):
        lower, upper = ball(x, eps)
        rows = torch.stack([weight[c] - weight[[j for j in range(4) if j != c]] for c in y.tolist()])
        shift = torch.stack([bias[c] - bias[[j for j in range(4) if j != c]] for c in y.tolist()])
        exact = shift + torch.einsum("bkd,bd->bk", rows.clamp(min=0), lower) \
            + torch.einsum("bkd,bd->bk", rows.clamp(max=0), upper)
        torch.testing.assert_close(crown_margin_bounds(layers, x, y, eps), exact, rtol=0, atol=1e-12)
        if eps > 0:  # IBP loses the correlation between the layers: strictly looser here
            assert (ibp_margin_bounds(layers, x, y, eps) < exact - 1e-6).any()


@pytest.mark.parametrize("activation,factor", [("tanh", 1.0), ("tanh", 3.0), ("relu", 2.0), ("sigmoid", 4.0)])
def test_crown_is_never_looser_than_ibp_on_mlps(activation, factor):
    model = scaled(MLP(10, width=12, depth=3, num_classes=5, activation=activation), factor, 11)
    layers = certifiable_layers(model)
    x = torch.rand(64, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y = torch.arange(64) % 5
    for eps in (0.0, 0.01, 0.05, 0.2, 0.5, 1.0):
        ibp, crown = ibp_margin_bounds(layers, x, y, eps), crown_margin_bounds(layers, x, y, eps)
        assert (crown >= ibp - 1e-6).all(), (activation, eps, (ibp - crown).max())


def grid_intervals(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Intervals across 0, on either side, touching 0, very narrow, very wide, degenerate."""
    g = torch.Generator().manual_seed(0)
    parts = []
    for width in (0.0, 1e-12, 1e-9, 1e-6, 1e-3, 0.1, 1.0, 4.0, 20.0, 200.0):
        centre = torch.randn(300, generator=g, dtype=torch.float64) * 3
        half = torch.rand(300, generator=g, dtype=torch.float64) * width
        parts.append(torch.stack([centre - half, centre + half]))
        parts.append(torch.stack([-half, half * torch.rand(300, generator=g, dtype=torch.float64)]))  # across 0
    half = torch.rand(100, generator=g, dtype=torch.float64) * 5
    parts += [torch.stack([torch.zeros_like(half), half]), torch.stack([-half, torch.zeros_like(half)])]
    lower, upper = torch.cat(parts, dim=1).to(dtype)
    return lower, upper


@pytest.mark.parametrize("act,f", [(nn.Tanh(), torch.tanh), (nn.Sigmoid(), torch.sigmoid), (nn.ReLU(), torch.relu)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_relaxation_lines_lie_below_and_above_the_activation_on_the_whole_interval(act, f, dtype):
    lower, upper = grid_intervals(dtype)
    (low_slope, low_intercept), (up_slope, up_intercept) = relaxation(act, lower, upper)
    t = torch.linspace(0, 1, 4001, dtype=dtype)
    z = lower[:, None] + (upper - lower)[:, None] * t  # points of [l, u] that ``dtype`` can represent
    z = torch.minimum(torch.maximum(z, lower[:, None]), upper[:, None])  # rounding must not leave [l, u]
    truth = f(z.double())
    # The lines exactly as ``dtype`` stores them (a float32 slope times a float32 point is exact in float64):
    # a line must lie on its side as the real function its coefficients define. Rounding when the
    # certifier multiplies coefficients is float arithmetic like its matrix products, not the relaxation's.
    below = low_slope.double()[:, None] * z.double() + low_intercept.double()[:, None]
    above = up_slope.double()[:, None] * z.double() + up_intercept.double()[:, None]
    assert (below <= truth).all(), (truth - below).min()
    assert (above >= truth).all(), (above - truth).min()
    # Sound by being tight, not by being loose: CROWN's lines touch the function at an end or the
    # midpoint (up to the padding against rounding and the tangent point's search), and on narrow
    # intervals they close in on it.
    gap = (above - below).max(dim=1).values
    narrow = (upper - lower).double() <= 1e-6
    assert (gap[narrow] < 1e-5).all(), gap[narrow].max()
    ends = [0, len(t) // 2, len(t) - 1]
    tolerance = 1e-5 * (1 + torch.maximum(lower.abs(), upper.abs()).double())  # the padding grows with |z|
    assert ((above - truth)[:, ends].min(dim=1).values < tolerance).all()
    assert ((truth - below)[:, ends].min(dim=1).values < tolerance).all()


def test_tanh_lines_across_zero_follow_crowns_rule():
    lower = torch.tensor([-3.0, -0.5, -10.0, -0.1], dtype=torch.float64)
    upper = torch.tensor([0.5, 3.0, 10.0, 8.0], dtype=torch.float64)
    (low_slope, low_intercept), (up_slope, up_intercept) = relaxation(nn.Tanh(), lower, upper)
    tangent_at = lambda slope: torch.acosh(slope.rsqrt())  # tanh'(d) = 1/cosh²(d), d >= 0
    # [-3, 0.5]: the tangent at u passes below (l, tanh l): the chord, through both ends
    torch.testing.assert_close(up_slope[0], (torch.tanh(upper[0]) - torch.tanh(lower[0])) / 3.5, rtol=0, atol=1e-7)
    # [-10, 10]: the point d whose tangent passes through (l, tanh l) lies right of the midpoint 0: tangent at d
    torch.testing.assert_close(up_slope[2] * lower[2] + up_intercept[2], torch.tanh(lower[2]), rtol=0, atol=1e-7)
    torch.testing.assert_close(low_slope[2] * upper[2] + low_intercept[2], torch.tanh(upper[2]), rtol=0, atol=1e-7)
    # [-0.5, 3] and [-0.1, 8]: d lies left of the midpoint: the tangent at the midpoint (flatter, as the
    # reference verifier chooses; the tangent at d was 0.37 looser on the reference model, median)
    for k in (1, 3):
        middle = (lower[k] + upper[k]) / 2
        assert abs(tangent_at(up_slope[k]) - middle) < 1e-6
        assert up_slope[k] * lower[k] + up_intercept[k] > torch.tanh(lower[k]) + 1e-3  # strictly above at l
        torch.testing.assert_close(up_slope[k] * middle + up_intercept[k], torch.tanh(middle), rtol=0, atol=1e-7)


def trained_tiny():
    """A small tanh MLP fitted to 4-class images, a few test samples misclassified (float32)."""
    x, y = brightest_row_data(400)
    model = fit_tiny_mlp(0, x[:200], y[:200])
    return model, x[200:], y[200:]


@pytest.mark.parametrize("method", ["ibp", "crown"])
def test_zero_radius_certifies_exactly_the_correct_samples_and_accuracy_falls_with_epsilon(method):
    model, x, y = trained_tiny()
    grid = [0.0, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3]
    result = Certifier(method=method, epsilons=grid, batch_size=64, radius_tolerance=None).run(model, x, y)
    with torch.no_grad():
        correct = model(x).argmax(dim=1) == y
    assert 10 < (~correct).sum() < 100  # the property is tested on both kinds of samples
    assert torch.equal(result.certified[0], correct)
    accuracy = result.certified_accuracy()
    assert accuracy == sorted(accuracy, reverse=True) and accuracy[0] > accuracy[-1]
    assert (result.certified[1:] <= result.certified[:-1]).all()  # per sample, not only on average
    # The search's masks against the bound at every radius: every reported proof exists at that radius or a
    # larger one, and where a sample's bound is monotone in ε (always for IBP) the masks are the bound itself.
    layers = certifiable_layers(model)
    raw = torch.stack([certified_mask(layers, x, y, correct, eps, method) for eps in grid])
    closure = raw.flip(0).cummax(dim=0).values.flip(0)
    assert (result.certified <= closure).all()
    monotone = (closure == raw).all(dim=0)
    assert monotone.float().mean() > 0.9
    assert torch.equal(result.certified[:, monotone], raw[:, monotone])
    if method == "ibp":
        assert monotone.all()
    # a binary search: at most ceil(log2(E + 1)) bounds per sample, not E
    assert 0 < result.evaluations <= x.shape[0] * math.ceil(math.log2(len(grid) + 1))


def test_the_attacks_give_the_upper_bound_on_the_same_images_where_they_ran_at_that_radius():
    """certified.csv's attack_upper_bound: the share correct and not broken at a radius ≤ ε, only where an
    attack covering every certified image ran at exactly ε (NaN elsewhere)."""
    model, x, y = trained_tiny()
    grid = [0.01, 0.03, 0.1]
    plain = Certifier(method="crown", epsilons=grid, batch_size=64, radius_tolerance=None).run(model, x, y)
    n = x.shape[0]
    broken_01 = torch.zeros(n, dtype=torch.bool)
    broken_01[~plain.certified[-1]] = True  # the attack broke what no bound proves at 0.1 ...
    broken_01[:3] = False  # ... but not everything
    broken_01 &= ~plain.certified[-1]
    broken_03 = broken_01.clone()
    broken_03[-n // 2:] = False  # at 0.03 it broke less (and the 0.01 entry covers only half the images)
    broken_03 &= ~plain.certified[1]
    broken = {0.1: broken_01, 0.03: broken_03, 0.01: torch.zeros(n // 2, dtype=torch.bool)}
    result = Certifier(method="crown", epsilons=grid, batch_size=64, radius_tolerance=None).run(model, x, y, broken)
    assert torch.equal(result.certified, plain.certified) and result.contradicted == [0, 0, 0]
    upper = result.attack_upper_bound()
    correct = plain.correct
    assert upper[0] is None  # the attack at 0.01 did not cover every certified image
    assert upper[1] == pytest.approx((correct & ~broken_03).float().mean().item())
    assert upper[2] == pytest.approx((correct & ~(broken_01 | broken_03)).float().mean().item())  # ≤ ε breaks too
    meta = {"dataset": "d", "model": "m", "reg": "none", "reg_weight": 0.0, "reg_scale": 1.0, "seed": 0}
    table = result.table(meta)
    assert math.isnan(table["attack_upper_bound"].iloc[0])
    assert (table["attack_upper_bound"].iloc[1:] >= table["certified_accuracy"].iloc[1:]).all()
    assert result.summary()["attack_upper_bound"][0] is None
    unattacked = plain.table(meta)
    assert "attack_upper_bound" not in unattacked.columns and "attack_upper_bound" not in plain.summary()


def test_an_attack_on_fewer_images_gives_no_same_image_bound_for_more():
    """robustness_table's ``broken`` is as long as the most images an attack covered at a radius: an attack
    trimmed to the first 40 bounds nothing on the first 100 (the unattacked 60 would count as robust)."""
    from isorobust.attacks.base import FGSM
    from isorobust.attacks.sweep import robustness_table
    from isorobust.data.dataset import Split

    model, x, y = trained_tiny()
    x, y = x[:100], y[:100]
    meta = {"dataset": "d", "model": "m", "reg": "none", "reg_weight": 0.0, "reg_scale": 1.0, "seed": 0}
    certifier = Certifier(method="crown", epsilons=[0.03, 0.1], batch_size=64, radius_tolerance=None)
    trimmed = {}
    robustness_table(model, Split(x, y), {"fgsm": FGSM(n_samples=40)}, [0.03, 0.1], None, 100, 0, meta,
                     progress=False, broken=trimmed)
    assert {e: h.shape[0] for e, h in trimmed.items()} == {0.03: 40, 0.1: 40}
    assert certifier.run(model, x, y, trimmed).attack_upper_bound() == [None, None]
    full = {}
    robustness_table(model, Split(x, y), {"fgsm": FGSM(n_samples=40), "all": FGSM(epsilons=[0.1])}, [0.03, 0.1],
                     None, 100, 0, meta, progress=False, broken=full)
    assert {e: h.shape[0] for e, h in full.items()} == {0.03: 40, 0.1: 100}
    upper = certifier.run(model, x, y, full).attack_upper_bound()
    assert upper[0] is None and upper[1] is not None


def test_a_certificate_an_attack_contradicts_is_withdrawn_and_counted(caplog):
    """An adversarial example inside a certified ball proves the certificate wrong: it is withdrawn at that ε
    and every larger one and from the radius, counted and logged as an error (never silently kept)."""
    model, x, y = trained_tiny()
    grid = [0.01, 0.03, 0.1]
    plain = Certifier(method="crown", epsilons=grid, batch_size=64, radius_tolerance=0.05).run(model, x, y)
    victim = int(plain.certified[1].nonzero()[0, 0])  # certified at 0.03 (and at 0.01)
    assert plain.radius[victim] >= 0.03
    broken = {eps: torch.zeros(x.shape[0], dtype=torch.bool) for eps in grid}
    broken[0.03][victim] = True  # planted: "broken" at 0.03
    with caplog.at_level("ERROR"):
        result = Certifier(method="crown", epsilons=grid, batch_size=64, radius_tolerance=0.05).run(model, x, y,
                                                                                                     broken)
    assert "UNSOUND" in caplog.text
    assert bool(result.certified[0, victim]) and not result.certified[1:, victim].any()
    assert result.contradicted == [0, 1, int(plain.certified[2, victim])]
    assert result.radius[victim] == pytest.approx(0.01) and result.radius_bound[victim] <= 0.03 + 1e-9
    others = torch.ones(x.shape[0], dtype=torch.bool)
    others[victim] = False
    assert torch.equal(result.certified[:, others], plain.certified[:, others])
    assert (result.certified[1:] <= result.certified[:-1]).all()  # still monotone in ε
    # broken at 0.02, between grid points: the radius (≥ 0.03) falls below it, to the grid's 0.01
    off_grid = {0.02: torch.zeros(x.shape[0], dtype=torch.bool)}
    off_grid[0.02][victim] = True
    result = Certifier(method="crown", epsilons=grid, batch_size=64, radius_tolerance=0.05).run(model, x, y,
                                                                                                 off_grid)
    assert result.radius_contradicted == 1 and result.radius[victim] == pytest.approx(0.01)
    assert result.radius_bound[victim] <= 0.02 + 1e-9 and bool(result.certified[0, victim])
    assert result.contradicted[1] == 1  # the ball of 0.03 holds the example found within 0.02


def test_ibp_margin_bounds_shrink_as_the_ball_grows():
    model, x, y = trained_tiny()
    layers = certifiable_layers(model)
    bounds = [ibp_margin_bounds(layers, x, y, eps) for eps in (0.0, 0.01, 0.05, 0.2)]
    for smaller, larger in zip(bounds, bounds[1:]):
        assert (larger <= smaller + 1e-6).all()


@pytest.mark.parametrize("method", ["ibp", "crown"])
def test_the_searched_radius_is_certified_and_its_bound_is_not_within_the_tolerance(method):
    model, x, y = trained_tiny()
    tolerance, grid = 0.01, [0.01, 0.03, 0.1]
    result = Certifier(method=method, epsilons=grid, batch_size=64, radius_tolerance=tolerance).run(model, x, y)
    layers = certifiable_layers(model)
    radius, bound, correct = result.radius, result.radius_bound, result.correct
    assert (radius[~correct] == 0).all() and (radius <= max(grid)).all()
    searched = correct & (radius < max(grid))
    assert searched.sum() > 10 and (radius[correct] > 0).sum() > 10
    assert (bound[searched] > radius[searched]).all()
    floor = 0.01 * min(grid)
    assert ((bound - radius)[searched] <= tolerance * bound[searched].clamp(min=floor) + 1e-7).all()
    positive = correct & (radius > 0)
    assert certified_mask(layers, x[positive], y[positive], correct[positive], radius[positive], method).all()
    assert not certified_mask(layers, x[searched], y[searched], correct[searched], bound[searched], method).any()
    if method == "ibp":  # monotone: nothing from the bound up is certified either
        above = torch.minimum(bound[searched] * 1.5, torch.tensor(max(grid), dtype=bound.dtype))
        assert not certified_mask(layers, x[searched], y[searched], correct[searched], above, method).any()
    # the per-sample radius agrees with the grid: certified at ε exactly when the radius reaches ε
    for eps, mask in zip(grid, result.certified):
        assert torch.equal(mask, correct & (radius >= eps - 1e-7))
    ordered = radius.double().sort().values
    middle = ordered[(len(ordered) - 1) // 2 : len(ordered) // 2 + 1].mean()  # the mean of the middle pair
    assert result.median_radius == pytest.approx(float(middle))
    summary = result.summary()
    assert 0 < summary["radius_resolution"] <= tolerance + 1e-6 and summary["radius_tolerance"] == tolerance


def test_the_radius_search_needs_fewer_bounds_than_bisection_to_the_same_tolerance():
    """Regula falsi (Illinois) on the margin bound: the cost that lets the radii run on all 10000 images."""
    model, x, y = trained_tiny()
    tolerance, grid = 0.01, [0.01, 0.03, 0.1]
    with_radii = Certifier(method="crown", epsilons=grid, radius_tolerance=tolerance).run(model, x, y)
    grid_only = Certifier(method="crown", epsilons=grid, radius_tolerance=None).run(model, x, y)
    searched = (with_radii.correct & (with_radii.radius < max(grid))).sum().item()
    # bisection halves each bracket (ratio up to 3 here) until it is within 1 %: >= 6 halvings per sample
    assert with_radii.evaluations - grid_only.evaluations < 5 * searched


def test_min_margin_bounds_do_not_depend_on_the_batching_or_leave_the_thread_count_changed():
    model, x, y = trained_tiny()
    model, x = model.double(), x.double()
    layers = certifiable_layers(model)
    index = torch.arange(x.shape[0] - 1, -1, -3)  # a subset in reverse order
    eps = torch.linspace(0.001, 0.05, index.numel(), dtype=x.dtype)
    threads = torch.get_num_threads()
    one = min_margin_bounds(layers, x, y, index, eps, "crown", batch_size=5)
    assert torch.get_num_threads() == threads
    each = torch.stack([margin_bound(layers, x[i : i + 1], y[i : i + 1], e) for i, e in zip(index, eps)])
    torch.testing.assert_close(one, each, rtol=0, atol=1e-9)


def margin_bound(layers, x, y, eps):
    return crown_margin_bounds(layers, x, y, float(eps)).min()


def test_crown_tightens_the_cnn_after_its_ibp_front_end_and_says_so():
    model, shape = tiny_networks()["cnn"]
    x = torch.rand((6, *shape), dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    result = Certifier(method="crown", epsilons=[0.01], radius_tolerance=None).run(model, x, y)
    assert result.method == "crown (ibp through conv/max-pool)"
    assert Certifier(method="crown", epsilons=[0.01], radius_tolerance=None).run(
        tiny_networks()["mlp_tanh"][0], torch.rand(2, 6, dtype=torch.float64), torch.zeros(2, dtype=torch.long)
    ).method == "crown"
    layers = certifiable_layers(model)
    assert (crown_margin_bounds(layers, x, y, 0.05) >= ibp_margin_bounds(layers, x, y, 0.05) - 1e-9).all()


def test_models_without_a_bound_are_refused_with_one_line():
    certifier = Certifier(method="crown")
    with pytest.raises(ConfigError, match="GELU has no bound"):
        certifier.layers(MLP(6, width=4, depth=1, num_classes=3, activation="gelu"))
    with pytest.raises(ConfigError, match="certify.method must be one of ibp, crown, alpha_crown, bab"):
        Certifier(method="lp")
    with pytest.raises(ConfigError, match="certify.epsilons"):
        Certifier(epsilons=[0.1, 1.5])


def test_certify_grid_matches_the_batched_margins_on_gpu_if_there_is_one():
    """The same numbers on any batch size (and on CUDA when present): the batching is not the result."""
    model, x, y = trained_tiny()
    model, x = model.double(), x.double()  # float64: a different summation order flips no bound
    layers = certifiable_layers(model)
    with torch.no_grad():
        correct, margins = clean_predictions(model, x, y, batch_size=1000)
    one = certify_grid(layers, x, y, correct, margins, [0.01, 0.05], "crown", batch_size=7).certified
    all_at_once = certify_grid(layers, x, y, correct, margins, [0.01, 0.05], "crown", batch_size=1000).certified
    assert torch.equal(one, all_at_once) and one.any() and not one.all()
    if torch.cuda.is_available():
        cuda = certify_grid(certifiable_layers(model.cuda()), x.cuda(), y.cuda(), correct.cuda(), margins.cuda(),
                            [0.01, 0.05], "crown", batch_size=64).certified
        assert torch.equal(cuda.cpu(), one)


# ---------------------------------------------------------------------------------------------------
# Sweeps: certified accuracy gets the attacks' statistics over seeds

CERTIFIED = {(0.0, 0): 0.40, (0.0, 1): 0.50, (0.0, 2): 0.60, (1.0, 0): 0.45, (1.0, 1): 0.53, (1.0, 2): 0.64}
RADIUS = {(0.0, 0): 0.0150, (0.0, 1): 0.0160, (0.0, 2): 0.0170, (1.0, 0): 0.0160, (1.0, 1): 0.0140, (1.0, 2): 0.0175}


def make_run(run: Path, weight: float, seed: int, certified: bool | str) -> None:
    """A finished run; ``certified``: True (trained with certify=crown), "after" (certified afterwards by
    ``isorobust certify``: certify/certified.csv and certify.json) or False."""
    (run / ".hydra").mkdir(parents=True)
    own = certified is True
    overrides = ["+reg=isometric", f"reg.weight={weight:g}", f"seed={seed}", *(["certify=crown"] if own else [])]
    (run / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(overrides)))
    (run / ".hydra" / "config.yaml").write_text("seed: 0\n")
    rows = [dict(zip(TABLE_COLUMNS, ["mnist", "mlp", "isometric", weight, 10.0, seed, attack, "linf", 0.03, 100,
                                     0.97, CERTIFIED[(weight, seed)] + 0.2])) for attack in ("pgd", "worst_case")]
    pd.DataFrame(rows).to_csv(run / "robustness.csv", index=False)
    summary = {"method": "crown", "n_samples": 50, "median_radius": RADIUS[(weight, seed)], "radius_max": 0.05}
    if certified:
        folder = run if own else run / "certify"
        (folder / ".hydra").mkdir(parents=True, exist_ok=True)
        cert = [dict(zip(CERTIFIED_COLUMNS, ["mnist", "mlp", "isometric", weight, 10.0, seed, "crown", eps, 50,
                                             0.97, CERTIFIED[(weight, seed)] - shift]))
                for eps, shift in ((0.01, 0.0), (0.03, 0.1))]
        pd.DataFrame(cert).to_csv(folder / "certified.csv", index=False)
        if not own:  # what `isorobust certify` leaves: its own Hydra record (job name certify) and certify.json
            (folder / ".hydra" / "hydra.yaml").write_text("hydra:\n  job:\n    name: certify\n")
            (folder / "certify.json").write_text(json.dumps({"run": str(run), "certify": summary}))
    (run / "metrics.json").write_text(json.dumps({
        "clean_accuracy": 0.97, "seconds": {"total": 1.0}, **({"certify": summary} if own else {}),
        "environment": {"machine": "x86_64", "torch": "2.x", "device": "cpu", "threads": 1}}))


def make_sweep(folder: Path, certified: bool | str) -> Path:
    for job, (weight, seed) in enumerate(sorted(CERTIFIED)):
        make_run(folder / str(job), weight, seed, certified)
    (folder / "multirun.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(
        {"hydra": {"overrides": {"hydra": ["hydra.mode=MULTIRUN"], "task": ["reg.weight=0,1", "seed=0,1,2"]}}})))
    return folder


def test_summaries_give_certified_accuracy_the_same_statistics_and_leave_other_runs_alone(tmp_path):
    from isorobust.reports.aggregate import aggregate_robustness, paired_differences, summary_frame
    from isorobust.rundir import find_runs
    from isorobust.reports.sweep import write_report
    from isorobust.reports.study import write_study

    with_cert, without = make_sweep(tmp_path / "cert", True), make_sweep(tmp_path / "plain", False)
    summary = summary_frame(find_runs(with_cert), with_cert)
    assert set(summary["attack"]) == {"pgd", "worst_case", "certified_crown"}
    assert set(summary["setting"]) == {""}  # certify=crown does not make another configuration
    assert (summary["eval_samples"] == 100).all()  # the attacks' sample count, not the certifier's
    stats = aggregate_robustness(summary).set_index(["reg_weight", "attack", "epsilon"])
    row = stats.loc[(0.0, "certified_crown", 0.01)]
    assert row["mean"] == pytest.approx(0.5) and row["std"] == pytest.approx(0.1) and row["n"] == 3
    assert stats.loc[(1.0, "certified_crown", 0.03), "n_samples"] == 50
    paired = paired_differences(summary).set_index(["reg_weight", "attack", "epsilon"])
    diff = paired.loc[(1.0, "certified_crown", 0.01)]  # +5, +3, +4 points: 4 ± t(0.975, 2)·1/√3
    half = 0.01 * scipy.stats.t.ppf(0.975, 2) / math.sqrt(3)
    assert diff["mean"] == pytest.approx(0.04) and diff["ci_low"] == pytest.approx(0.04 - half)

    report = write_report(with_cert)
    assert "## certified_crown (linf): certified accuracy (a lower bound) on 50 test samples" in report.markdown
    assert "### certified_crown" in report.markdown
    plain = write_report(without).markdown
    assert "certified_" not in plain.split("\n", 1)[1] and "certified accuracy" not in plain  # line 1: the path

    def section(markdown: str, title: str) -> str:
        return markdown.split(f"## {title}")[1].split("\n## ")[0]

    for title in ("Clean accuracy", "pgd", "worst_case"):  # the attacks' tables are the plain sweep's
        assert section(report.markdown, title) == section(plain, title)
    radius = section(report.markdown, "Median certified radius")
    assert "0.0160 ± 0.0010 [" in radius and "(3)" in radius  # β=0: 0.015, 0.016, 0.017
    study = write_study([with_cert], tmp_path / "docs" / "study.md").markdown
    certified = section(study, "Certified accuracy (lower bounds)")
    assert "β=1" in certified and "+4.0 [" in certified and "(reference)" in certified
    assert "ε=0.01" in certified and "ε=0.03" in certified
    assert "median radius" in certified and "0.0158 ± 0.0018" in certified  # β=1: 0.016, 0.014, 0.0175
    # generated: both radii +4.0 points beyond noise; the radius +0.0005 [..] is not
    assert "of 3 paired comparisons" in certified and "2 are above it beyond seed noise" in certified
    assert "median radius (+" not in certified.split("In words")[1]
    # lower and upper bound side by side where both ran (ε=0.03): β=0 certified 40 %, worst case 70 %
    # the upper bound is on the 100 attacked images, not the 50 certified: said once, and no verdict on the truth
    assert "certified on the first 50 test images, attacked on 100: not the same images" in certified
    assert "40.0–70.0 (30.0)" in certified and "at ε=0.03, in points: β=0 30.0, β=1 30.0." in certified
    assert "not decided here by certified_crown for β=0, β=1: certified on the first 50 test images, attacked " \
           "on 100" in certified and "True robust accuracy at" not in certified
    # both bounds rose together here: no "easier to prove" verdict
    assert ("At ε=0.03, certified_crown certified accuracy is above the reference beyond seed noise for 1 "
            "configuration(s) (β=1 +4.0). The worst-case attack accuracy at the same radius is also above it "
            "for 1") in certified and "easier to prove robust" not in certified
    assert section(study, "Headline").count("worst ε=") == 1  # the headline keeps the attacks' radii
    assert "Certified accuracy" not in write_study([without], tmp_path / "docs" / "plain.md").markdown


def test_runs_certified_afterwards_count_like_runs_certified_in_training(tmp_path):
    """`isorobust certify run=DIR` writes DIR/certify/: summaries read it as the run's own certified.csv,
    and its folder (a Hydra job named certify) is not taken for a training run."""
    from isorobust.reports.aggregate import summary_frame
    from isorobust.rundir import find_runs
    from isorobust.reports.sweep import write_report

    own, after = make_sweep(tmp_path / "own", True), make_sweep(tmp_path / "after", "after")
    runs = find_runs(after)
    assert len(runs) == 6 and all(r.path.name != "certify" for r in runs)
    columns = ["run", "reg_weight", "seed", "attack", "epsilon", "n_samples", "robust_accuracy"]
    first, second = summary_frame(find_runs(own), own), summary_frame(runs, after)
    pd.testing.assert_frame_equal(first[columns], second[columns])
    assert "## Median certified radius" in write_report(after).markdown
    from isorobust.reports.study import write_study

    # the attacks' upper bound of β=1 level with β=0's (seed by seed −1, +1, 0 points): only the lower bound rose
    for job, (weight, seed) in enumerate(sorted(CERTIFIED)):
        if weight == 1.0:
            table = pd.read_csv(after / str(job) / "robustness.csv")
            table["robust_accuracy"] = CERTIFIED[(0.0, seed)] + 0.2 + (-0.01, 0.01, 0.0)[seed]
            table.to_csv(after / str(job) / "robustness.csv", index=False)
    study = write_study([after], tmp_path / "docs" / "after.md").markdown
    assert "Certified during training in 0 runs and afterwards by `isorobust certify run=DIR` in 6" in study
    assert ("not distinguishable from it for 1 (β=1 +0.0 [" in study
            and "the models became easier to prove robust at this radius" in study)


def test_a_hierarchical_runs_same_image_bound_is_its_finest_levels():
    """The certified classifier of a hierarchical model is its finest level: the certification's upper bound
    joins (and competes with) that level's worst_case_first<N> row only; a coarser level's rows stay as they
    are and never bound it."""
    from isorobust.reports.aggregate import with_same_image_upper

    def row(level, attack, n, acc):
        return {"attack": attack, "norm": "linf", "epsilon": 0.01, "n_samples": n, "level": level,
                "robust_accuracy": acc, "seed": 0}

    table = pd.DataFrame([row(0, "worst_case", 100, 0.1), row(1, "worst_case", 100, 0.5),
                          row(0, "worst_case_first50", 50, 0.2), row(1, "worst_case_first50", 50, 0.7)])
    certified = pd.DataFrame([{"method": "crown", "epsilon": 0.01, "n_samples": 50, "clean_accuracy": 0.9,
                               "certified_accuracy": 0.4, "attack_upper_bound": 0.65, "seed": 0}])
    out = with_same_image_upper(table, [certified]).set_index(["level", "attack"])["robust_accuracy"]
    assert out[(1, "worst_case_first50")] == pytest.approx(0.65)  # the lower of 0.7 and the certification's
    assert out[(0, "worst_case_first50")] == pytest.approx(0.2)  # the coarse level's own row, untouched
    assert len(out) == 4


def test_a_certification_that_attacked_its_own_images_brackets_the_truth_on_them(tmp_path):
    """certify.json/certified.csv with attack_upper_bound: the summary gains worst_case_first50 rows at the
    certified radii (one per run and ε, the lowest where two certifications cover the same images), the
    study's bracket is on the same images, and only then does it decide where the brackets do not overlap."""
    from isorobust.reports.aggregate import summary_frame
    from isorobust.reports.study import write_study
    from isorobust.rundir import find_runs

    after = make_sweep(tmp_path / "after", "after")
    for job, (weight, seed) in enumerate(sorted(CERTIFIED)):
        path = after / str(job) / "certify" / "certified.csv"
        table = pd.read_csv(path)
        table["attack_upper_bound"] = table["certified_accuracy"] + 0.01  # β=0 at 0.01: 0.51 on the same images
        table.to_csv(path, index=False)
        if job == 0:  # a second certification of the same 50 images with a weaker attack: the lowest counts
            other = after / "0" / "certify_ibp"
            other.mkdir()
            weaker = table.assign(method="ibp", certified_accuracy=0.0, attack_upper_bound=0.99)
            weaker.to_csv(other / "certified.csv", index=False)
    summary = summary_frame(find_runs(after), after)
    same = summary[summary["attack"] == "worst_case_first50"]
    assert len(same) == 12 and sorted(same["epsilon"].unique()) == [0.01, 0.03]  # 6 runs × 2 radii, no doubles
    run0 = same[same["run"] == "0"].set_index("epsilon")["robust_accuracy"]
    assert run0[0.01] == pytest.approx(0.41) and run0[0.03] == pytest.approx(0.31)
    study = write_study([after], tmp_path / "docs" / "after.md").markdown
    certified = study.split("## Certified accuracy")[1].split("\n## ")[0]
    assert ("certified on the first 50 test images and attacked on the same images, whose true robust accuracy "
            "lies in between)") in certified
    assert "†" not in certified  # every bound on the images certified
    # β=1's lower bound at 0.01 (mean 0.54) is above β=0's upper bound on the same images (0.51): decided
    assert ("True robust accuracy at ε=0.01 on the first 50 test images (certified_crown lower bounds, "
            "worst-case attack upper bounds on the same images, means over these seeds' models; a proof about "
            "these models on these images, not a test across seeds): proved higher than β=0's "
            "for 1 (lower bound above its upper bound: β=1 (54.0 > 51.0))") in certified
    assert "not decided here by certified_crown" not in certified
    headline = study.split("## Headline")[1].split("\n## ")[0]  # the attacks' radius, not the certifications'
    assert headline.count("worst ε=") == 1 and "worst ε=0.03" in headline
    conclusion = study.split("## Conclusion")[1].split("\n## ")[0]  # the verdict leads the report too
    assert "proved higher than β=0's for 1 (lower bound above its upper bound: β=1 (54.0 > 51.0))" in conclusion
    # one β=1 seed certified without attacking: its mean upper bound is over other models than its lower bound's
    last = after / str(len(CERTIFIED) - 1) / "certify" / "certified.csv"
    pd.read_csv(last).drop(columns=["attack_upper_bound"]).to_csv(last, index=False)
    study = write_study([after], tmp_path / "docs" / "after2.md").markdown
    certified = study.split("## Certified accuracy")[1].split("\n## ")[0]
    assert "proved higher" not in certified and "54.0–50.0 (-4.0)‡" in certified
    assert "Not decided by certified_crown for β=1 either: the upper bound on the certified images exists for " \
           "only some of the seeds" in certified


def test_every_method_certified_afterwards_gets_its_own_rows_in_summaries_and_study_reports(tmp_path):
    """certify/ (CROWN) and certify_alpha_crown/ beside it: both methods reach the summary, with the same
    statistics, and the study report gets a section per method."""
    from isorobust.reports.aggregate import summary_frame
    from isorobust.rundir import find_runs
    from isorobust.reports.study import write_study

    sweep = make_sweep(tmp_path / "sweep", "after")
    for job, (weight, seed) in enumerate(sorted(CERTIFIED)):
        folder = sweep / str(job) / "certify_alpha_crown"
        folder.mkdir()
        tighter = pd.read_csv(sweep / str(job) / "certify" / "certified.csv")
        tighter["method"] = "alpha_crown"
        tighter["certified_accuracy"] += 0.05
        tighter.to_csv(folder / "certified.csv", index=False)
    runs = find_runs(sweep)
    assert len(runs) == 6  # certify_alpha_crown/ is not a run
    summary = summary_frame(runs, sweep)
    methods = summary[summary["attack"].str.startswith("certified_")]
    assert sorted(methods["attack"].unique()) == ["certified_alpha_crown", "certified_crown"]
    both = methods.pivot_table(index=["run", "epsilon"], columns="attack", values="robust_accuracy")
    assert (both["certified_alpha_crown"] - both["certified_crown"]).round(6).eq(0.05).all()
    study = write_study([sweep], tmp_path / "docs" / "study.md").markdown
    assert "certified_alpha_crown" in study and "certified_crown" in study


# ---------------------------------------------------------------------------------------------------
# The command line

QUICK = ["dataset.train_size=200", "dataset.test_size=100", "trainer.epochs=1", "eval.n_samples=20"]


@pytest.mark.parametrize("overrides,needle", [
    (["certify=crown", "certify.epsilons=[0.01,1.5]"], "certify.epsilons"),
    (["certify=crown", "certify.radius_tolerance=2"], "certify.radius_tolerance"),
    (["certify=ibp", "certify.batch_size=0"], "certify.batch_size"),
    (["certify=crown", "certify.n_samples=0"], "certify.n_samples"),
    (["certify=crown", "certify.method=lp"], "certify.method must be one of ibp, crown, alpha_crown, bab"),
    (["certify=zonotope"], "unknown certify 'zonotope'"),
])
def test_bad_certify_values_give_one_line_and_exit_status_2(tmp_path, overrides, needle):
    run_dir = tmp_path / "run"
    proc = run_cli("train", *QUICK, *overrides, f"hydra.run.dir={run_dir}", cwd=tmp_path,
                   env={"ISOROBUST_DATA": str(tmp_path / "nowhere")})
    assert proc.returncode == 2
    assert_one_line_error(proc, needle, run_dir)
    assert not (run_dir / "certified.csv").exists()


def test_the_certify_command_refuses_a_wrong_run_before_creating_anything(tmp_path):
    nowhere = tmp_path / "nowhere"
    proc = run_cli("certify", f"run={nowhere}", cwd=tmp_path)
    assert proc.returncode == 2 and "is not an isorobust run directory" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not nowhere.exists()  # no <run>/certify made in it
    proc = run_cli("certify", cwd=tmp_path)
    assert proc.returncode == 2 and "needs run=<run dir>" in proc.stderr
    proc = run_cli("certify", "certify=null", f"run={nowhere}", cwd=tmp_path)
    assert proc.returncode == 2 and "needs a method" in proc.stderr
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------
# End to end on real MNIST

E2E_EPSILONS = [0.01, 0.03, 0.05]
E2E = ["+reg=isometric", "certify=crown", "dataset.train_size=3000", "dataset.test_size=300", "trainer.epochs=1",
       "eval.n_samples=200", f"eval.epsilons=[{','.join(map(str, E2E_EPSILONS))}]", "eval.batch_size=200",
       "check.enabled=false", "certify.epsilons=[0.003,0.01,0.03]", "certify.n_samples=200", "threads=1"]


@pytest.fixture(scope="module")
def certified_run(tmp_path_factory):
    return finished_run(tmp_path_factory, "certify", *E2E)


@requires_mnist
@pytest.mark.e2e
def test_a_real_run_writes_certified_csv_and_the_certified_column(certified_run):
    _, run_dir, proc = certified_run
    table = pd.read_csv(run_dir / "certified.csv")
    assert list(table.columns) == [*CERTIFIED_COLUMNS, "attack_upper_bound"]
    assert (table["method"] == "crown").all() and (table["n_samples"] == 200).all()
    assert table["epsilon"].tolist() == [0.003, 0.01, 0.03]
    assert table["certified_accuracy"].is_monotonic_decreasing and table["certified_accuracy"].iloc[0] > 0.3
    robustness = pd.read_csv(run_dir / "robustness.csv")
    assert "certified" not in set(robustness["attack"])  # robustness.csv keeps the attacks only
    md = (run_dir / "robustness.md").read_text()
    assert "| ε | fgsm | pgd | worst_case | certified |" in md and "- certified: CROWN certified accuracy" in md
    assert md.splitlines()[0] in proc.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["seconds"]["certify"] > 0 and metrics["certify"]["method"] == "crown"
    assert 0 < metrics["certify"]["median_radius"] <= 0.03
    # lower bound ≤ upper bound, at every radius both evaluated
    worst = robustness[robustness["attack"] == "worst_case"].set_index("epsilon")["robust_accuracy"]
    for _, row in table[table["epsilon"].isin(worst.index)].iterrows():
        assert row["certified_accuracy"] <= worst[row["epsilon"]]
    # the run's attacks covered the 200 certified images at 0.01 and 0.03: its worst case is the same-image bound
    same = table.set_index("epsilon")["attack_upper_bound"]
    assert math.isnan(same[0.003]) and same[0.01] == pytest.approx(worst[0.01]) and same[0.03] == pytest.approx(
        worst[0.03])
    assert "certified and attacked on the first 200 test samples" in md


@requires_mnist
@pytest.mark.e2e
def test_the_attack_command_certifies_a_saved_run_when_asked(certified_run):
    work, run_dir, _ = certified_run
    out = work / "reattack"
    proc = run_cli("attack", f"run={run_dir}", "attack=fgsm", "certify=ibp", "certify.n_samples=50",
                   "certify.radius_tolerance=null", f"hydra.run.dir={out}", cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = pd.read_csv(out / "certified.csv")
    assert (table["method"] == "ibp").all() and (table["n_samples"] == 50).all()
    attack = json.loads((out / "attack.json").read_text())
    assert attack["certify"]["method"] == "ibp" and attack["certify"]["median_radius"] is None
    assert "| certified |" in (out / "robustness.md").read_text()
    plain = work / "reattack-plain"  # without certify=..., nothing is certified (not even from the run)
    proc = run_cli("attack", f"run={run_dir}", "attack=fgsm", f"hydra.run.dir={plain}", cwd=work)
    assert proc.returncode == 0 and not (plain / "certified.csv").exists()
    assert "certify" not in json.loads((plain / "attack.json").read_text())


@requires_mnist
@pytest.mark.e2e
def test_the_certify_command_writes_beside_the_run_and_repeats_the_runs_numbers(certified_run):
    work, run_dir, _ = certified_run
    proc = run_cli("certify", f"run={run_dir}", "certify.epsilons=[0.003,0.01,0.03]", "certify.n_samples=200",
                   cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again, own = pd.read_csv(run_dir / "certify" / "certified.csv"), pd.read_csv(run_dir / "certified.csv")
    pd.testing.assert_frame_equal(again[CERTIFIED_COLUMNS], own[CERTIFIED_COLUMNS])  # same model and settings
    # its own attack (apgd) on the same 200 images at every certified radius: the upper bound beside the lower
    assert again["attack_upper_bound"].notna().all()
    assert (again["attack_upper_bound"] >= again["certified_accuracy"]).all()
    assert (again["attack_upper_bound"] <= again["clean_accuracy"]).all()
    record = json.loads((run_dir / "certify" / "certify.json").read_text())
    assert list(record["certify"]["attacks"]) == ["apgd"] and record["certify"]["attack_seconds"] > 0
    assert record["certify"]["contradicted"] == [0, 0, 0]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert record["certify"]["median_radius"] == pytest.approx(metrics["certify"]["median_radius"], abs=1e-7)
    assert record["run"] == str(run_dir.resolve()) and "median certified radius" in proc.stdout
    from isorobust.rundir import find_runs

    assert [r.path for r in find_runs(run_dir)] == [run_dir]  # its folder is not a training run


def saved_model_and_test(run_dir: Path, n: int):
    """(the run's config, its saved model in eval mode, the first ``n`` MNIST test images and labels)."""
    from isorobust.data import load_mnist

    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    data = load_mnist(root=cfg.dataset.root, download=False, test_size=n)
    return cfg, load_model(run_dir / "model.pt").eval(), data.test.x, data.test.y


@requires_mnist
@pytest.mark.e2e
def test_no_certified_sample_is_broken_by_any_attack_of_the_run(certified_run):
    from isorobust.attacks.base import robust_masks
    from isorobust.jobs.build import build_attacks

    cfg, model, x, y = saved_model_and_test(certified_run[1], 200)
    run_dir = certified_run[1]
    written = pd.read_csv(run_dir / "certified.csv")
    result = Certifier(method="crown", epsilons=written["epsilon"].tolist(), radius_tolerance=None).run(model, x, y)
    for acc, expected in zip(result.certified_accuracy(), written["certified_accuracy"]):  # the run's, recomputed
        assert acc == pytest.approx(expected, abs=1e-6)
    result = Certifier(method="crown", epsilons=E2E_EPSILONS, radius_tolerance=None).run(model, x, y)
    certified = dict(zip(E2E_EPSILONS, result.certified))
    assert certified[0.01].sum() > 50
    for name, attack in build_attacks(cfg.attack).items():
        _, masks = robust_masks(model, attack, x, y, E2E_EPSILONS, 200, int(cfg.seed))
        for eps, robust in zip(E2E_EPSILONS, masks):
            broken = certified[eps] & ~robust
            assert not broken.any(), f"{name} broke {int(broken.sum())} samples certified at ε={eps}"


@requires_mnist
@pytest.mark.e2e
def test_the_certify_command_tightens_with_alpha_crown_and_branch_and_bound(certified_run):
    work, run_dir, _ = certified_run
    own = pd.read_csv(run_dir / "certified.csv")  # CROWN, in training
    out = work / "alpha"
    proc = run_cli("certify", f"run={run_dir}", "certify=alpha_crown", "certify.epsilons=[0.003,0.01,0.03]",
                   "certify.n_samples=200", "certify.alpha.iterations=5", "certify.radius_tolerance=null",
                   f"hydra.run.dir={out}", cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    alpha = pd.read_csv(out / "certified.csv")
    assert list(alpha.columns) == [*CERTIFIED_COLUMNS, "attack_upper_bound"]
    assert (alpha["method"] == "alpha_crown").all()
    assert (alpha["certified_accuracy"].to_numpy() >= own["certified_accuracy"].to_numpy()).all()
    assert (alpha["unknown"] == 0).all()
    record = json.loads((out / "certify.json").read_text())["certify"]
    assert record["tightened"]["per_epsilon"][1]["alpha_crown_ran_on"] > 0
    out = work / "bab"
    proc = run_cli("certify", f"run={run_dir}", "certify=bab", "certify.epsilons=[0.01]", "certify.n_samples=25",
                   "certify.alpha.iterations=5", "certify.bab.timeout=1", "certify.radius_tolerance=null",
                   f"hydra.run.dir={out}", cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    bab = pd.read_csv(out / "certified.csv")
    assert (bab["method"] == "bab").all() and 0 <= bab["unknown"].iloc[0] <= 1 - bab["certified_accuracy"].iloc[0]
    rows = json.loads((out / "certify.json").read_text())["certify"]["tightened"]["per_epsilon"][0]
    assert rows["bab_verified"] + rows["bab_falsified"] + rows["bab_unknown"] == rows["bab_ran_on"]


@requires_mnist
@pytest.mark.e2e
def test_no_image_verified_by_branch_and_bound_is_broken_by_any_attack(certified_run):
    from isorobust.attacks.base import robust_masks
    from isorobust.jobs.build import build_attacks

    cfg, model, x, y = saved_model_and_test(certified_run[1], 40)
    eps = [0.01]
    result = Certifier(method="bab", epsilons=eps, radius_tolerance=None, alpha={"iterations": 10},
                       bab={"timeout": 1.5}).run(model, x, y)
    crown = Certifier(method="crown", epsilons=eps, radius_tolerance=None).run(model, x, y)
    assert (result.certified >= crown.certified).all()
    assert result.tightened["per_epsilon"][0]["bab_ran_on"] > 0  # something was left to branch on
    apgd = OmegaConf.load(Path(__file__).resolve().parents[1] / "configs" / "attack" / "apgd.yaml")
    attacks = build_attacks({**cfg.attack, "apgd": apgd})  # the run's, and APGD-CE + APGD-T
    for name, attack in attacks.items():
        _, masks = robust_masks(model, attack, x, y, eps, 40, int(cfg.seed))
        for e, robust in enumerate(masks):
            assert not (result.certified[e] & ~robust).any(), f"{name} broke an image verified at ε={eps[e]}"
            # and what branch and bound falsified, an attack may break too; never a verified one
            assert not (result.certified[e] & result.falsified[e]).any()
