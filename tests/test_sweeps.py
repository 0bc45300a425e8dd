"""Sweep aggregation on hand-made run directories: known numbers in, known mean/std out; `isorobust report`."""
import json
import math
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from isorobust.errors import IsorobustError
from isorobust.rundir import TABLE_COLUMNS
from isorobust.reports.aggregate import (
    aggregate_clean, aggregate_robustness, configuration_labels, setting_of, summary_frame,
    summary_markdown,
)
from isorobust.rundir import find_runs
from isorobust.reports.sweep import REPORT_FILES, write_report
from isorobust.sweeps.resume import completed_metrics, config_differences
from isorobust.sweeps.threads import apply_threads, threads_per_job
from tests.conftest import run_cli
from tests.test_cli import assert_one_line_error

EPSILONS = [0.1, 0.3]
# robust accuracy per (β, seed) at ε = 0.1 / 0.3 for fgsm; pgd is 0.1 lower everywhere
ROBUST = {(0.0, 0): (0.50, 0.20), (0.0, 1): (0.60, 0.30), (0.0, 2): (0.70, 0.40),
          (1.0, 0): (0.80, 0.10), (1.0, 1): (0.90, 0.10),
          (1.0, 2): (0.00, 0.00)}  # the interrupted run: would change every β=1 number if it were counted
CLEAN = {(0.0, 0): 0.97, (0.0, 1): 0.98, (0.0, 2): 0.99, (1.0, 0): 0.90, (1.0, 1): 0.92, (1.0, 2): 0.10}


def make_run(run: Path, weight: float, seed: int, complete: bool = True, extra: tuple[str, ...] = ()) -> Path:
    """A run directory as `isorobust train` leaves it (the files the report reads)."""
    (run / ".hydra").mkdir(parents=True)
    overrides = ["+reg=isometric", f"reg.weight={weight:g}", f"seed={seed}", *extra]
    (run / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(overrides)))
    rows = []
    for attack, shift in (("fgsm", 0.0), ("pgd", 0.1)):
        for eps, robust in zip(EPSILONS, ROBUST[(weight, seed)]):
            rows.append(dict(zip(TABLE_COLUMNS, [
                "mnist", "mlp", "isometric", weight, 10.0, seed, attack, "linf", eps, 100, 0.95,
                round(robust - shift, 6)])))
    pd.DataFrame(rows).to_csv(run / "robustness.csv", index=False)
    if complete:
        (run / "metrics.json").write_text(json.dumps({"clean_accuracy": CLEAN[(weight, seed)]}))
    return run


@pytest.fixture
def sweeps(tmp_path):
    """Two sweeps merged by hand (seeds 0-1 in one, seed 2 in the other) plus what must be left out."""
    root = tmp_path / "merged"
    a, b = root / "sweep-a", root / "sweep-b"
    job = 0
    for weight in (0.0, 1.0):
        for seed in (0, 1):
            make_run(a / str(job), weight, seed)
            job += 1
    make_run(b / "0", 0.0, 2)
    make_run(b / "1", 1.0, 2, complete=False)  # interrupted: robustness.csv without metrics.json
    (b / "2" / ".hydra").mkdir(parents=True)  # started, nothing written yet
    attack_run = make_run(root / "reattack", 0.0, 0)  # an `isorobust attack` output: not a training run
    (attack_run / "attack.json").write_text("{}")
    (a / "multirun.yaml").write_text("hydra: {}\n")
    return root


def test_finds_complete_and_incomplete_runs_recursively(sweeps):
    runs = find_runs(sweeps)
    names = [r.path.relative_to(sweeps).as_posix() for r in runs]
    assert names == ["sweep-a/0", "sweep-a/1", "sweep-a/2", "sweep-a/3", "sweep-b/0", "sweep-b/1", "sweep-b/2"]
    assert [r.complete for r in runs] == [True] * 5 + [False, False]
    assert runs[5].missing == ("metrics.json",) and runs[6].missing == ("metrics.json", "robustness.csv")


def test_mean_std_n_over_seeds(sweeps):
    summary = summary_frame(find_runs(sweeps), sweeps)
    assert len(summary) == 5 * 2 * 2  # every row of every complete run
    assert summary["override.reg.weight"].tolist()[:4] == ["0", "0", "0", "0"]
    assert set(summary["override.seed"]) == {"0", "1", "2"}
    robust = aggregate_robustness(summary).set_index(["reg_weight", "attack", "epsilon"])
    row = robust.loc[(0.0, "fgsm", 0.1)]
    assert row["mean"] == pytest.approx(0.6) and row["std"] == pytest.approx(0.1) and row["n"] == 3
    assert row["seeds"] == "0 1 2"
    assert robust.loc[(0.0, "pgd", 0.3), "mean"] == pytest.approx(0.2)
    # the interrupted seed 2 of β=1 is not counted
    row = robust.loc[(1.0, "fgsm", 0.1)]
    assert row["mean"] == pytest.approx(0.85) and row["std"] == pytest.approx(math.sqrt(0.005)) and row["n"] == 2
    assert robust.loc[(1.0, "fgsm", 0.3), "std"] == pytest.approx(0.0)
    clean = aggregate_clean(summary).set_index("reg_weight")
    assert clean.loc[0.0, "mean"] == pytest.approx(0.98) and clean.loc[0.0, "std"] == pytest.approx(0.01)
    assert clean.loc[1.0, "n"] == 2


