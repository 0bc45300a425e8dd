"""logger=mlflow and logger=tensorboard: runs and sweeps logged from their run directories, read back with the
trackers' own readers (MlflowClient, TensorBoard's EventAccumulator); and the failures: a missing extra and an
unusable store stop the run before training with one line, a store that fails after the run only warns."""
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from isorobust.reports.aggregate import setting_of
from isorobust.sweeps.resume import config_differences
from isorobust.tracking import epsilon_label, epsilon_step, first_line, flat_config, install_command
from tests.conftest import requires_extras, requires_mnist, run_cli, run_cli_without

TINY = ["dataset.train_size=300", "dataset.test_size=100", "trainer.epochs=1", "attack=fgsm",
        "eval.epsilons=[0.05,0.1]", "check.enabled=false", "threads=1"]
SWEEP = ["+reg=isometric", "reg.weight=0,1", *TINY]


def clean_env() -> dict:
    """The default store (sqlite:///outputs/mlflow.db) unless a test says otherwise: no MLFLOW_TRACKING_URI."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return {**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def cli(*args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "isorobust", *args], cwd=cwd, env={**clean_env(), **(env or {})},
                          capture_output=True, text=True, timeout=600)


def digest(folder):
    """The run's result files and their contents (not Hydra's record and log, which every invocation renews)."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))
            if p.is_file() and ".hydra" not in p.parts and p.name != "train.log" and "tfevents" not in p.name}


def assert_series(points, expected):
    """A tracker's (step, value) points against [(step, value), ...] (TensorBoard keeps float32)."""
    points = sorted(points, key=lambda p: p.step)
    assert [p.step for p in points] == [step for step, _ in expected]
    assert [p.value for p in points] == pytest.approx([value for _, value in expected], rel=1e-6)


# --- pure parts -----------------------------------------------------------------------------------------

def test_epsilon_names_read_and_sort_as_numbers():
    assert epsilon_label(0.1) == "0.1" and epsilon_label(1.0) == "1" and epsilon_label(0.0) == "0"
    assert epsilon_label(0.016681005372000592) == "0.016681"
    grid = [0.01, 0.016681005372000592, 0.05, 0.1, 0.3593813663804626, 1.0]
    names = [f"robust/pgd/eps_{epsilon_label(e)}" for e in grid]
    assert sorted(names) == names
    assert [epsilon_step(e) for e in grid] == [10, 17, 50, 100, 359, 1000]


def test_a_certification_becomes_metrics_beside_the_attacks():
    from isorobust.tracking import run_scalars

    metrics = {"clean_accuracy": 0.9, "certify": {"method": "crown (ibp through conv/max-pool)",
                                                  "epsilons": [0.001, 0.01], "certified_accuracy": [0.8, 0.5],
                                                  "median_radius": 0.012}}
    table = pd.DataFrame({"attack": ["fgsm"], "epsilon": [0.1], "robust_accuracy": [0.3]})
    scalars = {(s.key, s.step): s.value for s in run_scalars(metrics, table, per_epsilon=True)}
    assert scalars[("certified/crown/eps_0.001", 0)] == 0.8 and scalars[("certified/crown/eps_0.01", 0)] == 0.5
    assert scalars[("certified_curve/crown", 1)] == 0.8 and scalars[("certified_curve/crown", 10)] == 0.5
    assert scalars[("certified/crown/median_radius", 0)] == 0.012
    plain = {s.key for s in run_scalars({"clean_accuracy": 0.9}, table, per_epsilon=False)}
    assert not any(k.startswith("certified") for k in plain) and "robust_curve/fgsm" in plain


def test_flat_config_keeps_lists_as_one_value():
    flat = flat_config({"a": {"b": 1, "c": [0.05, 0.1], "d": None}, "e": "x"})
    assert flat == {"a.b": "1", "a.c": "[0.05, 0.1]", "a.d": "null", "e": "x"}


def test_a_database_error_reads_as_the_database_says():
    class Wrapped(Exception):
        orig = OSError("database is locked")

    assert first_line(Wrapped("(raised as a result of Query-invoked autoflush)\nmore")) == "OSError: database is locked"
    assert first_line(ValueError("first\nsecond")) == "first"


