"""`isorobust report --sensitivity REFERENCE QUESTION... --out FILE.md` on hand-made runs with known numbers."""
import json
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from isorobust.errors import IsorobustError
from isorobust.rundir import TABLE_COLUMNS
from isorobust.reports.sensitivity import write_sensitivity
from isorobust.rundir import log_attempts
from tests.conftest import run_cli
from tests.test_cli import assert_one_line_error

TRAINING = {"trainer": {"epochs": 5}, "model": {"name": "mlp"}, "attack": {"apgd": {"steps": 100}}}


def make_run(run: Path, weight: float, scale: float, seed: int, worst: float, overrides: list[str],
             training: dict | None = None, start_minute: int = 0) -> None:
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(
        OmegaConf.to_yaml(OmegaConf.create([*overrides, f"reg.weight={weight:g}", f"seed={seed}"])))
    (run / ".hydra" / "config.yaml").write_text("seed: 0\n")
    rows = [dict(zip(TABLE_COLUMNS, ["mnist", "mlp", "isometric", weight, scale, seed, attack, "linf", 0.1, n, 0.97,
                                     acc]))
            for attack, n, acc in (("apgd", 100, worst), ("worst_case", 100, worst), ("autoattack", 50, worst))]
    pd.DataFrame(rows).to_csv(run / "robustness.csv", index=False)
    config = {**(training or TRAINING), "seed": seed, "reg": {"weight": weight, "scale": scale}}
    (run / "metrics.json").write_text(json.dumps({
        "clean_accuracy": 0.97, "seconds": {"total": 60.0}, "config": config,
        "environment": {"machine": "x86_64", "torch": "2.x", "device": "cpu", "threads": 1}}))
    # the job log's timestamps give the wall time, also in copies whose file times are new
    (run / "train.log").write_text(f"[2026-11-28 09:{start_minute:02d}:00,000][isorobust][INFO] - start\n"
                                   f"[2026-11-28 09:{start_minute + 3:02d}:30,500][isorobust][INFO] - end\n")