def test_markdown_has_mean_std_n_and_lists_incomplete_runs(sweeps):
    runs = find_runs(sweeps)
    md = summary_markdown(summary_frame(runs, sweeps), runs, sweeps)
    assert "5 complete run(s), 2 incomplete" in md
    assert "98.00 ± 1.00 [95.5, 100.5] (3)" in md.split("## Clean accuracy")[1].split("##")[0]  # β=0 over seeds 0, 1, 2
    fgsm = md.split("## fgsm")[1].split("##")[0]
    line_01 = next(line for line in fgsm.splitlines() if line.split("|")[1:2] == [" 0.1 "])
    assert "60.00 ± 10.00 [35.2, 84.8] (3)" in line_01 and "85.00 ± 7.07 [21.5, 148.5] (2)" in line_01
    assert "sweep-b/1: no metrics.json" in md and "sweep-b/2: no metrics.json, robustness.csv" in md


def test_single_seed_has_no_std(tmp_path):
    make_run(tmp_path / "0", 1.0, 0)
    runs = find_runs(tmp_path)
    robust = aggregate_robustness(summary_frame(runs, tmp_path))
    assert robust["n"].eq(1).all() and robust["std"].isna().all()
    assert "80.00 (1)" in summary_markdown(summary_frame(runs, tmp_path), runs, tmp_path)


def test_other_settings_are_separate_configurations(tmp_path):
    make_run(tmp_path / "0", 0.0, 0, extra=("trainer.epochs=1",))
    make_run(tmp_path / "1", 0.0, 0, extra=("trainer.epochs=5",))
    summary = summary_frame(find_runs(tmp_path), tmp_path)
    clean = aggregate_clean(summary)
    assert len(clean) == 2 and clean["n"].eq(1).all()
    assert configuration_labels(clean) == ["β=0, trainer.epochs=1", "β=0, trainer.epochs=5"]
    assert setting_of(["seed=3", "reg.weight=1", "resume=true", "threads=2", "model.width=50"]) == "model.width=50"


def test_report_writes_the_three_files(sweeps):
    report = write_report(sweeps)
    for name in REPORT_FILES:
        assert (sweeps / name).stat().st_size > 0, name
    assert (sweeps / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (sweeps / "robustness.pdf").read_bytes()[:5] == b"%PDF-"
    assert (sweeps / "summary.md").read_text() == report.markdown
    assert len(pd.read_csv(sweeps / "summary.csv")) == 20 and len(report.incomplete) == 2


def test_report_command(sweeps):
    proc = run_cli("report", str(sweeps), cwd=sweeps)
    assert proc.returncode == 0, proc.stderr
    assert "60.00 ± 10.00 [35.2, 84.8] (3)" in proc.stdout and "summary.csv" in proc.stdout.splitlines()[-1]
    assert all((sweeps / name).is_file() for name in REPORT_FILES)


@pytest.mark.parametrize("case,needle", [
    ("empty", "no run directories below"),
    ("file", "is a file"),
    ("missing", "not found"),
    ("only-incomplete", "no complete runs below"),
])
def test_report_bad_input(tmp_path, case, needle):
    target = tmp_path / case
    if case == "empty":
        target.mkdir()
    elif case == "file":
        target.write_text("not a folder\n")
    elif case == "only-incomplete":
        make_run(target / "0", 0.0, 0, complete=False)
    proc = run_cli("report", str(target), cwd=tmp_path)
    assert_one_line_error(proc, needle)
    assert not any((tmp_path / case / name).exists() for name in REPORT_FILES if target.is_dir())
    with pytest.raises(IsorobustError, match=needle):
        write_report(target)


def test_report_without_a_folder_is_one_line(tmp_path):
    assert_one_line_error(run_cli("report", cwd=tmp_path), "DIR")


@pytest.mark.parametrize("launcher,cores,threads", [
    ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": -1}, 8, 1),
    ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 2}, 8, 4),
    ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 3}, 8, 2),
    ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": -2}, 8, 1),
    ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": -7}, 8, 4),
    ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 16}, 8, 1),
    ({"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher", "cpus_per_task": 3}, 8, 3),
    ({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}, 8, None),
    (None, 8, None),
])
def test_threads_per_job(launcher, cores, threads):
    assert threads_per_job(launcher, cores) == threads
    if launcher and "n_jobs" in launcher and launcher["n_jobs"] <= cores:
        parallel = launcher["n_jobs"] if launcher["n_jobs"] > 0 else cores + 1 + launcher["n_jobs"]
        assert parallel * threads <= cores


