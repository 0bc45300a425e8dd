"""The structure the code promises (docs/architecture.md): one owner of the run record, one list of the
result-neutral keys, and commands that answer --help and report without importing torch."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from isorobust import rundir
from isorobust.config import RESULT_NEUTRAL, differing_keys, result_neutral
from isorobust.errors import IsorobustError

PACKAGE = Path(__file__).resolve().parents[1] / "isorobust"


def test_only_the_run_record_names_metrics_json_in_code():
    """Every module reads and writes metrics.json through rundir (docstrings and comments may name it)."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "rundir.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if re.search(r"""["']metrics\.json["']""", code) and '"""' not in code and "f\"" not in code:
                offenders.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert not offenders, offenders


def test_the_library_does_not_import_torchattacks():
    """torchattacks is the tests' oracle (the dev extra), not a run-time dependency: every attack is written here."""
    offenders = [f"{path.relative_to(PACKAGE)}:{number}" for path in PACKAGE.rglob("*.py")
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if re.match(r"\s*(import|from)\s+torchattacks\b", line)]
    assert not offenders, offenders


def test_metrics_round_trip_and_old_records_read_as_version_1(tmp_path):
    metrics = rundir.Metrics(dataset="mnist", model="mlp", reg="isometric", reg_weight=0.1, reg_scale=10.0, seed=2,
                             clean_accuracy=0.97, extra={"train_jacobian_loss": 0.5}, seconds={"total": 3.0})
    rundir.write_metrics(tmp_path, metrics)
    record = json.loads((tmp_path / rundir.METRICS).read_text())
    assert record["version"] == rundir.METRICS_VERSION and record["train_jacobian_loss"] == 0.5
    assert "hierarchy" not in record and "certify" not in record  # optional sections only where present
    assert rundir.read_metrics(tmp_path) == metrics
    # a record of an older version: no version field, a key this version does not name
    (tmp_path / rundir.METRICS).write_text(json.dumps({"clean_accuracy": 0.5, "seed": 1, "old_key": [1]}))
    old = rundir.read_metrics(tmp_path)
    assert old.version == 1 and old.clean_accuracy == 0.5 and old.extra == {"old_key": [1]}
    (tmp_path / rundir.METRICS).write_text("{not json")
    with pytest.raises(IsorobustError, match="cannot read"):
        rundir.read_metrics(tmp_path)


def _certified(folder: Path, method: str, accuracy: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"method": [method], "epsilon": [0.01], "n_samples": [10], "clean_accuracy": [1.0],
                  "certified_accuracy": [accuracy]}).to_csv(folder / rundir.CERTIFIED_CSV, index=False)


def test_a_certification_has_one_shape_however_it_was_made(tmp_path):
    run = tmp_path / "run"
    _certified(run / "certify", "crown", 0.5)
    (run / "certify" / rundir.CERTIFY_JSON).write_text(json.dumps({"certify": {"method": "crown"}, "seconds": 2.0}))
    _certified(run / "certify_alpha_crown", "alpha_crown", 0.6)
    _certified(run / "certify_crown_old", "crown", 0.4)  # an archived one: its folder is not its method
    found = rundir.certifications(run)
    assert [(c.method, c.during_training, c.seconds) for c in found] == [("crown", False, 2.0),
                                                                           ("alpha_crown", False, None)]
    # certified during training: the run's own table leads, its seconds from metrics.json
    _certified(run, "ibp", 0.3)
    rundir.write_metrics(run, rundir.Metrics(certify={"method": "ibp"}, seconds={"certify": 1.5}))
    found = rundir.certifications(run)
    assert [(c.method, c.during_training, c.seconds) for c in found] == [("ibp", True, 1.5),
                                                                           ("alpha_crown", False, None)]
    assert found[0].table()["certified_accuracy"].tolist() == [0.3]


def test_one_list_of_result_neutral_keys():
    assert all(result_neutral(k) for k in RESULT_NEUTRAL)
    assert result_neutral("logger.tracking_uri") and result_neutral("+logger") and result_neutral("dataset.root")
    assert not result_neutral("dataset.train_size") and not result_neutral("trainer.lr")
    a = {"threads": 1, "device": "cpu", "trainer": {"lr": 0.1, "resume": True}, "certify": {"method": "crown"}}
    b = {"threads": 2, "device": "cuda", "trainer": {"lr": 0.2, "resume": False}, "certify": None}
    assert differing_keys(a, b) == ["trainer.lr"]


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["report", "--help"]])
def test_help_and_report_start_without_torch(args):
    code = ("import sys\nfrom isorobust.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', 'FOOLBOX' if 'foolbox' in sys.modules else '')")
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1].startswith("NO-TORCH"), out.stdout[-500:] + out.stderr[-500:]
    assert "FOOLBOX" not in out.stdout


def test_report_of_a_study_starts_without_torch(tmp_path):
    """`isorobust report` on the committed study records: no torch, no foolbox."""
    root = Path(__file__).resolve().parents[1] / "docs" / "results" / "sensitivity_runs" / "fashion"
    code = ("import sys\nfrom isorobust.cli import main\nmain(sys.argv[1:])\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')")
    import shutil

    shutil.copytree(root, tmp_path / "fashion")
    out = subprocess.run([sys.executable, "-c", code, "report", str(tmp_path / "fashion")], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "NO-TORCH"


def test_saved_configs_of_older_versions_name_the_code_where_it_lives_now(tmp_path):
    """Committed run records name isorobust.evaluation.*: read_config maps them to the modules of today."""
    from hydra.utils import get_class

    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(
        "attack:\n  pgd:\n    _target_: isorobust.evaluation.attacks.LinfPGD\n"
        "certify:\n  _target_: isorobust.evaluation.certify.Certifier\n")
    config = rundir.read_config(run)
    assert config.attack.pgd._target_ == "isorobust.attacks.base.LinfPGD"
    assert config.certify._target_ == "isorobust.certification.Certifier"
    get_class(config.attack.pgd._target_), get_class(config.certify._target_)  # importable


def test_wall_time_comes_from_the_jobs_own_log(tmp_path):
    """A later command's log beside the run (masking_checks.log sorts first) does not move its span."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "train.log").write_text("[2026-01-01 10:00:00,000][x][INFO] - a\n[2026-01-01 10:30:00,500][x][INFO] - b\n")
    (run / "masking_checks.log").write_text("[2026-01-02 09:00:00,000][x][INFO] - later\n")
    [(start, end)] = rundir.log_attempts(run)
    assert end - start == pytest.approx(1800.5)
