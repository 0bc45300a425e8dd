"""The baseline regularizers (Jacobian, input gradient), several regularizers in one config, and
that training with each changes what it should."""
import json
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from isorobust.config import validate
from isorobust.errors import ConfigError
from isorobust.losses import (
    InputGradientRegularizer, IsometricRegularizer, JacobianRegularizer, input_gradient_norm_squared,
    jacobian_norm_squared,
)
from isorobust.models import MLP
from isorobust.jobs.build import build_regularizers, run_meta
from isorobust.sweeps.resolvers import isometric_setting
from isorobust.training import StandardTrainer
from tests.conftest import brightest_row_data, requires_mnist


def exact_jacobian_sq(model, x):
    """½·mean_i ‖∂f(x_i)/∂x_i‖²_F, one full Jacobian per sample."""
    total = 0.0
    for xi in x:
        jac = torch.autograd.functional.jacobian(lambda v: model(v[None])[0], xi)
        total += jac.pow(2).sum().item()
    return 0.5 * total / x.shape[0]


def test_jacobian_estimate_is_unbiased():
    torch.manual_seed(0)
    model = MLP(in_features=6, width=8, depth=1, num_classes=5).double()
    x = torch.rand(4, 6, dtype=torch.float64, requires_grad=True)
    exact = exact_jacobian_sq(model, x.detach())
    estimates = [jacobian_norm_squared(x, model(x), n_projections=50).item() for _ in range(20)]
    mean = sum(estimates) / len(estimates)
    assert mean == pytest.approx(exact, rel=0.05)
    # one projection is noisy but still an estimate of the same quantity
    assert 0 < jacobian_norm_squared(x, model(x)).item() < 20 * exact


def test_jacobian_of_linear_map_is_its_frobenius_norm():
    w = torch.randn(3, 4, dtype=torch.float64)
    x = torch.rand(2, 4, dtype=torch.float64, requires_grad=True)
    # with C projections that are the standard basis the estimate would be exact; random ones average to it
    torch.manual_seed(1)
    est = jacobian_norm_squared(x, x @ w.T, n_projections=4000).item()
    assert est == pytest.approx(0.5 * w.pow(2).sum().item(), rel=0.05)


def test_input_gradient_matches_per_sample_gradients():
    torch.manual_seed(0)
    model = MLP(in_features=6, width=8, depth=1, num_classes=3).double()
    x = torch.rand(5, 6, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0, 1])
    value = input_gradient_norm_squared(x, model(x), y).item()
    expected = 0.0
    for xi, yi in zip(x.detach(), y):
        xi = xi.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(xi[None]), yi[None]), xi)
        expected += g.pow(2).sum().item()
    assert value == pytest.approx(expected / 5, rel=1e-9)


def test_baseline_terms_are_differentiable_in_the_weights():
    torch.manual_seed(0)
    model = MLP(in_features=6, width=8, depth=1, num_classes=3)
    x = torch.rand(5, 6, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0, 1])
    for reg in (JacobianRegularizer(), InputGradientRegularizer()):
        model.zero_grad()
        logits, feats = model.forward_features(x)
        reg(x, logits, feats, y).backward()
        # every weight matrix gets a gradient (the read-out bias cannot: J does not depend on it)
        grads = [p.grad for p in model.parameters() if p.dim() == 2]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert sum(g.abs().sum().item() for g in grads) > 0


class _Toy:
    """A 4-class image dataset in the shape the trainers expect (ImageDataset-like)."""

    def __init__(self, n=400):
        from isorobust.data.dataset import ImageDataset, Split

        x, y = brightest_row_data(n)
        self.data = ImageDataset(name="toy", train=Split(x[:300], y[:300]), test=Split(x[300:], y[300:]),
                                 num_classes=4)


def _fit(regularizers, tmp_path, seed=0):
    data = _Toy().data
    torch.manual_seed(seed)
    model = MLP(in_features=20, width=32, depth=2, num_classes=4)
    trainer = StandardTrainer(epochs=15, batch_size=50, lr=3e-3, progress=False)
    history = trainer.fit(model, data, regularizers, seed=seed, run_dir=tmp_path)
    return model.eval(), history, data


def _mean_input_gradient_sq(model, data):
    x = data.test.x.clone().requires_grad_(True)
    return input_gradient_norm_squared(x, model(x), data.test.y).item()


