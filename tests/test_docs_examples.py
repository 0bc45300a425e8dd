"""The examples of docs/extending.md: each file in docs/examples/ is shown verbatim on the page, and each
runs through the path the CLI uses. Its YAML is composed into the `train` config as if it were in
configs/<group>/, and its `_target_` is built with hydra.utils.instantiate with the arguments the
pipeline passes; then a forward pass, a loss, a one-epoch fit on 64 points, an attack sweep on 16 points.
No MNIST, no real training.
"""
from __future__ import annotations

import math
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "docs" / "examples"
PAGE = REPO / "docs" / "extending.md"
GROUPS = {"my_dataset": "dataset", "my_model": "model", "my_reg": "reg", "my_attack": "attack"}

if str(REPO) not in sys.path:  # the examples' targets are docs.examples.<file>.<name>
    sys.path.insert(0, str(REPO))

FENCE = re.compile(r"^```[\w-]*\n(.*?)^```\s*$", re.M | re.S)


def fenced_blocks(markdown: str) -> list[str]:
    return [m.group(1) for m in FENCE.finditer(markdown)]


def test_every_example_is_there():
    assert sorted(p.name for p in EXAMPLES.iterdir() if p.suffix in (".py", ".yaml")) == sorted(
        f"{stem}{ext}" for stem in GROUPS for ext in (".py", ".yaml"))


@pytest.mark.parametrize("name", [f"{stem}{ext}" for stem in GROUPS for ext in (".py", ".yaml")])
def test_the_page_shows_the_example_file_verbatim(name):
    text = (EXAMPLES / name).read_text()
    assert text in fenced_blocks(PAGE.read_text()), (
        f"docs/extending.md has no code block equal to docs/examples/{name}: copy the file into the page")


def compose_train(tmp_path: Path, overrides: list[str]) -> DictConfig:
    """`isorobust train <overrides>` as Hydra composes it, with the example YAML files in their groups."""
    search = tmp_path / "configs"
    for stem, group in GROUPS.items():
        (search / group).mkdir(parents=True, exist_ok=True)
        shutil.copy(EXAMPLES / f"{stem}.yaml", search / group / f"{stem}.yaml")
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose("train", overrides=[f"hydra.searchpath=[file://{search}]", *overrides])


@pytest.fixture(scope="module")
def cfg(tmp_path_factory) -> DictConfig:
    return compose_train(tmp_path_factory.mktemp("docs_examples"), [
        "dataset=my_dataset", "model=my_model", "+reg=my_reg", "attack=[fgsm,my_attack]", "seed=3"])


@pytest.fixture(scope="module")
def data(cfg):
    return instantiate(cfg.dataset)


def build_model(cfg, data):
    torch.manual_seed(0)
    return instantiate(cfg.model, input_shape=data.input_shape, num_classes=data.num_classes)


def test_the_composed_config_passes_validation(cfg):
    from isorobust.config import validate

    validate(cfg)


def test_the_data_set(cfg, data):
    from isorobust.data import ImageDataset

    assert isinstance(data, ImageDataset) and data.name == cfg.dataset.name
    assert data.input_shape == (cfg.dataset.dim,) and data.num_classes == cfg.dataset.num_classes
    for split in (data.train, data.test):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert 0 <= split.x.min() and split.x.max() <= 1
        assert set(split.y.tolist()) == set(range(data.num_classes))
    again = instantiate(cfg.dataset)  # deterministic from the run's seed
    assert torch.equal(again.train.x, data.train.x)
    small = instantiate(cfg.dataset, train_size=12, test_size=6)
    assert (len(small.train), len(small.test)) == (12, 6)
    assert torch.equal(small.train.x, data.train.x[:12])
    assert data.to("cpu").train.x.shape == data.train.x.shape