def make_sweep(folder: Path, arms: list[tuple], experiment: str, training: dict | None = None) -> Path:
    """arms: (weight, scale, extra overrides, worst case per seed 0, 1, 2)."""
    job = 0
    for weight, scale, overrides, worsts in arms:
        for seed, worst in enumerate(worsts):
            make_run(folder / str(job), weight, scale, seed, worst, overrides, training, start_minute=job)
            job += 1
    record = {"hydra": {"overrides": {"hydra": ["hydra.mode=MULTIRUN"], "task": [f"experiment={experiment}"]}}}
    (folder / "multirun.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(record)))
    return folder


REFERENCE = [(0.0, 10.0, [], (0.30, 0.40, 0.50))]
SCALE = [(1.0, 1.0, ["reg.scale=1"], (0.60, 0.72, 0.81)),       # +30, +32, +31: above zero
         (1.0, 100.0, ["reg.scale=100"], (0.31, 0.39, 0.52))]   # +1, -1, +2: noise


@pytest.fixture
def sweeps(tmp_path):
    reference = make_sweep(tmp_path / "reference", REFERENCE, "sensitivity_mnist")
    scale = make_sweep(tmp_path / "scale", SCALE, "sensitivity_scale")
    # its own β = 0 (longer training) is far from the reference's: pairing with the wrong one shows
    longer = {**TRAINING, "trainer": {"epochs": 20}}
    epochs = make_sweep(tmp_path / "epochs", [(0.0, 10.0, [], (0.70, 0.70, 0.70)),
                                              (1.0, 10.0, [], (0.60, 0.61, 0.59))], "sensitivity_epochs", longer)
    return reference, scale, epochs, tmp_path / "docs" / "sensitivity.md"


def test_each_question_is_compared_with_beta_zero_at_matched_settings(sweeps):
    reference, scale, epochs, out = sweeps
    report = write_sensitivity([reference, scale, epochs], out)
    text = out.read_text()
    assert text == report.markdown
    verdicts = text.split("## Verdict per question")[1].split("\n## ")[0]
    line = {name: next(l for l in verdicts.splitlines() if f"`{name}`" in l)
            for name in ("sensitivity_scale", "sensitivity_epochs")}
    # K = 1 is above the reference's β = 0 beyond noise, K = 100 is not
    assert "1 of 2 (configuration, ε) differences to β = 0 are above zero and 0 below" in line["sensitivity_scale"]
    assert "K=1" in line["sensitivity_scale"].split("Above:")[1] and "K=100" not in line["sensitivity_scale"]
    # 20 epochs: compared with its own β = 0 (−10 points, every seed), not with the reference (+20)
    assert "0 of 1" in line["sensitivity_epochs"] and "1 below" in line["sensitivity_epochs"]
    assert "-10.0 [" in line["sensitivity_epochs"]
    assert "above β = 0 beyond seed noise:** `sensitivity_scale` β=1, K=1 at ε=0.1." in text
    section = text.split("## `sensitivity_epochs`")[1]
    assert "Compared with its own β = 0 runs" in section
    assert "Compared with the reference sweep's β = 0 runs" in text.split("## `sensitivity_scale`")[1].split("## `")[0]
    # wall time from the job logs: first start 09:00:00, last end 09:08:30.5 (job 5 started at 09:05)
    assert "wall time 8.5 min" in text.split("## `sensitivity_scale`")[1]
    for name in ("sensitivity_scale", "sensitivity_epochs"):
        assert (out.parent / f"sensitivity_{name}.png").stat().st_size > 0
    assert "isorobust train -m experiment=sensitivity_scale" in text
    # what was attacked, from the rows: the trimmed AutoAttack says so
    assert "Attacks: apgd on 100 test images at ε ∈ {0.1}; autoattack on 50 test images at ε ∈ {0.1}." in text
    # all sweeps: while some job ran, from the first job's start (09:00:00) to the last job's end (job 5: 09:08:30.5)
    assert "less any stretch in which none ran: 8.5 min" in text


def test_a_reference_trained_differently_is_refused(tmp_path):
    reference = make_sweep(tmp_path / "reference", REFERENCE, "sensitivity_mnist")
    other = make_sweep(tmp_path / "scale", SCALE, "sensitivity_scale", {**TRAINING, "trainer": {"epochs": 6}})
    with pytest.raises(IsorobustError, match=r"differs from the reference sweep.s β = 0 runs in trainer.epochs "):
        write_sensitivity([reference, other], tmp_path / "s.md")


def test_the_first_sweep_must_hold_the_reference(tmp_path):
    scale = make_sweep(tmp_path / "scale", SCALE, "sensitivity_scale")
    with pytest.raises(IsorobustError, match="must hold β = 0 runs"):
        write_sensitivity([scale, scale], tmp_path / "s.md")


def test_log_attempts_reads_the_job_log(tmp_path):
    make_run(tmp_path / "r", 0.0, 10.0, 0, 0.5, [], start_minute=7)
    [(start, end)] = log_attempts(tmp_path / "r")
    assert end - start == pytest.approx(210.5)
    assert log_attempts(tmp_path) == []


def test_cli_sensitivity_needs_out(tmp_path, sweeps):
    reference, scale, _, _ = sweeps
    assert_one_line_error(run_cli("report", "--sensitivity", str(reference), str(scale), cwd=tmp_path), "--sensitivity needs --out")


def test_a_resumed_run_log_splits_into_attempts(tmp_path):
    """Hydra appends every start of a job to its log: a run stopped and resumed has several attempts, and the
    time between them (the sweep was not running) counts neither in the run's span of work nor the sweep's."""
    from isorobust.rundir import working_seconds

    run = tmp_path / "r"
    run.mkdir()
    (run / "train.log").write_text(
        "[2026-12-07 09:00:00,000][isorobust.jobs.train][INFO] - data mnist: 60000 train / 10000 test on cpu\n"
        "[2026-12-07 09:10:00,000][isorobust.attacks.sweep][INFO] - pgd: clean 0.97\n"
        # stopped here; resumed the next day
        "[2026-12-08 08:00:00,000][isorobust.jobs.train][INFO] - data mnist: 60000 train / 10000 test on cpu\n"
        "[2026-12-08 08:00:01,000][isorobust.attacks.base][INFO] - apgd: resumed after ε = 0.05\n"
        "[2026-12-08 08:30:00,000][isorobust.attacks.sweep][INFO] - apgd: clean 0.97\n"
        # the same sweep run once more with resume=true: this run is skipped, which is no work
        "[2026-12-09 07:00:00,000][isorobust.sweeps.resume][INFO] - resume=true: r already holds complete "
        "results, job skipped\n")
    attempts = log_attempts(run)
    assert [round(b - a) for a, b in attempts] == [600, 1800]
    assert working_seconds(attempts) == pytest.approx(2400)  # not the day between
    # side by side counts once; pauses up to `pause` are a sweep at work, longer ones are not
    assert working_seconds([(0, 10), (5, 20), (30, 40), (35, 36)]) == 40
    assert working_seconds([(0, 10), (5, 20), (30, 40), (35, 36)], pause=5) == 30


def test_sweep_wall_time_leaves_out_the_gap_of_a_resumed_sweep(tmp_path):
    from isorobust.rundir import find_runs
    from isorobust.reports.study import sweep_facts, wall_time

    sweep = make_sweep(tmp_path / "s", [(0.0, 10.0, [], [0.5, 0.5, 0.5])], "paper_mnist")
    with (sweep / "0" / "train.log").open("a") as log:  # job 0: 09:00:00-09:03:30.5, then resumed a day later
        log.write("[2026-11-29 09:00:00,000][isorobust.jobs.train][INFO] - data mnist: 60000 train / 10000 test\n"
                  "[2026-11-29 09:02:00,000][isorobust][INFO] - end\n")
    facts = sweep_facts(find_runs(sweep))
    # jobs 0-2 ran 09:00-09:05:30.5 on the first day, job 0 again 2 min the next day: 7.5 min, not a day
    assert facts["wall_minutes"] == pytest.approx(7.5 + 0.5 / 60)
    assert facts["resumed_runs"] == 1
    assert facts["job_minutes"] == pytest.approx(3 * 1.0 + 3.5 + 0.5 / 60)  # 3 × 60 s recorded + the first attempt
    assert "1 runs were stopped and resumed" in wall_time(facts)
    # the finished attempt lasts as long as it recorded (60 s), past its last log line
    (sweep / "0" / "train.log").write_text(
        "[2026-11-28 09:00:00,000][isorobust.jobs.train][INFO] - data mnist: 60000 train / 10000 test\n")
    assert sweep_facts(find_runs(sweep))["wall_minutes"] == pytest.approx(5.5 + 0.5 / 60)
