"""`isorobust report SWEEP... --out FILE.md`: a study over several sweeps, on hand-made runs with known numbers."""
import json
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from isorobust.errors import IsorobustError
from isorobust.attacks.sweep import TABLE_COLUMNS
from isorobust.reports.study import sweep_command, write_study
from tests.conftest import run_cli
from tests.test_cli import assert_one_line_error

# worst-case robust accuracy at ε = 0.1 per (configuration, seed); autoattack ran on the first 50 samples
WORST = {("iso0", 0): 0.30, ("iso0", 1): 0.40, ("iso0", 2): 0.50,
         ("iso1", 0): 0.31, ("iso1", 1): 0.39, ("iso1", 2): 0.52,   # differences +1, -1, +2: not distinguishable
         ("jac", 0): 0.60, ("jac", 1): 0.72, ("jac", 2): 0.81}      # +30, +32, +31: distinguishable
CONFIG = {"iso0": ("isometric", 0.0, 10.0, ["reg.weight=0"]), "iso1": ("isometric", 1.0, 10.0, ["reg.weight=1"]),
          "jac": ("jacobian", 0.1, 0.0, ["baseline=jacobian"])}


def make_run(run: Path, config: str, seed: int) -> None:
    reg, weight, scale, overrides = CONFIG[config]
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create([*overrides, f"seed={seed}"])))
    (run / ".hydra" / "config.yaml").write_text("seed: 0\n")
    worst = WORST[(config, seed)]
    rows = []
    for attack, n, acc in (("pgd", 100, worst + 0.05), ("paper_fgsm", 100, worst + 0.2 * weight),
                           ("fgsm", 100, worst + 0.1), ("autoattack", 50, worst), ("worst_case", 50, worst)):
        rows.append(dict(zip(TABLE_COLUMNS, ["mnist", "mlp", reg, weight, scale, seed, attack, "linf", 0.1, n,
                                             0.97, acc])))
    pd.DataFrame(rows).to_csv(run / "robustness.csv", index=False)
    (run / "metrics.json").write_text(json.dumps({
        "clean_accuracy": 0.97, "seconds": {"total": 60.0},
        "environment": {"machine": "x86_64", "torch": "2.x", "device": "cpu", "threads": 1}}))


def make_sweep(folder: Path, configs: list[str], task: list[str]) -> Path:
    job = 0
    for config in configs:
        for seed in (0, 1, 2):
            make_run(folder / str(job), config, seed)
            job += 1
    record = {"hydra": {"overrides": {"hydra": ["hydra.mode=MULTIRUN"], "task": task}}}
    (folder / "multirun.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(record)))
    return folder


@pytest.fixture
def study(tmp_path):
    main = make_sweep(tmp_path / "paper", ["iso0", "iso1"], ["experiment=paper_mnist"])
    other = make_sweep(tmp_path / "baselines", ["jac"], ["experiment=baselines_mnist", "seed=0,1,2"])
    return main, other, tmp_path / "docs" / "mnist.md"


def test_study_report_compares_everything_with_the_main_sweeps_beta_zero(study):
    main, other, out = study
    report = write_study([main, other], out)
    text = out.read_text()
    assert text == report.markdown
    headline = text.split("## Headline")[1].split("##")[0]
    line = {name: next(l for l in headline.splitlines() if l.startswith(f"| {name}"))
            for name in ("isometric β=0,", "isometric β=1,", "jacobian weight 0.1")}
    assert "(reference)" in line["isometric β=0,"] and "40.0 ± 10.0" in line["isometric β=0,"]
    # β=1 − β=0 by seed: +1, −1, +2 points -> mean +0.7, interval contains 0, no star
    assert "+0.7 [" in line["isometric β=1,"] and "*" not in line["isometric β=1,"]
    # jacobian − β=0 by seed: +30, +32, +31 -> +31.0, interval excludes 0
    assert "+31.0 [" in line["jacobian weight 0.1"] and line["jacobian weight 0.1"].rstrip(" |").endswith("*")
    said = text.split("## What the numbers say")[1].split("##")[0]
    assert "Higher than the reference beyond seed noise: jacobian weight 0.1" in said
    assert "None is lower" in said
    # the original protocol is compared with FGSM for the isometric model with β > 0 only
    assert "paper_fgsm) minus FGSM, isometric β=1" in said and "+10.0 at ε=0.1" in said
    assert "minus FGSM, isometric β=0," not in said
    # the commands and the figures are there, and the CSV holds which sweep each row came from
    assert "isorobust train -m experiment=paper_mnist" in text
    assert "isorobust train -m experiment=baselines_mnist seed=0,1,2" in text
    assert (out.parent / "mnist_main.png").stat().st_size > 0 and (out.parent / "mnist_other.png").is_file()
    assert set(pd.read_csv(out.with_suffix(".csv"))["sweep"]) == {0, 1}
    # the per-attack tables and their paired differences come after the headline
    assert "## Paired differences to isometric β=0" in text


def test_sweep_command_rebuilds_the_command_line(tmp_path):
    folder = make_sweep(tmp_path / "s", ["iso0"], ["experiment=paper_mnist", "eval.epsilons=[0.1,0.3]"])
    assert sweep_command(folder) == "isorobust train -m experiment=paper_mnist 'eval.epsilons=[0.1,0.3]'"


def test_study_report_refuses_bad_input(study, tmp_path):
    main, other, out = study
    with pytest.raises(IsorobustError, match=".md"):
        write_study([main, other], out.with_suffix(".txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(IsorobustError, match="no complete runs"):
        write_study([main, tmp_path / "empty"], out)
    assert not out.exists()
    proc = run_cli("report", str(main), str(other), cwd=tmp_path)
    assert_one_line_error(proc, "--out")
