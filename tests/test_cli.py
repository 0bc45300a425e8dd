"""The command line as a user meets it: bad input gives one line and a non-zero exit, no results."""
from pathlib import Path

from omegaconf import OmegaConf

import pytest

from tests.conftest import run_cli

RESULTS = ("metrics.json", "robustness.csv", "robustness.md", "model.pt", "checks.csv")
QUICK = ["dataset.train_size=200", "dataset.test_size=100", "trainer.epochs=1", "eval.n_samples=20"]


def assert_one_line_error(proc, needle: str, run_dir: Path | None = None):
    assert proc.returncode != 0, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("isorobust: error:") and needle in lines[0], lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    if run_dir is not None:
        assert not any((run_dir / name).exists() for name in RESULTS)


@pytest.mark.parametrize("overrides,needle", [
    (["eval.epsilons=[-0.1,0.1]"], "eval.epsilons"),
    (["eval.epsilons=[0.1,1.5]"], "eval.epsilons"),
    (["trainer.epochs=0"], "trainer.epochs"),
    (["trainer.batch_size=0"], "trainer.batch_size"),
    (["+reg=isometric", "reg.weight=-1"], "reg.weight"),
    (["+reg=isometric", "reg.scale=0"], "reg.scale"),
    (["dataset=cifar99"], "unknown dataset 'cifar99'"),
    (["model=resnet999"], "unknown model"),
    (["attack=[fgsm,deepfool9]"], "unknown attack 'deepfool9'"),
    (["attack=null"], "no attack selected"),  # Hydra alone answers a null group with a traceback
])
def test_bad_train_input(tmp_path, overrides, needle):
    run_dir = tmp_path / "run"
    proc = run_cli("train", *QUICK, *overrides, f"hydra.run.dir={run_dir}", cwd=tmp_path,
                   env={"ISOROBUST_DATA": str(tmp_path / "nowhere")})
    assert_one_line_error(proc, needle, run_dir)


@pytest.mark.parametrize("command,group,default", [("train", "attack", "fgsm"), ("certify", "attack", "apgd"),
                                                   ("attack", "attack", None)])
def test_a_null_group_drops_the_commands_default(tmp_path, command, group, default):
    """GROUP=null removes what the command's defaults chose for it (``~GROUP``); where they chose nothing, it is
    a no-op, not a Hydra traceback."""
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("seed: 0\n")  # enough for --cfg job to accept run=
    run = [] if command == "train" else [f"run={tmp_path}"]
    plain = run_cli(command, *run, "--cfg", "job", cwd=tmp_path)
    proc = run_cli(command, *run, f"{group}=null", "--cfg", "job", cwd=tmp_path)
    assert plain.returncode == 0 and proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    if default is not None:
        assert default in OmegaConf.create(plain.stdout)[group]  # e.g. attack.apgd: the default was there
    assert not OmegaConf.create(proc.stdout).get(group)


def test_several_bad_values_in_one_message(tmp_path):
    proc = run_cli("train", "trainer.epochs=0", "+reg=isometric", "reg.weight=-1", f"hydra.run.dir={tmp_path / 'r'}",
                   cwd=tmp_path)
    assert_one_line_error(proc, "trainer.epochs")
    assert "reg.weight" in proc.stderr


def test_missing_mnist_offline_says_how_to_point_at_it(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("train", *QUICK, f"dataset.root={tmp_path / 'empty'}", "dataset.download=false",
                   f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert_one_line_error(proc, "ISOROBUST_DATA", run_dir)
    assert "dataset.root" in proc.stderr


def test_attack_on_missing_run(tmp_path):
    out = tmp_path / "out"
    proc = run_cli("attack", f"run={tmp_path / 'no-such-run'}", f"hydra.run.dir={out}", cwd=tmp_path)
    assert_one_line_error(proc, "not found", out)


def test_attack_on_unreadable_checkpoint(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (run / "model.pt").write_bytes(b"not a checkpoint")
    out = tmp_path / "out"
    proc = run_cli("attack", f"run={run}", f"hydra.run.dir={out}", cwd=tmp_path)
    assert_one_line_error(proc, "refusing checkpoint", out)


def test_top_level_usage_and_unknown_command(tmp_path):
    proc = run_cli("--help", cwd=tmp_path)
    assert proc.returncode == 0 and "train" in proc.stdout and "attack" in proc.stdout
    assert_one_line_error(run_cli("fly", cwd=tmp_path), "unknown command")


def test_hydra_features_work(tmp_path):
    proc = run_cli("train", "+reg=isometric", "reg.weight=0.5", "--cfg", "job", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "weight: 0.5" in proc.stdout and "scale: 10.0" in proc.stdout and "_target_" in proc.stdout
    help_text = run_cli("train", "--help", cwd=tmp_path)
    assert help_text.returncode == 0 and "isorobust train" in help_text.stdout
    assert not (tmp_path / "outputs").exists()  # printing the config runs nothing




@pytest.mark.parametrize("command", ["train", "attack", "check", "certify"])
def test_every_command_sweeps_below_outputs_multirun(tmp_path, command):
    """-m writes to outputs/multirun/<date>/<time> for train, outputs/multirun/<command>/<date>/<time> for the
    commands on saved runs: check as well (it used to write to ./multirun)."""
    proc = run_cli(command, "--cfg", "hydra", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    hydra = OmegaConf.to_container(OmegaConf.create(proc.stdout).hydra)  # unresolved: ${now:...} is Hydra's
    below = "outputs/multirun/${now:" if command == "train" else "outputs/multirun/${hydra.job.name}/"
    assert hydra["sweep"]["dir"].startswith(below), hydra["sweep"]["dir"]
    assert hydra["job"]["name"] == command


@pytest.mark.parametrize("command", ["attack", "check", "certify"])
def test_commands_on_saved_runs_take_threads(tmp_path, command):
    """threads=N works for every command, as docs/getting-started.md says (attack and check rejected it)."""
    proc = run_cli(command, "threads=1", "--cfg", "job", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert OmegaConf.create(proc.stdout).threads == 1
