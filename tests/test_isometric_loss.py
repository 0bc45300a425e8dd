import pytest
import torch

from isorobust import isometric_loss
from isorobust.losses import IsometricRegularizer, isometric_loss_reference, pairwise_distances


def test_hand_computed_case():
    # same-class pair (0,1): |x0-x1| = 5, |z0-z1| = 1, scale 2 -> (2*1 - 5)^2 = 9, counted as (0,1) and (1,0);
    # sample 2 is alone in its class. Mean over all 3x3 pairs: 18 / 9 = 2.
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0]])
    z = torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0]])
    y = torch.tensor([0, 0, 1])
    assert isometric_loss(x, z, y, scale=2.0).item() == pytest.approx(2.0, abs=1e-6)
    # with scale 1: (1 - 5)^2 * 2 / 9
    assert isometric_loss(x, z, y).item() == pytest.approx(32 / 9, abs=1e-6)


def test_zero_for_exact_scaled_isometry_within_classes():
    torch.manual_seed(0)
    x = torch.rand(32, 1, 4, 4)
    y = torch.randint(0, 3, (32,))
    q, _ = torch.linalg.qr(torch.randn(16, 16, dtype=torch.float64))
    K = 4.0
    # z = rotation of x, shrunk by K: every distance is exactly |x_i - x_j| / K
    z = (x.reshape(32, -1).double() @ q / K).float()
    assert isometric_loss(x, z, y, scale=K).item() == pytest.approx(0.0, abs=1e-9)
    assert isometric_loss(x, z, y, scale=2 * K).item() > 0.1


def test_cross_class_pairs_never_contribute():
    torch.manual_seed(1)
    x = torch.rand(40, 10, dtype=torch.float64)
    y = torch.tensor([0] * 20 + [1] * 20)
    z = torch.rand(40, 5, dtype=torch.float64)
    base = isometric_loss(x, z, y, scale=3.0)
    moved = z.clone()
    moved[20:] += 100.0  # class 1 far away: only cross-class distances change
    assert isometric_loss(x, moved, y, scale=3.0).item() == pytest.approx(base.item(), rel=1e-9)
    # all labels distinct: no same-class pairs except i=j -> exactly zero
    assert isometric_loss(x, z, torch.arange(40), scale=3.0).item() == 0.0


def test_mean_is_over_all_pairs_not_same_class_pairs():
    x = torch.tensor([[0.0], [1.0], [5.0], [9.0]])
    z = torch.zeros(4, 1)
    y = torch.tensor([0, 0, 1, 2])
    # only (0,1),(1,0) contribute 1 each; divided by 16 pairs
    assert isometric_loss(x, z, y).item() == pytest.approx(2 / 16)


def test_gradient_is_finite_with_zero_distances():
    x = torch.rand(6, 8)
    x[3] = x[2]  # duplicate input
    z = torch.rand(6, 4)
    z[1] = z[0]  # duplicate representation
    z.requires_grad_(True)
    x.requires_grad_(True)
    y = torch.tensor([0, 0, 1, 1, 0, 1])
    isometric_loss(x, z, y, scale=10.0).backward()
    assert torch.isfinite(z.grad).all() and torch.isfinite(x.grad).all()
    assert z.grad.abs().sum() > 0


def test_gradient_matches_finite_differences():
    torch.manual_seed(2)
    x = torch.rand(7, 5, dtype=torch.float64)
    z = torch.rand(7, 3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 0, 1, 0, 2, 2])
    assert torch.autograd.gradcheck(lambda zz: isometric_loss(x, zz, y, scale=2.5), (z,))


@pytest.mark.parametrize("seed", range(5))
def test_matches_straightforward_formula(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(100, 1, 28, 28, generator=g)
    z = torch.tanh(torch.randn(100, 100, generator=g))
    y = torch.randint(0, 10, (100,), generator=g)
    fast = isometric_loss(x, z, y, scale=10.0)
    ref = isometric_loss_reference(x, z, y, scale=10.0)
    assert abs(fast.item() - ref.item()) <= 1e-6 * max(1.0, abs(ref.item()))


@pytest.mark.parametrize("seed", range(3))
def test_gradients_match_straightforward_formula(seed):
    # The written-out backward (representations) and the input side (the original protocol's
    # attack differentiates through x) against autograd through the literal formula.
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(60, 1, 5, 5, dtype=torch.float64, generator=g, requires_grad=True)
    z = torch.tanh(torch.randn(60, 16, dtype=torch.float64, generator=g)).requires_grad_(True)
    y = torch.randint(0, 5, (60,), generator=g)
    fast = torch.autograd.grad(isometric_loss(x, z, y, scale=3.0), (x, z))
    ref = torch.autograd.grad(isometric_loss_reference(x, z, y, scale=3.0), (x, z))
    for a, b in zip(fast, ref):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def test_weighted_gradient_scales_with_the_upstream_gradient():
    g = torch.Generator().manual_seed(7)
    x, z = torch.rand(20, 6, generator=g), torch.rand(20, 4, generator=g, requires_grad=True)
    y = torch.randint(0, 3, (20,), generator=g)
    (g1,) = torch.autograd.grad(isometric_loss(x, z, y, 2.0), z)
    (g2,) = torch.autograd.grad(0.1 * isometric_loss(x, z, y, 2.0), z)
    assert torch.allclose(g2, 0.1 * g1, rtol=1e-5, atol=1e-8) and g1.abs().sum() > 0


def test_pairwise_distances_zero_diagonal_and_symmetric():
    a = torch.rand(10, 3) * 100
    d = pairwise_distances(a)
    assert torch.all(d.diagonal() == 0)
    assert torch.allclose(d, d.T)
    assert torch.allclose(d, torch.cdist(a, a, compute_mode="donot_use_mm_for_euclid_dist"), atol=1e-3)


def test_batch_size_mismatch_is_an_error():
    with pytest.raises(ValueError, match="batch sizes differ"):
        isometric_loss(torch.rand(4, 2), torch.rand(3, 2), torch.zeros(4, dtype=torch.long))


def test_regularizer_uses_configured_layer():
    x = torch.rand(8, 4)
    y = torch.randint(0, 2, (8,))
    feats = [torch.rand(8, 3), torch.rand(8, 3)]
    reg = IsometricRegularizer(weight=0.1, scale=2.0, layer=0)
    assert reg(x, torch.rand(8, 2), feats, y).item() == pytest.approx(isometric_loss(x, feats[0], y, scale=2.0).item())


@pytest.mark.parametrize("seed", range(3))
def test_float32_is_accurate_for_representations_far_from_the_origin(seed):
    # Distances do not change under a shift of the representations, but float32 rounding of the
    # Gram form grows with ‖z‖²: centring z keeps the term accurate (about 1e-7 relative here;
    # without it, 2e-4 to 2e-3). The reference is the literal formula in float64.
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(100, 1, 28, 28, generator=g)
    z = torch.tanh(torch.randn(100, 100, generator=g))
    y = torch.randint(0, 10, (100,), generator=g)
    for scale in (1.0, 10.0):
        ref = isometric_loss_reference(x.double(), z.double() + 100.0, y, scale=scale).item()
        got = isometric_loss(x, z + 100.0, y, scale=scale)
        assert got.dtype == torch.float32
        assert abs(got.item() - ref) <= 1e-5 * ref, (scale, got.item(), ref)
