"""Runs that are interrupted, diverge or meet hostile files end cleanly and can be resumed."""
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import torch

from isorobust import io
from tests.conftest import requires_mnist, run_cli

SMALL = ["dataset.train_size=20000", "dataset.test_size=1000", "trainer.epochs=3",
         "eval.n_samples=300", "eval.epsilons=[0.05,0.1,0.2]", "+reg=isometric", "check.enabled=false"]


def start_run(run_dir, *overrides):
    return subprocess.Popen(
        [sys.executable, "-m", "isorobust", "train", *SMALL, *overrides, f"hydra.run.dir={run_dir}"],
        cwd=run_dir.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy(),
    )


def wait_for(path, proc, timeout=300.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"run ended before {path.name} appeared: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.02)


def assert_nothing_complete(run_dir):
    for name in ("metrics.json", "robustness.csv", "robustness.md"):
        assert not (run_dir / name).exists(), name
    assert not list(run_dir.glob(".*.tmp")), "a temporary file was left behind"


def history_without_times(metrics):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in metrics["history"]]


@requires_mnist
def test_sigterm_in_training_then_resume_matches_uninterrupted_run(tmp_path):
    killed = tmp_path / "killed"
    killed.mkdir()
    proc = start_run(killed)
    wait_for(killed / "checkpoint.pt", proc)  # written after the first epoch
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "interrupted" in err and "Traceback" not in err
    assert_nothing_complete(killed)
    assert io.load_torch(killed / "checkpoint.pt")["epoch"] < 3

    resumed = run_cli("train", *SMALL, "trainer.resume=true", f"hydra.run.dir={killed}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    straight = run_cli("train", *SMALL, f"hydra.run.dir={tmp_path / 'straight'}", cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr[-2000:]

    a = json.loads((killed / "metrics.json").read_text())
    b = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    assert history_without_times(a) == history_without_times(b)
    assert a["clean_accuracy"] == b["clean_accuracy"]
    pd.testing.assert_frame_equal(pd.read_csv(killed / "robustness.csv"),
                                  pd.read_csv(tmp_path / "straight" / "robustness.csv"))
    ma, mb = io.load_torch(killed / "model.pt"), io.load_torch(tmp_path / "straight" / "model.pt")
    assert all(torch.equal(ma["state_dict"][k], mb["state_dict"][k]) for k in ma["state_dict"])


@requires_mnist
def test_sigterm_during_attacks_leaves_no_complete_looking_results(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    proc = start_run(run_dir, "trainer.epochs=1", "eval.n_samples=1000")
    wait_for(run_dir / "model.pt", proc)  # training is over, the attacks are running
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert_nothing_complete(run_dir)


@requires_mnist
def test_sigterm_during_attacks_then_resume_goes_on_after_the_last_radius(tmp_path):
    """A run stopped inside its attack sweep takes its attacks up, with resume=true, after the last radius they
    finished (attacks.progress), and ends with the results of a run that was never stopped."""
    args = ["trainer.epochs=1", "eval.n_samples=500", "attack=apgd"]
    killed = tmp_path / "killed"
    killed.mkdir()
    proc = start_run(killed, *args)
    wait_for(killed / "attack_progress" / "apgd.pt", proc)  # apgd has finished its first radius, 0.05
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert_nothing_complete(killed)

    resumed = run_cli("train", *SMALL, *args, "resume=true", f"hydra.run.dir={killed}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "apgd: resumed after ε = 0.05" in (killed / "train.log").read_text()
    assert not (killed / "attack_progress").exists()  # scratch, removed once the run is complete
    straight = run_cli("train", *SMALL, *args, f"hydra.run.dir={tmp_path / 'straight'}", cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr[-2000:]
    pd.testing.assert_frame_equal(pd.read_csv(killed / "robustness.csv"),
                                  pd.read_csv(tmp_path / "straight" / "robustness.csv"))
    a = json.loads((killed / "metrics.json").read_text())["attack_cost"]
    b = json.loads((tmp_path / "straight" / "metrics.json").read_text())["attack_cost"]
    assert [{k: v for k, v in c.items() if k != "seconds"} for c in a] == \
        [{k: v for k, v in c.items() if k != "seconds"} for c in b]


@requires_mnist
def test_sigterm_during_a_reattack_then_resume_goes_on_after_the_last_radius(tmp_path):
    """`isorobust attack` on a saved run, stopped and run again with resume=true into the same folder: the
    results of a re-attack that was never stopped."""
    run = tmp_path / "run"
    trained = run_cli("train", *SMALL, "trainer.epochs=1", "attack=fgsm", f"hydra.run.dir={run}", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-2000:]
    args = ["attack", f"run={run}", "attack=apgd", "eval.n_samples=500"]
    out = tmp_path / "reattack"
    proc = subprocess.Popen([sys.executable, "-m", "isorobust", *args, f"hydra.run.dir={out}"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    wait_for(out / "attack_progress" / "apgd.pt", proc)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode != 0 and not (out / "robustness.csv").exists()

    resumed = run_cli(*args, "resume=true", f"hydra.run.dir={out}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "apgd: resumed after ε = 0.05" in (out / "attack.log").read_text()
    assert not (out / "attack_progress").exists()
    straight = run_cli(*args, f"hydra.run.dir={tmp_path / 'straight'}", cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr[-2000:]
    pd.testing.assert_frame_equal(pd.read_csv(out / "robustness.csv"),
                                  pd.read_csv(tmp_path / "straight" / "robustness.csv"))


@requires_mnist
def test_diverging_loss_stops_with_epoch_and_batch(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("train", *SMALL, "reg.weight=1e40", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "epoch 1, batch 1/" in lines[0] and "reg.weight or trainer.lr" in lines[0], lines
    assert_nothing_complete(run_dir)


class Payload:
    def __reduce__(self):
        return (os.system, ("touch PAYLOAD_RAN",))


def test_attack_refuses_a_pickle_checkpoint_without_running_it(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("seed: 0\n")
    torch.save({"format": "isorobust.model", "model_class": "MLP", "model_config": Payload()}, run / "model.pt")
    proc = run_cli("attack", f"run={run}", f"hydra.run.dir={tmp_path / 'out'}", cwd=tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.strip().startswith("isorobust: error: refusing checkpoint")
    assert not (tmp_path / "PAYLOAD_RAN").exists() and not (run / "PAYLOAD_RAN").exists()
    assert not (tmp_path / "out" / "robustness.csv").exists()
