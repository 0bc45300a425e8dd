"""Each sanity check fires on a deliberately masked model and passes on a normal one."""
import pandas as pd
import pytest
import torch
from torch import nn

from isorobust.attacks.base import FGSM, LinfPGD
from isorobust.attacks.autoattack import Square
from isorobust.checks import attack_checks, noise, table_checks
from tests.conftest import brightest_row_data, fit_tiny_mlp


class Rounded(nn.Module):
    """Quantises its input first: the gradient is zero almost everywhere (masking, not robustness)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(torch.round(x * 4) / 4)


@pytest.fixture(scope="module")
def setup():
    x, y = brightest_row_data()
    model, surrogate = fit_tiny_mlp(0, x, y), fit_tiny_mlp(1, x, y)
    return model, surrogate, x[:200], y[:200]


def run_checks(model, surrogate, x, y):
    # a full-strength PGD (40 steps): with 10 it finds 28 % at ε=0.1 where APGD finds 10.5 % and Square 12 %,
    # and the gradient-free check rightly says the gradient attacks are weak
    results = attack_checks(model, x, y, [0.1, 0.2], LinfPGD(steps=40, rel_stepsize=0.1), FGSM(), Square(n_queries=300),
                            surrogate,
                            batch_size=100, seed=0)
    return {r.check: r for r in results}


def test_checks_pass_on_a_normal_model(setup):
    model, surrogate, x, y = setup
    results = run_checks(model, surrogate, x, y)
    for name in ("more_steps_and_restarts_never_raise_accuracy", "pgd_at_epsilon_1_gives_zero",
                 "transfer_never_beats_white_box", "gradient_free_never_beats_gradient_attacks"):
        assert results[name].passed, results[name].line()


def test_checks_fire_on_a_masked_model(setup):
    model, surrogate, x, y = setup
    masked = Rounded(model).eval()
    assert (masked(x).argmax(1) == y).float().mean() > 0.7  # still a decent classifier
    results = run_checks(masked, surrogate, x, y)
    for name in ("pgd_at_epsilon_1_gives_zero", "transfer_never_beats_white_box",
                 "gradient_free_never_beats_gradient_attacks"):
        assert not results[name].passed, results[name].line()


def table(attack_acc: dict, eps=(0.1, 0.3, 1.0), n=1000):
    rows = [{"attack": a, "norm": "linf", "epsilon": e, "n_samples": n, "clean_accuracy": 0.98,
             "robust_accuracy": acc} for a, accs in attack_acc.items() for e, acc in zip(eps, accs)]
    return pd.DataFrame(rows)


def test_table_checks_on_known_numbers():
    good = {c.check: c.passed for c in table_checks(table({"fgsm": [0.5, 0.2, 0.0], "pgd": [0.4, 0.1, 0.0]}))}
    assert good == {"pgd_not_above_fgsm": True, "accuracy_non_increasing_in_epsilon": True,
                    "epsilon_1_gives_zero": True}
    bad = {c.check: c.passed for c in table_checks(table({"fgsm": [0.5, 0.2, 0.2], "pgd": [0.6, 0.7, 0.3]}))}
    assert bad == {"pgd_not_above_fgsm": False, "accuracy_non_increasing_in_epsilon": False,
                   "epsilon_1_gives_zero": False}
    # within sampling noise is not a failure
    close = table({"fgsm": [0.5, 0.2, 0.0], "pgd": [0.5 + noise(0.5, 1000) / 2, 0.2, 0.0]})
    assert all(c.passed for c in table_checks(close))


def test_monotonicity_is_judged_per_sample_count():
    def rows(attack, n, points):
        return [{"attack": attack, "norm": "linf", "epsilon": e, "n_samples": n, "robust_accuracy": a}
                for e, a in points]

    # the worst case at ε=0.2 covers the first 150 samples only (a trimmed attack ran there): it may be
    # lower than the whole-set worst case at ε=0.215 without any curve rising
    table = pd.DataFrame(rows("pgd", 10000, [(0.1, 0.86), (0.215, 0.33)])
                         + rows("worst_case", 10000, [(0.1, 0.86), (0.215, 0.32)])
                         + rows("worst_case", 150, [(0.2, 0.19), (0.3, 0.0)]))
    check = {c.check: c for c in table_checks(table)}["accuracy_non_increasing_in_epsilon"]
    assert check.passed, check.detail
    rising = pd.concat([table, pd.DataFrame(rows("worst_case", 150, [(0.4, 0.5)]))])
    check = {c.check: c for c in table_checks(rising)}["accuracy_non_increasing_in_epsilon"]
    assert not check.passed and "worst_case (150 samples)" in check.detail


@pytest.mark.requires_mnist
def test_pgd_close_to_apgd_fails_on_the_old_pgd_default_and_passes_on_the_new():
    """On the reference MLP (one epoch of Adam on MNIST), foolbox's old default (40 constant steps of
    0.01/0.3·ε) is measurably weaker than APGD-CE + APGD-T at ε ≈ 0.05–0.08; the new default is not."""
    import os

    from omegaconf import OmegaConf

    from isorobust.data import load_mnist
    from isorobust.attacks.apgd import APGD
    from isorobust.checks import check_pgd_matches_reference
    from isorobust.models import mlp
    from tests.conftest import REPO

    data = load_mnist(root=os.environ["ISOROBUST_DATA"], download=False)
    torch.manual_seed(0)
    model = mlp(data.input_shape, 10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for i in range(0, len(data.train), 100):
        opt.zero_grad()
        nn.functional.cross_entropy(model(data.train.x[i : i + 100]), data.train.y[i : i + 100]).backward()
        opt.step()
    model.eval()
    x, y = data.test.x[:1000], data.test.y[:1000]
    eps = [0.05, 0.08]
    old = LinfPGD(steps=40, rel_stepsize=0.01 / 0.3, schedule="constant", keep_fooled=False)
    settings = OmegaConf.load(REPO / "configs" / "attack" / "pgd.yaml")
    new = LinfPGD(**{k: v for k, v in settings.items() if not k.startswith("_") and k not in ("epsilons", "n_samples")})
    reference = APGD()
    weak = check_pgd_matches_reference(model, old, FGSM(), reference, x, y, eps, 1000, 0)
    strong = check_pgd_matches_reference(model, new, FGSM(), reference, x, y, eps, 1000, 0)
    print(weak.line(), strong.line(), sep="\n")
    assert not weak.passed, weak.line()
    assert strong.passed, strong.line()
