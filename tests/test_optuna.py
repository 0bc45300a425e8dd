"""hydra/sweeper=optuna_maximize: the task returns the configured objective, the study's best trial is the run with the
highest objective, and the trials land in the sweep summary; bad objectives stop before training."""
import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from omegaconf import OmegaConf

from isorobust.errors import ConfigError, IsorobustError
from isorobust.reports.objective import PENALTY, value_from
from isorobust.sweeps.objective import check_objective
from isorobust.tracking import install_command
from tests.conftest import finished_run, requires_extras, requires_mnist, run_cli_without

TINY = ["dataset.train_size=300", "dataset.test_size=100", "trainer.epochs=1", "attack=fgsm",
        "eval.epsilons=[0.05,0.1]", "check.enabled=false", "threads=1"]
# seed 4 samples β = 7.38, 0.154, 7.78: the best trial is (most likely) not the first one
SEARCH = ["hydra/sweeper=optuna_maximize", "+reg=isometric", "reg.weight=tag(log, interval(0.001, 10))",
          "hydra.sweeper.n_trials=3", "hydra.sweeper.sampler.seed=4", "objective.metric=fgsm",
          "objective.epsilon=0.05", *TINY]


def cli(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "isorobust", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)


# --- the objective on hand-made tables -------------------------------------------------------------------

def table(rows):
    return pd.DataFrame(rows, columns=["attack", "epsilon", "robust_accuracy"])


def test_objective_reads_the_metric_at_epsilon():
    t = table([("fgsm", 0.05, 0.6), ("fgsm", 0.1, 0.3), ("pgd", 0.1, 0.2), ("worst_case", 0.1, 0.15)])
    assert value_from(t, 0.9, "worst_case", 0.1, None, "t") == 0.15
    assert value_from(t, 0.9, "fgsm", 0.05, None, "t") == 0.6
    assert value_from(t, 0.9, "fgsm", 0.1 + 1e-12, None, "t") == 0.3  # the same ε written another way
    with pytest.raises(IsorobustError, match="no pgd row at ε=0.05"):
        value_from(t, 0.9, "pgd", 0.05, None, "t")


def test_below_the_clean_accuracy_floor_ranks_last():
    t = table([("fgsm", 0.1, 0.0)])
    assert value_from(t, 0.70, "fgsm", 0.1, 0.8, "t") == PENALTY
    assert value_from(t, 0.85, "fgsm", 0.1, 0.8, "t") == 0.0
    assert PENALTY < 0.0  # below every robust accuracy, 0 included


def test_hierarchical_runs_are_ranked_on_the_finest_level():
    t = pd.DataFrame({"attack": ["fgsm", "fgsm"], "epsilon": [0.1, 0.1], "robust_accuracy": [0.7, 0.4],
                      "level": [0, 1]})
    assert value_from(t, 0.9, "fgsm", 0.1, None, "t") == 0.4


def cfg(**objective):
    return OmegaConf.create({
        "attack": {"fgsm": {"epsilons": None}, "pgd": {"epsilons": [0.3]}},
        "eval": {"epsilons": [0.05, 0.1]},
        "objective": {"metric": "worst_case", "epsilon": 0.1, "min_clean_accuracy": None, **objective},
    })


def test_objective_is_checked_against_the_attack_grids():
    check_objective(cfg(metric="fgsm", epsilon=0.1))
    with pytest.raises(ConfigError, match=r"objective.epsilon=0.2 is not in the ε grid of fgsm \(0.05, 0.1\)"):
        check_objective(cfg(metric="fgsm", epsilon=0.2))
    with pytest.raises(ConfigError, match="worst_case needs two attacks at ε=0.1 .attacks there: fgsm."):
        check_objective(cfg())  # pgd has its own grid, without 0.1
    with pytest.raises(ConfigError, match="objective.metric='apgd' is not a column"):
        check_objective(cfg(metric="apgd"))
    with pytest.raises(ConfigError, match=r"min_clean_accuracy=1.5 must be null or in \[0, 1\]"):
        check_objective(cfg(metric="fgsm", min_clean_accuracy=1.5))


# --- a real search ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def search(tmp_path_factory):
    _, sweep_dir, proc = finished_run(tmp_path_factory, "optuna", *SEARCH, sweep=True, cli=cli)
    return sweep_dir, proc


