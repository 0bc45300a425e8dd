"""`isorobust train -m` on a small MNIST subset: the sweep summary, resume=true, and the joblib launcher."""
import json

import pandas as pd
import pytest

from isorobust.reports.sweep import REPORT_FILES
from isorobust.sweeps.threads import available_cores
from tests.conftest import finished_run, requires_mnist, run_cli

pytestmark = [pytest.mark.e2e, requires_mnist]

TINY = ["dataset.train_size=1000", "dataset.test_size=200", "trainer.epochs=1", "eval.n_samples=100",
        "eval.epsilons=[0.05,0.2]"]
SWEEP = ["+reg=isometric", "reg.weight=0,1", "seed=0", *TINY]


def assert_sweep_summary(sweep_dir, n_jobs: int) -> pd.DataFrame:
    for name in REPORT_FILES:
        assert (sweep_dir / name).is_file() and (sweep_dir / name).stat().st_size > 0, name
    for job in range(n_jobs):
        assert (sweep_dir / str(job) / "metrics.json").is_file()
    summary = pd.read_csv(sweep_dir / "summary.csv", dtype={"run": str})
    assert sorted(summary["run"].unique()) == [str(j) for j in range(n_jobs)]
    assert len(summary) == n_jobs * 3 * 2  # (fgsm, pgd, worst_case) x 2 ε per job
    assert sorted(summary["override.reg.weight"].unique()) == [0, 1]
    md = (sweep_dir / "summary.md").read_text()
    header = md.split("## fgsm")[1].splitlines()[2]
    assert [c.strip() for c in header.split("|")[1:-1]] == ["ε", "β=0", "β=1"]
    # the summary's mean over one seed is that run's own number
    for job in range(n_jobs):
        own = pd.read_csv(sweep_dir / str(job) / "robustness.csv")
        mine = summary[summary["run"] == str(job)].reset_index(drop=True)
        pd.testing.assert_series_equal(mine["robust_accuracy"], own["robust_accuracy"])
    return summary


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return finished_run(tmp_path_factory, "sweep", *SWEEP, sweep=True)


def test_sweep_writes_summary_table_and_figure(sweep):
    _, sweep_dir, proc = sweep
    assert_sweep_summary(sweep_dir, 2)
    assert "# Sweep summary" in proc.stdout


def test_report_rebuilds_the_same_summary(sweep):
    work, sweep_dir, _ = sweep
    before = (sweep_dir / "summary.csv").read_text()
    proc = run_cli("report", str(sweep_dir), cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert (sweep_dir / "summary.csv").read_text() == before


def test_resume_skips_complete_jobs(sweep):
    work, sweep_dir, _ = sweep
    stamps = {j: (sweep_dir / str(j) / "metrics.json").stat().st_mtime_ns for j in (0, 1)}
    (sweep_dir / "summary.md").unlink()
    proc = run_cli("train", "-m", *SWEEP, "resume=true", f"hydra.sweep.dir={sweep_dir}", cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert log.count("already holds complete results, job skipped") == 2, log[-3000:]
    assert {j: (sweep_dir / str(j) / "metrics.json").stat().st_mtime_ns for j in (0, 1)} == stamps
    assert (sweep_dir / "summary.md").is_file()
    # the same sweep dir with another configuration is refused, not silently mixed
    proc = run_cli("train", "-m", *SWEEP, "trainer.lr=0.01", "resume=true", f"hydra.sweep.dir={sweep_dir}",
                   cwd=work)
    assert proc.returncode != 0 and "trainer.lr" in proc.stderr.strip().splitlines()[-1]
    assert (sweep_dir / "0" / "metrics.json").stat().st_mtime_ns == stamps[0]


def test_joblib_launcher_runs_jobs_in_parallel_within_the_cores(tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = run_cli("train", "-m", *SWEEP, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                   f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr
    assert_sweep_summary(sweep_dir, 2)
    cores = available_cores()
    threads = [json.loads((sweep_dir / str(j) / "metrics.json").read_text())["environment"]["threads"] for j in (0, 1)]
    assert threads == [max(1, cores // 2)] * 2
    assert 2 * threads[0] <= max(cores, 2)
