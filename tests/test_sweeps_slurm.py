"""hydra/launcher=slurm end to end: a 2-job sweep through a real Slurm cluster, then its summary.

Needs a cluster: SLURM_CONF pointing at its slurm.conf (tests/slurm/start.sh starts a single-node one;
.ci/run does that). Skipped only outside CI without SLURM_CONF; under CI a missing cluster fails.
"""
import json
import os
import shutil
import subprocess
import time

import pytest

from tests.conftest import requires_mnist, run_cli
from tests.test_sweeps_e2e import SWEEP, assert_sweep_summary

IN_CI = os.environ.get("CI", "").lower() not in ("", "0", "false")
pytestmark = [
    pytest.mark.e2e,
    requires_mnist,
    pytest.mark.skipif(not os.environ.get("SLURM_CONF") and not IN_CI,
                       reason="no Slurm cluster: set SLURM_CONF (tests/slurm/start.sh starts one; CI does)"),
]


def slurm(*args: str) -> str:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=30, check=True).stdout


@pytest.fixture(scope="module")
def cluster():
    if not os.environ.get("SLURM_CONF"):
        pytest.fail("CI is set but SLURM_CONF is not: .ci/run should have started tests/slurm/start.sh")
    if shutil.which("sbatch") is None:
        pytest.fail("SLURM_CONF is set but sbatch is not installed")
    states = slurm("sinfo", "-h", "-o", "%t").split()
    assert any(s in ("idle", "mix") for s in states), f"no usable Slurm node (sinfo states: {states})"


def test_slurm_launcher_runs_a_sweep_and_summarises_it(cluster, tmp_path):
    sweep_dir = tmp_path / "sweep"
    # the cluster default partition; 1 cpu and 1 GB so that both jobs fit a 2-core CI machine at once
    proc = run_cli("train", "-m", *SWEEP, "hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1",
                   "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={sweep_dir}",
                   cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert_sweep_summary(sweep_dir, 2)
    for job in (0, 1):
        metrics = json.loads((sweep_dir / str(job) / "metrics.json").read_text())
        assert metrics["environment"]["threads"] == 1  # = cpus_per_task
    # the jobs really went through Slurm: submitit's folders are named by Slurm job id, and the
    # accounting database has them as COMPLETED (records can lag a few seconds behind the job)
    job_ids = sorted(p.name for p in (sweep_dir / ".submitit").iterdir() if p.is_dir() and "_" in p.name)  # <array>_<task>
    array_ids = {j.split("_")[0] for j in job_ids}
    assert len(job_ids) == 2 and len(array_ids) == 1, job_ids
    states: dict[str, str] = {}
    for _ in range(60):
        out = slurm("sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", next(iter(array_ids)))
        states = dict(line.split("|") for line in out.split())
        if all(states.get(j) == "COMPLETED" for j in job_ids):
            break
        time.sleep(0.5)
    assert all(states.get(j) == "COMPLETED" for j in job_ids), states