def _mean_jacobian_sq(model, data):
    return exact_jacobian_sq(model, data.test.x[:40])


@pytest.mark.parametrize("regularizer,measure", [
    (JacobianRegularizer(weight=1.0, n_projections=1), _mean_jacobian_sq),
    (InputGradientRegularizer(weight=10.0), _mean_input_gradient_sq),
])
def test_baseline_training_lowers_what_it_penalises(tmp_path, regularizer, measure):
    plain, _, data = _fit([], tmp_path / "plain")
    regular, history, _ = _fit([regularizer], tmp_path / "reg")
    assert measure(regular, data) < 0.5 * measure(plain, data)
    key = f"train_{regularizer.name}_loss"
    assert history[-1][key] is not None and math.isfinite(history[-1][key])
    assert history[-1]["train_isometric_loss"] is None


def test_two_regularizers_both_act(tmp_path):
    iso = IsometricRegularizer(weight=1.0, scale=1.0, layer=-1)
    jac = JacobianRegularizer(weight=1.0)
    _, history, _ = _fit([iso, jac], tmp_path)
    assert history[-1]["train_isometric_loss"] > 0 and history[-1]["train_jacobian_loss"] > 0
    _, iso_only, _ = _fit([iso], tmp_path / "iso")
    # the Jacobian term changed the trajectory (same seed, same data order)
    assert history[-1]["train_isometric_loss"] != pytest.approx(iso_only[-1]["train_isometric_loss"], rel=1e-6)


def _reg_cfg(reg):
    return OmegaConf.create({"seed": 0, "dataset": {"name": "mnist"}, "model": {"name": "mlp"}, "reg": reg})


ISO = {"_target_": "isorobust.losses.IsometricRegularizer", "name": "isometric", "weight": 0.5, "scale": 4.0, "layer": -1}
JAC = {"_target_": "isorobust.losses.JacobianRegularizer", "name": "jacobian", "weight": 0.01, "n_projections": 1}


def test_one_or_several_regularizers_from_config():
    assert [r.name for r in build_regularizers(_reg_cfg(ISO).reg)] == ["isometric"]
    both = build_regularizers(_reg_cfg({"isometric": ISO, "jacobian": JAC}).reg)
    assert [(r.name, r.weight) for r in both] == [("isometric", 0.5), ("jacobian", 0.01)]
    assert build_regularizers(None) == []
    meta = run_meta(_reg_cfg({"isometric": ISO, "jacobian": JAC}))
    assert (meta["reg"], meta["reg_weight"], meta["reg_scale"]) == ("isometric+jacobian", 0.5, 4.0)
    meta = run_meta(_reg_cfg(JAC))
    assert (meta["reg"], meta["reg_weight"], meta["reg_scale"]) == ("jacobian", 0.01, 0.0)


def test_validation_reaches_each_regularizer():
    bad = _reg_cfg({"isometric": {**ISO, "weight": -1}, "jacobian": {**JAC, "n_projections": 0}})
    with pytest.raises(ConfigError) as err:
        validate(bad)
    assert "reg.isometric.weight" in str(err.value) and "reg.jacobian.n_projections" in str(err.value)


def test_paper_protocol_takes_only_the_isometric_term():
    root = _reg_cfg({"isometric": ISO, "jacobian": JAC})
    assert isometric_setting("weight", 0.0, _root_=root) == 0.5
    assert isometric_setting("weight", 0.0, _root_=_reg_cfg(JAC)) == 0.0
    assert isometric_setting("scale", 10.0, _root_=_reg_cfg(ISO)) == 4.0