def test_tracking_settings_neither_split_configurations_nor_block_resume():
    assert setting_of(["logger=mlflow", "logger.tracking_uri=sqlite:///x.db", "objective.epsilon=0.2",
                       "trainer.epochs=2"]) == "trainer.epochs=2"
    old = {"seed": 0, "trainer": {"epochs": 1}}  # a run made before logger and objective existed
    now = {**old, "objective": {"metric": "worst_case", "epsilon": 0.1}, "logger": {"tracking_uri": "sqlite:///x"}}
    assert config_differences(old, now) == []
    assert config_differences(old, {**now, "seed": 1}) == ["seed: 0 there, 1 now"]


def test_logger_group_is_checked_before_hydra(tmp_path):
    proc = run_cli("train", "logger=wandb", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "isorobust: error: unknown logger 'wandb' (choose from: mlflow, tensorboard)"


@requires_extras("mlflow")
def test_tracking_uri_defaults_to_local_sqlite_and_honours_the_environment(tmp_path):
    proc = cli("train", "logger=mlflow", "--cfg", "job", "--resolve", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "tracking_uri: sqlite:///outputs/mlflow.db" in proc.stdout
    proc = cli("train", "logger=mlflow", "--cfg", "job", "--resolve", cwd=tmp_path,
               env={"MLFLOW_TRACKING_URI": "sqlite:///elsewhere.db"})
    assert "tracking_uri: sqlite:///elsewhere.db" in proc.stdout


# --- a missing extra, an unusable store: one line, before training ------------------------------------

def test_install_command_names_the_extras_own_requirements(monkeypatch):
    import importlib.metadata

    declared = ['torch<3,>=2.1', 'pytest>=7.4; extra == "dev"', 'mlflow<4,>=2.10; extra == "mlflow"']
    monkeypatch.setattr(importlib.metadata, "requires", lambda name: declared)
    # the extra's own requirement, not the whole project again (see the Makefile for why)
    assert install_command("mlflow") == "pip install 'mlflow<4,>=2.10' (the extra isorobust[mlflow])"

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "requires", not_installed)
    assert install_command("mlflow") == "pip install -e '.[mlflow]'"  # a source tree, not installed


@pytest.mark.parametrize("logger,module,extra", [("mlflow", "mlflow", "mlflow"),
                                                 ("tensorboard", "tensorboard", "tensorboard")])
def test_missing_extra_fails_before_training_with_the_pip_command(tmp_path, logger, module, extra):
    run_dir = tmp_path / "run"
    proc = run_cli_without([module], "train", *TINY, f"logger={logger}", f"hydra.run.dir={run_dir}",
                           cwd=tmp_path, env=clean_env())
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        f"isorobust: error: logger={logger} needs the {module} package, which is not installed: "
        f"{install_command(extra)}"]
    assert not (run_dir / "model.pt").exists() and not (run_dir / "metrics.json").exists()


