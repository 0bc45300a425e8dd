"""The original protocol's attack follows the gradient of its whole loss with respect to the inputs.

x enters CE + β·isometric twice: through Φ(x) (the representations) and through the input
distances ‖x_i − x_j‖. The attack's step must be the sign of that full gradient, computed here
independently, through the literal formula in float64 and autograd; dropping either path (e.g.
detaching x before the isometric term) gives a measurably different sign pattern.
"""
import pytest
import torch
import torch.nn.functional as F

from isorobust.attacks.base import frozen
from isorobust.attacks.paper import PaperFGSM
from isorobust.models import MLP
from tests.conftest import brightest_row_data


def literal_isometric(x, z, y, scale):
    """mean_{i,j} (scale·M_ij·‖z_i − z_j‖ − M_ij·‖x_i − x_j‖)², distances from B×B×D differences."""
    b = x.shape[0]
    eye = torch.eye(b, dtype=x.dtype)

    def dist(a):
        a = a.reshape(b, -1)
        sq = ((a[:, None, :] - a[None, :, :]) ** 2).sum(-1)
        return torch.sqrt(sq + eye) - eye  # 0 on the diagonal, with a finite gradient there

    m = (y[:, None] == y[None, :]).to(x.dtype)
    return ((scale * m * dist(z) - m * dist(x)) ** 2).mean()


def input_gradient(model, x, y, weight, scale, layer, through_distances=True, through_features=True):
    x = x.detach().clone().requires_grad_(True)
    logits, features = model.forward_features(x)
    z = features[layer] if through_features else features[layer].detach()
    loss = F.cross_entropy(logits, y) + weight * literal_isometric(x if through_distances else x.detach(), z, y, scale)
    return torch.autograd.grad(loss, x)[0]


@pytest.fixture(scope="module")
def tiny64():
    x, y = brightest_row_data(32)
    x = (0.1 + 0.8 * x).double()  # away from 0 and 1: a step of ε is never clipped
    torch.manual_seed(0)
    model = MLP(in_features=20, width=8, depth=1, num_classes=4).double().eval()
    return model, x, y


@pytest.mark.parametrize("weight,scale,layer", [(1.0, 3.0, -1), (10.0, 10.0, 0)])
def test_paper_fgsm_steps_along_the_full_input_gradient(tiny64, weight, scale, layer):
    model, x, y = tiny64
    eps = 0.05
    full = input_gradient(model, x, y, weight, scale, layer).sign()
    # The test can tell: dropping either path changes a few percent of the signs or more.
    for kwargs in (dict(through_distances=False), dict(through_features=False)):
        other = input_gradient(model, x, y, weight, scale, layer, **kwargs).sign()
        assert (other != full).double().mean() > 0.02, kwargs
    attack = PaperFGSM(weight=weight, scale=scale, layer=layer)
    with frozen(model):
        adv = attack.perturb(model, x, y, eps)
    step = adv - x
    assert torch.allclose(step.abs(), torch.full_like(step, eps))
    mismatch = (step.sign() != full).double().mean().item()
    assert mismatch == 0.0, f"{100 * mismatch:.1f}% of the step's signs differ from the full input gradient's"

    # As run in practice (float32): the same signs up to rounding of near-zero components.
    model32 = MLP(in_features=20, width=8, depth=1, num_classes=4)
    model32.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    model32.eval()
    with frozen(model32):
        adv32 = attack.perturb(model32, x.float(), y, eps)
    assert (torch.sign(adv32 - x.float()) != full.float()).float().mean().item() <= 0.005