def test_the_model(cfg, data, tmp_path, monkeypatch):
    model = build_model(cfg, data)
    x = data.test.x[:5]
    logits, features = model.forward_features(x)
    assert logits.shape == (5, data.num_classes)
    assert len(features) == model.num_hidden == len(cfg.model.widths)
    assert [f.shape[1] for f in features] == list(cfg.model.widths)
    assert torch.equal(model(x), logits)

    # model.pt as `isorobust train` writes it: readable weights-only, and the config rebuilds the model.
    from isorobust.errors import CheckpointError
    from isorobust.models import MODEL_CLASSES, load_model, model_checkpoint

    path = tmp_path / "model.pt"
    torch.save(model_checkpoint(model), path)
    saved = torch.load(path, weights_only=True)
    rebuilt = type(model)(**saved["model_config"])
    rebuilt.load_state_dict(saved["state_dict"])
    assert torch.equal(rebuilt(x), logits)
    # What extending.md says: `isorobust attack/check/certify` refuse it, unless the class is in the table.
    with pytest.raises(CheckpointError, match="unknown model class 'MyModel'"):
        load_model(path)
    monkeypatch.setitem(MODEL_CLASSES, "MyModel", type(model))
    assert torch.equal(load_model(path)(x), logits)


def test_the_regularizer(cfg, data, tmp_path):
    reg = instantiate(cfg.reg)
    assert (reg.name, reg.weight) == (cfg.reg.name, cfg.reg.weight)
    model = build_model(cfg, data)
    x, y = data.train.x[:8], data.train.y[:8]
    logits, features = model.forward_features(x)
    term = reg(x, logits, features, y)
    assert term.shape == () and math.isfinite(term.item()) and term.item() >= 0
    term.backward()
    assert all(p.grad is not None for p in model.readout.parameters())

    # One epoch of the project's own trainer (configs/trainer/standard.yaml) on 64 points, with the term.
    from isorobust.data import ImageDataset, Split

    small = ImageDataset(data.name, Split(data.train.x[:64], data.train.y[:64]),
                         Split(data.test.x[:32], data.test.y[:32]), data.num_classes)
    trainer = instantiate(cfg.trainer, epochs=1, batch_size=32, progress=False)
    history = trainer.fit(build_model(cfg, data), small, [reg], seed=0, run_dir=tmp_path)
    assert math.isfinite(history[-1][f"train_{reg.name}_loss"])


def test_the_regularizer_beside_the_isometric_term(tmp_path):
    cfg = compose_train(tmp_path, ["dataset=my_dataset", "model=my_model", "+reg@reg.isometric=isometric",
                                   "+reg@reg.my_reg=my_reg", "reg.my_reg.weight=0.2"])
    from isorobust.config import regularizer_terms

    terms = [instantiate(node) for node in regularizer_terms(cfg.reg).values()]
    assert sorted((t.name, t.weight) for t in terms) == [("isometric", 0.1), ("logit_squeezing", 0.2)]


def test_the_attack(cfg, data):
    from isorobust.attacks.base import Attack
    from isorobust.attacks.sweep import robustness_table

    attacks = {name: instantiate(node, name=name) for name, node in cfg.attack.items()}  # as the CLI builds them
    attack = attacks["my_attack"]
    assert isinstance(attack, Attack) and attack.name == "my_attack" and attack.tries == cfg.attack.my_attack.tries
    model = build_model(cfg, data).eval()
    x, y = data.test.x[:16], data.test.y[:16]
    torch.manual_seed(0)
    adv = attack.perturb(model, x, y, 0.1)
    assert adv.shape == x.shape
    assert (adv - x).abs().max() <= 0.1 + 1e-6 and 0 <= adv.min() and adv.max() <= 1

    from isorobust.data import Split

    meta = {"dataset": data.name, "model": cfg.model.name, "reg": "none", "reg_weight": 0.0, "reg_scale": 0.0,
            "seed": 0}
    table = robustness_table(model, Split(x, y), attacks, [0.05, 0.1, 1.0], None, 16, 0, meta)
    rows = table[table["attack"] == "my_attack"]
    assert rows["epsilon"].tolist() == [0.05, 0.1, 1.0]
    assert rows["robust_accuracy"].is_monotonic_decreasing  # the survivors-only sweep
    assert "worst_case" in set(table["attack"])
    assert "random corners" in attack.describe()