@pytest.mark.parametrize("args,names", [
    (["+reg=jacobian"], ["jacobian"]),
    (["+reg=input_gradient", "reg.weight=0.5"], ["input_gradient"]),
    (["+reg=isometric_jacobian", "reg.jacobian.weight=0.2"], ["isometric", "jacobian"]),
    (["+reg@reg.isometric=isometric", "+reg@reg.input_gradient=input_gradient"], ["isometric", "input_gradient"]),
    (["baseline=isometric_adversarial"], ["isometric"]),
])
def test_regularizer_configs_compose(tmp_path, args, names):
    from tests.conftest import run_cli

    proc = run_cli("train", *args, "--cfg", "job", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    cfg = OmegaConf.create(proc.stdout)
    assert [r.name for r in build_regularizers(cfg.reg)] == names


@pytest.mark.parametrize("experiment", ["paper_mnist", "baselines_mnist"])
def test_study_experiments_compose_into_sweeps(tmp_path, experiment):
    from tests.conftest import run_cli

    proc = run_cli("train", f"experiment={experiment}", "--cfg", "hydra", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    hydra = OmegaConf.create(proc.stdout).hydra
    params = hydra.sweeper.params
    assert str(params.seed) == "0,1,2" and experiment in OmegaConf.to_container(hydra.sweep)["dir"]
    proc = run_cli("train", f"experiment={experiment}", "--cfg", "job", cwd=tmp_path)
    cfg = OmegaConf.create(proc.stdout)
    assert set(cfg.attack) == {"fgsm", "pgd", "paper_fgsm", "apgd", "autoattack"}
    # no cuts: every attack on the whole test set, the APGD pair over the whole grid
    assert list(cfg.attack.autoattack.epsilons) == [0.05, 0.1, 0.2, 0.3] and cfg.attack.autoattack.n_samples is None
    assert cfg.attack.apgd.n_samples is None and cfg.eval.n_samples is None and cfg.attack.apgd.epsilons is None
    assert {0.05, 0.1, 0.2, 0.3} <= set(cfg.eval.epsilons)
    if experiment == "paper_mnist":
        assert str(params["reg.weight"]) == "0,0.01,0.1,1,10" and cfg.reg.name == "isometric"
    else:
        for baseline in str(params.baseline).split(","):
            proc = run_cli("train", f"experiment={experiment}", f"baseline={baseline}", "--cfg", "job", cwd=tmp_path)
            assert proc.returncode == 0, proc.stderr


@requires_mnist
def test_train_with_two_regularizers_end_to_end(tmp_path):
    from tests.conftest import run_cli

    run = tmp_path / "run"
    proc = run_cli("train", "+reg=isometric_jacobian", "reg.jacobian.weight=0.5", "attack=fgsm",
                   "dataset.train_size=500", "dataset.test_size=200", "trainer.epochs=1", "check.enabled=false",
                   "eval.epsilons=[0.1]", f"hydra.run.dir={run}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["reg"] == "isometric+jacobian" and metrics["reg_weight"] == 0.1
    assert metrics["regularizers"] == [{"name": "isometric", "weight": 0.1}, {"name": "jacobian", "weight": 0.5}]
    assert metrics["train_isometric_loss"] > 0 and metrics["train_jacobian_loss"] > 0
    assert pd.read_csv(run / "robustness.csv")["reg"].eq("isometric+jacobian").all()


def test_isometric_term_on_several_layers_is_the_sum_of_its_layers():
    torch.manual_seed(0)
    model = MLP(in_features=6, width=8, depth=3, num_classes=3).double()
    x, y = torch.rand(12, 6, dtype=torch.float64), torch.arange(12) % 3
    logits, features = model.forward_features(x)
    one = [IsometricRegularizer(scale=2.0, layer=l)(x, logits, features, y) for l in range(4)]
    assert torch.allclose(IsometricRegularizer(scale=2.0, layer="all")(x, logits, features, y), sum(one))
    assert torch.allclose(IsometricRegularizer(scale=2.0, layer=[0, -1])(x, logits, features, y), one[0] + one[3])
    assert IsometricRegularizer(layer=-1).layers(4) == [3]


@pytest.mark.parametrize("layer", [4, -5, [], [0, 0], [0, "1"], "first", True])
def test_bad_isometric_layers_are_refused(layer):
    with pytest.raises(ValueError, match="hidden-layer index|twice"):
        IsometricRegularizer(layer=layer).layers(4)


@pytest.mark.parametrize("layer, ok", [("all", True), ([0, 2], True), (-1, True), ("last", False), (1.5, False)])
def test_config_accepts_the_layer_forms(layer, ok):
    cfg = OmegaConf.create({"reg": {"_target_": "isorobust.losses.IsometricRegularizer", "weight": 0.1, "layer": layer}})
    if ok:
        validate(cfg)
    else:
        with pytest.raises(ConfigError, match="reg.layer must be an integer, a list of integers or 'all'"):
            validate(cfg)