@requires_extras("mlflow")
@pytest.mark.parametrize("uri,reason", [
    ("nosuch://tracking", "nosuch"),
    ("sqlite:///{tmp}/a_file/mlflow.db", "a_file"),  # its folder cannot be made: a file is in the way
    ("http://127.0.0.1:9", "127.0.0.1"),             # the discard port: nothing answers
])
def test_unusable_store_fails_before_training_in_one_line(tmp_path, uri, reason):
    (tmp_path / "a_file").write_text("not a folder")
    uri = uri.format(tmp=tmp_path)
    run_dir = tmp_path / "run"
    proc = cli("train", *TINY, "logger=mlflow", f"logger.tracking_uri={uri}", f"hydra.run.dir={run_dir}",
               cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith(f"isorobust: error: logger=mlflow: cannot use the tracking store {uri} (")
    assert reason in lines[0]
    assert not (run_dir / "model.pt").exists()


# --- a real MLflow store, read back -------------------------------------------------------------------

@pytest.fixture(scope="module")
def mlflow_sweep(tmp_path_factory):
    """A 2-job β sweep logged to the default store, outputs/mlflow.db under the working directory."""
    work = tmp_path_factory.mktemp("mlflow")
    sweep_dir = work / "sweep"
    proc = cli("train", "-m", *SWEEP, "logger=mlflow", f"hydra.sweep.dir={sweep_dir}", cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from mlflow import MlflowClient

    return work, sweep_dir, proc, MlflowClient(tracking_uri=f"sqlite:///{work}/outputs/mlflow.db")


def job_runs(client, experiment_id):
    runs = client.search_runs([experiment_id], filter_string="tags.`isorobust.kind` = 'run'")
    return {r.data.tags["isorobust.run_dir"]: r for r in runs}


@requires_mnist
@requires_extras("mlflow")
def test_sweep_is_an_experiment_and_each_job_a_run(mlflow_sweep):
    work, sweep_dir, proc, client = mlflow_sweep
    assert proc.stderr.count("isorobust:") == 0, proc.stderr[-2000:]  # no warning, no error
    experiment = client.get_experiment_by_name(str(sweep_dir))  # named after hydra.sweep.dir as given
    assert experiment is not None
    runs = job_runs(client, experiment.experiment_id)
    assert sorted(runs) == [str(sweep_dir / "0"), str(sweep_dir / "1")]
    for job in ("0", "1"):
        run_dir = sweep_dir / job
        run = runs[str(run_dir)]
        metrics = json.loads((run_dir / "metrics.json").read_text())
        table = pd.read_csv(run_dir / "robustness.csv")
        assert run.info.status == "FINISHED" and run.info.run_name == f"{job}: reg.weight={job}"  # what varies
        # params: the flattened resolved config
        assert run.data.params["reg.weight"] == str(metrics["config"]["reg"]["weight"])
        assert run.data.params["eval.epsilons"] == "[0.05, 0.1]"
        assert run.data.params["trainer.epochs"] == "1"
        # robust accuracy at each ε, the clean accuracy and the wall times, as the run's files say
        for row in table.itertuples():
            assert run.data.metrics[f"robust/{row.attack}/eps_{epsilon_label(row.epsilon)}"] == \
                pytest.approx(row.robust_accuracy)
        assert set(k for k in run.data.metrics if k.startswith("robust/")) == {"robust/fgsm/eps_0.05",
                                                                                "robust/fgsm/eps_0.1"}
        curve = client.get_metric_history(run.info.run_id, "robust_curve/fgsm")
        assert_series(curve, [(50, table.robust_accuracy[0]), (100, table.robust_accuracy[1])])
        assert run.data.metrics["clean_accuracy"] == pytest.approx(metrics["clean_accuracy"])
        for part, seconds in metrics["seconds"].items():
            assert run.data.metrics[f"seconds/{part}"] == pytest.approx(seconds)
        # per-epoch history with the epoch as step
        history = client.get_metric_history(run.info.run_id, "train/cross_entropy")
        assert_series(history, [(r["epoch"], r["train_cross_entropy"]) for r in metrics["history"]])
        assert [m.step for m in client.get_metric_history(run.info.run_id, "test/accuracy")] == [1]
        # artifacts: the result files, byte for byte
        names = {f.path for f in client.list_artifacts(run.info.run_id)}
        assert {"robustness.md", "robustness.csv", "checks.csv", "isometry.csv", "metrics.json", "hydra"} <= names
        local = client.download_artifacts(run.info.run_id, "robustness.csv", str(work / f"dl{job}"))
        assert open(local, "rb").read() == (run_dir / "robustness.csv").read_bytes()
        assert run.data.tags["mlflow.note.content"] == (run_dir / "robustness.md").read_text()


@requires_mnist
@requires_extras("mlflow")
def test_sweep_summary_run_holds_the_figure(mlflow_sweep):
    work, sweep_dir, _, client = mlflow_sweep
    experiment = client.get_experiment_by_name(str(sweep_dir))
    summary = client.search_runs([experiment.experiment_id], filter_string="tags.`isorobust.kind` = 'sweep'")
    assert len(summary) == 1 and summary[0].info.run_name == "sweep summary"
    names = {f.path for f in client.list_artifacts(summary[0].info.run_id)}
    assert {"robustness.png", "summary.md", "summary.csv"} <= names
    local = client.download_artifacts(summary[0].info.run_id, "robustness.png", str(work / "fig"))
    assert open(local, "rb").read() == (sweep_dir / "robustness.png").read_bytes()
    # the store and its artifacts live under outputs/, not in ./mlruns
    assert (work / "outputs" / "mlartifacts").is_dir() and not (work / "mlruns").exists()


@requires_mnist
@requires_extras("mlflow")
def test_resume_logs_nothing_twice(mlflow_sweep):
    work, sweep_dir, _, client = mlflow_sweep
    before = digest(sweep_dir / "0")
    proc = cli("train", "-m", *SWEEP, "logger=mlflow", "resume=true", f"hydra.sweep.dir={sweep_dir}", cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    experiment = client.get_experiment_by_name(str(sweep_dir))
    jobs = [d for d in job_runs(client, experiment.experiment_id) if d.startswith(str(sweep_dir))]
    assert len(jobs) == 2  # the jobs were logged already: skipped
    # the sweep summary is logged again (it may have changed) and replaces the earlier one
    summary = client.search_runs([experiment.experiment_id], filter_string="tags.`isorobust.kind` = 'sweep'")
    assert len(summary) == 1
    assert digest(sweep_dir / "0") == before


@requires_mnist
@requires_extras("mlflow")
def test_store_failing_after_the_run_warns_in_one_line_and_keeps_the_run(mlflow_sweep, tmp_path):
    """The store answers before training, then refuses to write (another process holds its write lock):
    the run's files are complete and untouched, one warning line, exit status 0. Here the run is an
    existing, never-logged run directory resumed with resume=true, so no training is needed."""
    work, sweep_dir, _, client = mlflow_sweep
    run_dir = tmp_path / "copy"
    shutil.copytree(sweep_dir / "0", run_dir)
    overrides = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())  # job 0's, logger=mlflow too
    before = digest(run_dir)
    db = sqlite3.connect(work / "outputs" / "mlflow.db", isolation_level=None, timeout=60)
    db.execute("BEGIN IMMEDIATE")  # a writer's lock: readers go on, every other writer waits, then fails
    try:
        proc = cli("train", *overrides, "resume=true",
                   f"logger.experiment_name={sweep_dir}", f"hydra.run.dir={run_dir}", cwd=work)
    finally:
        db.execute("ROLLBACK")
        db.close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("isorobust: warning: logger=mlflow: run not logged (OperationalError: database "
                               "is locked); its files in ")
    assert lines[0].endswith("are complete, and the same command with resume=true logs it")
    assert digest(run_dir) == before
    # once the store is free again, the same command logs it
    proc = cli("train", *overrides, "resume=true",
               f"logger.experiment_name={sweep_dir}", f"hydra.run.dir={run_dir}", cwd=work)
    assert proc.returncode == 0 and "isorobust:" not in proc.stderr, proc.stderr[-3000:]
    assert str(run_dir) in job_runs(client, client.get_experiment_by_name(str(sweep_dir)).experiment_id)


# --- TensorBoard ------------------------------------------------------------------------------------------

@requires_mnist
@requires_extras("tensorboard")
def test_tensorboard_events_in_the_run_directory(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    proc = cli("train", "+reg=isometric", *TINY, "logger=tensorboard", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = list(run_dir.glob("events.out.tfevents.*"))
    assert len(events) == 1 and not list(run_dir.glob(".tensorboard.*"))  # the temporary folder is gone
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    table = pd.read_csv(run_dir / "robustness.csv")
    assert_series(acc.Scalars("robust_curve/fgsm"), [(50, table.robust_accuracy[0]), (100, table.robust_accuracy[1])])
    assert_series(acc.Scalars("train/isometric_loss"), [(1, metrics["history"][0]["train_isometric_loss"])])
    assert acc.Scalars("clean_accuracy")[0].value == pytest.approx(metrics["clean_accuracy"])
    assert acc.Scalars("seconds/total")[0].value == pytest.approx(metrics["seconds"]["total"])
    assert {"robustness/text_summary", "config/text_summary"} <= set(acc.Tags()["tensors"])
    # logging the same run again (resume=true) replaces its events instead of doubling them
    proc = cli("train", "+reg=isometric", *TINY, "logger=tensorboard", "resume=true", f"hydra.run.dir={run_dir}",
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = list(run_dir.glob("events.out.tfevents.*"))
    assert len(again) == 1
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    assert len(acc.Scalars("robust_curve/fgsm")) == 2


@requires_mnist
def test_no_logger_no_tracker_files(tmp_path):
    run_dir = tmp_path / "run"
    proc = cli("train", *TINY, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not list(run_dir.glob("events.out.tfevents.*")) and not (tmp_path / "outputs").exists()
    config = (run_dir / ".hydra" / "config.yaml").read_text()
    assert "logger" not in config