@requires_mnist
@requires_extras("optuna", "hydra_plugins.hydra_optuna_sweeper")
def test_best_trial_is_the_run_with_the_highest_objective(search):
    sweep_dir, proc = search
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    # each trial's objective, read straight from its table: fgsm's robust accuracy at ε = 0.05
    objectives = {}
    for job in ("0", "1", "2"):
        t = pd.read_csv(sweep_dir / job / "robustness.csv")
        objectives[job] = float(t[(t.attack == "fgsm") & (t.epsilon == 0.05)].robust_accuracy.iloc[0])
    best_job = max(objectives, key=lambda j: (objectives[j], -int(j)))  # the first of equal values
    assert results["best_value"] == pytest.approx(max(objectives.values()))
    best_overrides = yaml.safe_load((sweep_dir / best_job / ".hydra" / "overrides.yaml").read_text())
    assert f"reg.weight={results['best_params']['reg.weight']}" in best_overrides
    assert not (sweep_dir / "3").exists()  # n_trials=3
    # maximised: configs/hydra/sweeper/optuna_maximize.yaml sets the direction (the plugin's default is
    # minimize), nothing is added to the command line
    hydra_record = yaml.safe_load((sweep_dir / "0" / ".hydra" / "hydra.yaml").read_text())
    assert hydra_record["hydra"]["sweeper"]["direction"] == "maximize"
    assert not [o for o in hydra_record["hydra"]["overrides"]["hydra"] if o.startswith("hydra.sweeper.direction")]
    assert "Directions: ['maximize']" in proc.stdout + proc.stderr


@requires_mnist
@requires_extras("optuna", "hydra_plugins.hydra_optuna_sweeper")
def test_trials_and_best_are_in_the_sweep_summary(search):
    sweep_dir, proc = search
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    summary = pd.read_csv(sweep_dir / "summary.csv", dtype={"run": str})
    assert sorted(summary["run"].unique()) == ["0", "1", "2"]
    study = pd.read_csv(sweep_dir / "study.csv", dtype={"run": str})
    assert list(study["run"]) == ["0", "1", "2"] and study["best"].sum() == 1
    best = study[study["best"]].iloc[0]
    assert best["objective"] == pytest.approx(results["best_value"])
    assert best["reg.weight"] == pytest.approx(results["best_params"]["reg.weight"])
    for _, row in study.iterrows():
        metrics = json.loads((sweep_dir / row["run"] / "metrics.json").read_text())
        assert row["clean_accuracy"] == pytest.approx(metrics["clean_accuracy"])
    md = (sweep_dir / "summary.md").read_text()
    assert "## Optuna study" in md and f"| {best['run']} **best** |" in md
    assert "robust accuracy of fgsm at ε = 0.05, maximised" in md
    assert "## Optuna study" in proc.stdout  # printed with the summary at the end of the sweep


@requires_mnist
@requires_extras("optuna", "hydra_plugins.hydra_optuna_sweeper")
def test_report_rebuilds_the_study(search, tmp_path):
    sweep_dir, _ = search
    before = (sweep_dir / "study.csv").read_text()
    proc = cli("report", str(sweep_dir), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (sweep_dir / "study.csv").read_text() == before and "## Optuna study" in proc.stdout


# --- errors: one line, before any training ------------------------------------------------------------------

@requires_extras("optuna", "hydra_plugins.hydra_optuna_sweeper")
@pytest.mark.parametrize("extra,message", [
    (["objective.epsilon=0.3"], "objective.epsilon=0.3 is not in the ε grid of fgsm (0.05, 0.1): add it"),
    (["objective.metric=worst_case"], "objective.metric=worst_case needs two attacks at ε=0.05"),
    (["hydra.sweeper.direction=minimize"], "hydra.sweeper.direction=minimize: the objective is a robust accuracy"),
])
def test_bad_objective_stops_before_training(tmp_path, extra, message):
    sweep_dir = tmp_path / "sweep"
    proc = cli("train", "-m", *SEARCH, *extra, f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("isorobust: error: ") and message in last, proc.stderr[-3000:]
    assert not list(sweep_dir.glob("*/model.pt"))


@requires_extras("optuna", "hydra_plugins.hydra_optuna_sweeper")
def test_the_plugins_own_spelling_minimises_and_stops_before_training(tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = cli("train", "-m", "hydra/sweeper=optuna", *SEARCH[1:], f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("isorobust: error: hydra.sweeper.direction=minimize: the objective is a robust accuracy")
    assert not list(sweep_dir.glob("*/model.pt"))


def test_missing_optuna_names_the_extra(tmp_path):
    proc = run_cli_without(["optuna"], "train", "-m", *SEARCH, f"hydra.sweep.dir={tmp_path / 'sweep'}",
                           cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "isorobust: error: hydra/sweeper=optuna_maximize needs the Optuna sweeper, which is not installed: "
        f"{install_command('optuna')}"]
    assert not (tmp_path / "sweep").exists()
