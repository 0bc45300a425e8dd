import torch
import torch.nn.functional as F

from isorobust.attacks.base import FGSM, LinfPGD, robust_accuracy_curve
from isorobust.models import MLP


def trained_tiny_model():
    """A small MLP fitted to a linearly separable 2-class problem: clean accuracy ~1."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(400, 20, generator=g)
    y = (x[:, :10].sum(1) > x[:, 10:].sum(1)).long()
    torch.manual_seed(0)
    model = MLP(in_features=20, width=16, depth=1, num_classes=2)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), x, y


def test_curves_fall_with_epsilon_and_pgd_is_at_least_as_strong():
    model, x, y = trained_tiny_model()
    eps = [0.0, 0.02, 0.05, 0.1, 0.3, 1.0]
    clean, fgsm = robust_accuracy_curve(model, FGSM(), x, y, eps, batch_size=128, seed=0)
    clean2, pgd = robust_accuracy_curve(model, LinfPGD(steps=20, rel_stepsize=0.1), x, y, eps, batch_size=128, seed=0)
    assert clean == clean2 and clean > 0.9
    assert fgsm[0] == clean and pgd[0] == clean
    assert all(a >= b for a, b in zip(fgsm, fgsm[1:]))
    assert all(a >= b for a, b in zip(pgd, pgd[1:]))
    assert fgsm[-1] < 0.05 and pgd[-1] < 0.05
    assert fgsm[2] < clean  # attacks do something at moderate eps
    assert all(p <= f for p, f in zip(pgd, fgsm))


def test_same_seed_same_curve_and_params_untouched():
    model, x, y = trained_tiny_model()
    before = [p.detach().clone() for p in model.parameters()]
    a = robust_accuracy_curve(model, LinfPGD(steps=5), x, y, [0.05, 0.1], batch_size=50, seed=3)
    b = robust_accuracy_curve(model, LinfPGD(steps=5), x, y, [0.05, 0.1], batch_size=50, seed=3)
    assert a == b
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters()))
    assert all(p.requires_grad for p in model.parameters())
