import pytest
from omegaconf import OmegaConf

from isorobust.config import validate
from isorobust.errors import ConfigError


def cfg(**overrides):
    base = {
        "seed": 0, "device": "auto",
        "trainer": {"epochs": 5, "batch_size": 100, "lr": 0.001},
        "reg": {"weight": 0.1, "scale": 10.0, "layer": -1},
        "eval": {"epsilons": [0.1, 0.3], "n_samples": None, "batch_size": 1000},
        "attack": {"pgd": {"steps": 40}},
    }
    c = OmegaConf.create(base)
    for key, value in overrides.items():
        OmegaConf.update(c, key, value)
    return c


def test_defaults_are_valid():
    validate(cfg())


@pytest.mark.parametrize("key,value,needle", [
    ("trainer.epochs", 0, "trainer.epochs"),
    ("trainer.batch_size", 0, "trainer.batch_size"),
    ("reg.weight", -1.0, "reg.weight"),
    ("reg.scale", 0.0, "reg.scale"),
    ("eval.epsilons", [-0.1], "eval.epsilons"),
    ("eval.epsilons", [0.1, 1.5], "eval.epsilons"),
    ("attack.pgd.steps", 0, "attack.pgd.steps"),
    ("device", "tpu9", "device"),
])
def test_bad_values_are_named(key, value, needle):
    with pytest.raises(ConfigError, match=needle):
        validate(cfg(**{key: value}))


def test_all_problems_in_one_message():
    with pytest.raises(ConfigError) as err:
        validate(cfg(**{"trainer.epochs": 0, "reg.weight": -2.0, "eval.epsilons": [2.0]}))
    message = str(err.value)
    assert "trainer.epochs" in message and "reg.weight" in message and "eval.epsilons" in message
    assert "\n" not in message


def test_an_attack_set_to_null_is_dropped_and_a_bare_attack_node_is_refused():
    from isorobust.jobs.build import build_attacks

    fgsm = {"_target_": "isorobust.attacks.base.FGSM"}
    assert list(build_attacks(OmegaConf.create({"fgsm": fgsm, "autoattack": None}))) == ["fgsm"]
    with pytest.raises(ConfigError, match=r"attack.autoattack has settings but no attack"):
        build_attacks(OmegaConf.create({"fgsm": fgsm, "autoattack": {"n_samples": 500}}))
    with pytest.raises(ConfigError, match="no attack selected"):
        build_attacks(OmegaConf.create({"autoattack": None}))
