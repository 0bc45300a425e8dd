"""model=cnn: shapes, hidden tanh features, orthogonal init, the isometric term on its layers, checkpoints."""
import json

import pytest
import torch
from omegaconf import OmegaConf

from isorobust.models.checkpoint import load_model, model_checkpoint
from isorobust import io
from isorobust.config import validate
from isorobust.errors import ConfigError
from isorobust.losses import IsometricRegularizer, isometric_loss
from isorobust.models import CNN, MODEL_CLASSES, cnn
from tests.conftest import requires_mnist, run_cli


@pytest.mark.parametrize("shape, channels, width, depth, flat", [
    ((1, 28, 28), [32, 64], 100, 3, 64 * 7 * 7),     # the MNIST preset (configs/model/cnn.yaml)
    ((3, 32, 32), [4, 8], 16, 2, 8 * 8 * 8),         # CIFAR-shaped, small
])
def test_output_and_feature_shapes(shape, channels, width, depth, flat):
    torch.manual_seed(0)
    model = cnn(input_shape=shape, num_classes=10, channels=channels, width=width, depth=depth)
    assert model.flat_features == flat and model.input_layer.in_features == flat
    assert model.num_hidden == depth
    x = torch.rand(5, *shape)
    logits, feats = model.forward_features(x)
    assert logits.shape == (5, 10)
    assert len(feats) == depth and all(f.shape == (5, width) for f in feats)
    assert all(f.abs().max() <= 1 for f in feats)  # tanh
    assert torch.equal(model(x), logits)


def test_authors_cifar_sizes():
    model = CNN(input_shape=(3, 32, 32), channels=(128, 256), width=1000, depth=3)
    assert model.input_layer.in_features == 16384  # 256 channels × 8 × 8
    assert [tuple(layer.weight.shape) for layer in model.hidden] == [(1000, 1000), (1000, 1000)]
    assert [m.out_channels for m in model.conv if isinstance(m, torch.nn.Conv2d)] == [128, 256]


def test_width_by_width_layers_are_orthogonal():
    model = CNN(input_shape=(3, 32, 32), channels=(4, 8), width=30, depth=4)
    assert len(model.hidden) == 3
    for layer in model.hidden:
        w = layer.weight
        assert torch.allclose(w @ w.T, torch.eye(30), atol=1e-5)
        assert torch.equal(layer.bias, torch.zeros(30))


@pytest.mark.parametrize("layer", [0, 1, -1])
def test_isometric_term_on_a_hidden_layer_reaches_the_conv_weights(layer):
    torch.manual_seed(0)
    model = CNN(input_shape=(3, 32, 32), channels=(4, 8), width=16, depth=3)
    x, y = torch.rand(12, 3, 32, 32), torch.arange(12) % 3
    logits, feats = model.forward_features(x)
    term = IsometricRegularizer(weight=0.1, scale=1.0, layer=layer)(x, logits, feats, y)
    assert torch.equal(term, isometric_loss(x, feats[layer], y, scale=1.0))
    term.backward()
    conv_grads = [m.weight.grad for m in model.conv if isinstance(m, torch.nn.Conv2d)]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in conv_grads)
    # layers after the chosen one get no gradient from the term
    later = model.hidden[layer:] if layer >= 0 else []
    assert all(l.weight.grad is None for l in later)


def test_checkpoint_loads_through_the_fixed_table(tmp_path):
    assert MODEL_CLASSES["CNN"] is CNN
    model = CNN(input_shape=(1, 28, 28), channels=(3, 5), width=8, depth=2, num_classes=4)
    io.save_torch(tmp_path / "model.pt", model_checkpoint(model))
    loaded = load_model(tmp_path / "model.pt")
    assert isinstance(loaded, CNN) and loaded.config == model.config
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(loaded(x), model(x))


def test_non_image_inputs_and_bad_sizes_are_one_line_errors():
    with pytest.raises(ConfigError, match="image inputs"):
        cnn(input_shape=(3,), num_classes=4)  # the torus
    with pytest.raises(ConfigError, match="depth"):
        cnn(input_shape=(1, 28, 28), num_classes=10, depth=0)
    cfg = OmegaConf.create({"model": {"channels": [0, 8]}})
    with pytest.raises(ConfigError, match=r"model\.channels must be two integers >= 1"):
        validate(cfg)
    validate(OmegaConf.create({"model": {"channels": [32, 64]}}))


@requires_mnist
def test_default_preset_trains_on_mnist_through_the_cli(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("train", "+reg=isometric", "model=cnn", "dataset.train_size=300", "dataset.test_size=100",
                   "trainer.epochs=1", "attack=fgsm", "eval.epsilons=[0.1]", "check.enabled=false",
                   f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["model"] == "cnn" and metrics["train_isometric_loss"] > 0
    saved = load_model(run_dir / "model.pt")
    assert isinstance(saved, CNN) and saved.config["channels"] == [32, 64] and saved.num_hidden == 3