def test_apply_threads_sets_torch_and_refuses_nonsense():
    import torch

    before = torch.get_num_threads()
    try:
        apply_threads(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    for bad in (0, -1, "two", 1.5, True):
        with pytest.raises(IsorobustError, match="threads"):
            apply_threads(bad)


def test_resume_compares_configurations(tmp_path):
    saved = {"seed": 0, "threads": 1, "dataset": {"root": "/a", "train_size": 100}, "trainer": {"epochs": 1}}
    same = {"seed": 0, "threads": 4, "dataset": {"root": "/b", "train_size": 100}, "trainer": {"epochs": 1}}
    assert config_differences(saved, same) == []
    other = {**same, "trainer": {"epochs": 2}}
    assert config_differences(saved, other) == ["trainer.epochs: 1 there, 2 now"]
    run = make_run(tmp_path / "run", 0.0, 0)
    (run / "metrics.json").write_text(json.dumps({"clean_accuracy": 0.9, "config": saved, "overrides": ["seed=0"]}))
    assert completed_metrics(OmegaConf.create(same), run).clean_accuracy == 0.9
    with pytest.raises(IsorobustError, match="trainer.epochs"):
        completed_metrics(OmegaConf.create(other), run)
    # the refused job's Hydra record is put back to the one the results came from
    assert OmegaConf.to_container(OmegaConf.load(run / ".hydra" / "overrides.yaml")) == ["seed=0"]
    (run / "metrics.json").unlink()
    assert completed_metrics(OmegaConf.create(other), run) is None  # incomplete: the job runs


def test_levels_and_isometry_are_summarised_per_configuration(tmp_path):
    """Hierarchical rows stay apart per level; each run's pooled isometry figures are averaged over seeds."""
    root = tmp_path / "sweep"
    for job, (weight, seed) in enumerate([(0.0, 0), (0.0, 1)]):
        run = make_run(root / str(job), weight, seed)
        table = pd.read_csv(run / "robustness.csv")
        levels = []
        for level in (0, 1):
            part = table.copy()
            part["level"] = level
            part["robust_accuracy"] = part["robust_accuracy"] + 0.01 * level  # level 1 is 1 point higher
            levels.append(part)
        pd.concat(levels).to_csv(run / "robustness.csv", index=False)
        isometry = {"layers": [{"layer": layer, "scale": 2.0 + seed, "pearson": 0.5 + 0.1 * seed,
                                "spearman": 0.5, "distortion": 1.0} for layer in (0, 1)]}
        (run / "metrics.json").write_text(json.dumps({"clean_accuracy": CLEAN[(weight, seed)], "isometry": isometry}))
    report = write_report(root)
    robust = aggregate_robustness(summary_frame(find_runs(root), root)).set_index(["attack", "level", "epsilon"])
    assert robust.loc[("fgsm", 0, 0.1), "mean"] == pytest.approx(0.55)
    assert robust.loc[("fgsm", 1, 0.1), "mean"] == pytest.approx(0.56) and robust.loc[("fgsm", 1, 0.1), "n"] == 2
    md = report.markdown
    assert "## fgsm (linf, level 0)" in md and "## fgsm (linf, level 1)" in md
    iso = md.split("## Isometry")[1]
    assert "2.500 ± 0.707 (2)" in iso.split("### Pearson")[0]  # K̂ of seeds 0, 1: 2 and 3
    assert "0.550 ± 0.071 (2)" in iso.split("### Pearson")[1]
    per_run = pd.read_csv(root / "isometry_summary.csv")
    assert len(per_run) == 4 and set(per_run["layer"]) == {0, 1}


def test_paired_differences_to_beta_zero_with_t_intervals(sweeps):
    from isorobust.reports.aggregate import paired_differences

    summary = summary_frame(find_runs(sweeps), sweeps)
    paired = paired_differences(summary).set_index(["reg_weight", "attack", "epsilon"])
    # β=1 vs β=0, seeds 0 and 1 (seed 2 of β=1 is incomplete): fgsm ε=0.1: 0.8-0.5, 0.9-0.6
    row = paired.loc[(1.0, "fgsm", 0.1)]
    assert row["mean"] == pytest.approx(0.3) and row["n"] == 2
    assert row["ci_low"] == pytest.approx(0.3) and row["ci_high"] == pytest.approx(0.3)
    # ε=0.3: 0.1-0.2, 0.1-0.3 -> mean -0.15, sd 0.0707, t(0.975, 1 df) = 12.706
    row = paired.loc[(1.0, "fgsm", 0.3)]
    half = 12.7062 * math.sqrt(0.005) / math.sqrt(2)
    assert row["mean"] == pytest.approx(-0.15)
    assert row["ci_low"] == pytest.approx(-0.15 - half, rel=1e-4) and row["ci_high"] == pytest.approx(-0.15 + half, rel=1e-4)
    md = summary_markdown(summary, find_runs(sweeps), sweeps)
    section = md.split("## Paired differences to β=0")[1]
    assert "+30.00 [+30.00, +30.00] *" in section
    assert "In words: 4 of 4" not in section and "differ from β=0 by more than the seeds explain" in section
    assert "β=1 fgsm ε=0.1: +30.00" in section
