"""trainer=adversarial: PGD examples stay in the ball, and training on them raises PGD accuracy."""
import os
from pathlib import Path

import pytest
import torch

from isorobust.data import load_mnist
from isorobust.attacks.base import LinfPGD, robust_accuracy_curve
from isorobust.models import MLP
from isorobust.training import AdversarialTrainer, StandardTrainer
from isorobust.training.adversarial import linf_pgd
from tests.conftest import brightest_row_data, fit_tiny_mlp, requires_mnist


def test_pgd_examples_stay_in_the_ball_and_raise_the_loss():
    x, y = brightest_row_data(200)
    model = fit_tiny_mlp(0, x, y)
    adv = linf_pgd(model, x, y, eps=0.1, steps=7, step_size=0.1 * 2.5 / 7)
    assert (adv - x).abs().max() <= 0.1 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    loss = torch.nn.functional.cross_entropy
    assert loss(model(adv), y) > loss(model(x), y)


def test_defaults_and_zero_epsilon():
    trainer = AdversarialTrainer(adv={"eps": 0.0})
    assert trainer.adv["steps"] == 7 and trainer.adv["random_start"] is True
    x = torch.rand(4, 1, 4, 5)
    assert torch.equal(trainer.training_inputs(MLP(in_features=20, width=8, depth=1), x, torch.zeros(4).long()), x)


@requires_mnist
def test_adversarial_training_raises_pgd_accuracy(tmp_path):
    data = load_mnist(os.environ["ISOROBUST_DATA"], download=False, train_size=3000, test_size=300)
    results = {}
    for name, trainer in (("standard", StandardTrainer(epochs=3, progress=False)),
                          ("adversarial", AdversarialTrainer(epochs=3, progress=False, adv={"eps": 0.1, "warmup_epochs": 0}))):
        torch.manual_seed(0)
        model = MLP()
        run_dir = Path(tmp_path / name)
        run_dir.mkdir()
        trainer.fit(model, data, None, seed=0, run_dir=run_dir)
        results[name] = robust_accuracy_curve(model, LinfPGD(), data.test.x, data.test.y, [0.1], 300, seed=0)
    (clean_std, [pgd_std]), (clean_adv, [pgd_adv]) = results["standard"], results["adversarial"]
    assert clean_adv > 0.5  # still a classifier
    assert pgd_adv > pgd_std + 0.1, results


def test_warmup_ramps_epsilon_linearly():
    trainer = AdversarialTrainer(adv={"eps": 0.3, "warmup_epochs": 2})
    for position, eps in ((0.0, 0.0), (0.5, 0.075), (1.0, 0.15), (2.0, 0.3), (4.5, 0.3)):
        trainer.position = position
        assert trainer.current_eps() == pytest.approx(eps)
    x, y = brightest_row_data(50)
    model = fit_tiny_mlp(0, x, y)
    trainer.position = 0.0
    assert torch.equal(trainer.training_inputs(model, x, y), x)  # ε=0 at the very start: the clean batch
    trainer.position = 1.0
    assert (trainer.training_inputs(model, x, y) - x).abs().max() <= 0.15 + 1e-6
    default = AdversarialTrainer(adv={"eps": 0.3})
    assert default.adv["warmup_epochs"] == 2 and default.current_eps() == 0.0  # ramps by default
    assert AdversarialTrainer(adv={"eps": 0.3, "warmup_epochs": 0}).current_eps() == 0.3
