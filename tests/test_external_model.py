"""A model trained elsewhere: `isorobust attack|check|certify checkpoint=FILE model._target_=... dataset=...`
puts the full-strength evaluation and the certified bracket on a researcher's own network, without a run
directory. The network is defined here, in a test module, as a user's would be in theirs."""
from __future__ import annotations

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.conftest import requires_mnist, run_cli
from tests.test_cli import assert_one_line_error

TARGET = "tests.test_external_model.SmallNet"


class SmallNet(nn.Sequential):
    """A tanh MLP as an nn.Sequential: a class from outside the tool, without input_shape/num_classes."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__(nn.Flatten(), nn.Linear(784, hidden), nn.Tanh(), nn.Linear(hidden, 10))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """SmallNet fitted for a few steps on MNIST's first 2000 training images, saved as a plain state_dict."""
    from isorobust.data import load_mnist

    from tests.conftest import DATA_ROOT

    data = load_mnist(root=DATA_ROOT, download=False, train_size=2000, test_size=10)
    torch.manual_seed(0)
    model = SmallNet()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(100):
        opt.zero_grad()
        F.cross_entropy(model(data.train.x), data.train.y).backward()
        opt.step()
    path = tmp_path_factory.mktemp("external") / "small.pt"
    torch.save(model.state_dict(), path)
    return path


def external(checkpoint, *extra):
    return [f"checkpoint={checkpoint}", f"model._target_={TARGET}", "dataset=mnist", "dataset.test_size=100", *extra]


@requires_mnist
def test_attack_and_certify_a_model_trained_elsewhere(checkpoint, tmp_path):
    out = tmp_path / "attack"
    proc = run_cli("attack", *external(checkpoint, "attack=[fgsm,pgd]", "eval.epsilons=[0.01,0.1]", "certify=crown",
                                       "certify.epsilons=[0.01]", f"hydra.run.dir={out}"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == f"isorobust: results in {out}"
    table = pd.read_csv(out / "robustness.csv")
    assert set(table["model"]) == {"SmallNet"} and set(table["attack"]) >= {"fgsm", "pgd", "worst_case"}
    clean = table["clean_accuracy"].iloc[0]
    assert clean > 0.5  # the weights were loaded (random ones give ~10 %)
    certified = pd.read_csv(out / "certified.csv")
    worst = table[(table["attack"] == "worst_case") & (table["epsilon"] == 0.01)]["robust_accuracy"].iloc[0]
    assert certified["certified_accuracy"].iloc[0] <= worst  # the bracket: a lower bound below the attacks
    assert (out / "robustness.png").read_bytes()[:4] == b"\x89PNG"

    cert_out = tmp_path / "certify"
    proc = run_cli("certify", *external(checkpoint, "certify.epsilons=[0.01]", f"hydra.run.dir={cert_out}"),
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert pd.read_csv(cert_out / "certified.csv")["certified_accuracy"].iloc[0] == \
        certified["certified_accuracy"].iloc[0]


@requires_mnist
def test_check_a_model_trained_elsewhere(checkpoint, tmp_path):
    out = tmp_path / "check"
    proc = run_cli("check", *external(checkpoint, "check.enabled=false", f"hydra.run.dir={out}"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "robustness.csv").is_file()  # the table the checks read, made first
    assert set(pd.read_csv(out / "checks.csv")["check"]) >= {"accuracy_non_increasing_in_epsilon"}


class Payload:
    """Pickled into a 'checkpoint': unpickling it would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@requires_mnist
@pytest.mark.parametrize("kind,needle", [
    ("other_keys", "do not fit SmallNet"),
    ("other_shapes", "do not fit SmallNet"),
    ("pickle", "refusing checkpoint"),
    ("not_a_state_dict", "not a state_dict"),
    ("absent", "not found"),
])
def test_bad_checkpoints_get_one_line(kind, needle, tmp_path):
    path = tmp_path / "bad.pt"
    marker = tmp_path / "payload-ran"
    if kind == "other_keys":
        torch.save(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).state_dict(), path)
    elif kind == "other_shapes":
        torch.save(SmallNet(hidden=8).state_dict(), path)
    elif kind == "pickle":
        torch.save({"weight": Payload(marker)}, path)
    elif kind == "not_a_state_dict":
        torch.save([torch.zeros(2)], path)
    out = tmp_path / "out"
    proc = run_cli("attack", *external(path, "attack=fgsm", "eval.epsilons=[0.1]", f"hydra.run.dir={out}"),
                   cwd=tmp_path)
    assert_one_line_error(proc, needle)
    assert not marker.exists()  # nothing in the file ran
    assert not (out / "robustness.csv").exists()


@requires_mnist
def test_an_external_model_needs_its_data_set_and_not_a_run_too(checkpoint, tmp_path):
    proc = run_cli("attack", f"checkpoint={checkpoint}", f"model._target_={TARGET}", cwd=tmp_path)
    assert_one_line_error(proc, "needs dataset=")
    proc = run_cli("attack", f"checkpoint={checkpoint}", cwd=tmp_path)
    assert_one_line_error(proc, "model._target_")
    proc = run_cli("certify", cwd=tmp_path)
    assert_one_line_error(proc, "needs run=<run dir>")
