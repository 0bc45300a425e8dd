"""What the jobs share: the attack sweep with its certification, the run's tables and the checks."""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from isorobust import io, rundir
from isorobust.attacks.progress import ProgressFolder, fingerprint
from isorobust.attacks.sweep import robustness_by_level
from isorobust.certification import CERTIFIED, Certifier, CertifyResult, bracket_note
from isorobust.checks import CheckSettings, checks_frame, run_checks, summary_text
from isorobust.jobs.build import EvalSettings
from isorobust.reports.aggregate import certified_rows
from isorobust.reports.run import markdown_by_level
from isorobust.sweeps.resume import result_config

log = logging.getLogger(__name__)


def attack_state(out_dir: Path, cfg: Any, model: Any, resume: bool) -> ProgressFolder:
    """Where a job's attacks keep their state after every ε (``attacks.progress``), under a digest of the
    result-relevant config and the weights; a job that does not resume starts from a clean folder."""
    state = ProgressFolder(Path(out_dir) / rundir.ATTACK_PROGRESS, fingerprint(result_config(cfg), model))
    if not resume:
        state.clear()
    return state


def attack_and_certify(model: Any, test: Any, attacks: Mapping[str, Any], evaluation: EvalSettings, seed: int,
                       meta: Mapping[str, Any], certifier: Certifier | None,
                       attack_state: ProgressFolder | None = None,
                       ) -> tuple[pd.DataFrame, tuple[CertifyResult, pd.DataFrame] | None, float, list[dict]]:
    """The robustness table (per level for hierarchical models), the certification of the same model
    (skipping, for alpha_crown and bab, what the attacks broke), the attack seconds and what each attack
    cost per ε (``attacks.base.AttackCost``). ``attack_state``: where the attacks keep their progress
    (``attacks.progress``); the attack seconds then count this attempt only, the costs every radius."""
    t0 = time.perf_counter()
    broken: dict[float, Any] = {}  # per radius, what the attacks broke (certification skips it)
    costs: list[dict] = []
    table = robustness_by_level(model, test, attacks, evaluation.epsilons, evaluation.n_samples,
                                evaluation.batch_size, seed, meta, broken=broken, costs=costs,
                                attack_state=attack_state)
    attack_s = time.perf_counter() - t0
    certified = certify_split(certifier, model, test, meta, broken) if certifier is not None else None
    return table, certified, attack_s, costs


def certify_split(certifier: Certifier, model: Any, test: Any, meta: Mapping[str, Any],
                  broken: Mapping[float, Any] | None = None) -> tuple[CertifyResult, pd.DataFrame]:
    """Certified accuracy of ``model`` on the test split and certified.csv's rows; ``broken``: what the
    run's attacks broke per radius (alpha_crown and bab skip it)."""
    result = certifier.run(model, test.x, test.y, broken)
    log.info("certified (%s): %s; median radius %s", result.method,
             " ".join(f"{a:.4f}" for a in result.certified_accuracy()), result.median_radius)
    return result, result.table(dict(meta))


def write_tables(out: Path, table: pd.DataFrame, attacks: Mapping[str, Any],
                 certified: tuple[CertifyResult, pd.DataFrame] | None = None) -> str:
    """robustness.csv/.md; with a certification, its rows become robustness.md's ``certified`` column
    (robustness.csv keeps attack rows only) and its table certified.csv."""
    shown = table
    if certified is not None:
        result, frame = certified
        shown = pd.concat([table, certified_rows(frame, table, attack=CERTIFIED)], ignore_index=True)
        rundir.write_table(out, rundir.CERTIFIED_CSV, frame)
    markdown = markdown_by_level(shown, attacks)  # one table per level for hierarchical models
    if certified is not None:
        markdown += certified[0].note() + "\n" + bracket_note(table, certified[1])
    rundir.write_robustness(out, table, markdown)
    from isorobust.plots.robustness import run_figure  # matplotlib: imported when a run has a table to draw

    first = table.iloc[0]
    title = (f"{first['dataset']}, {first['model']}, {first['reg']}"
             + (f" β={first['reg_weight']:g}" if first["reg"] != "none" else "") + f", seed {first['seed']}")
    png = run_figure(table, certified[1] if certified is not None else None, title)
    io.atomic_write(Path(out) / rundir.ROBUSTNESS_PNG, lambda f: f.write(png))
    return markdown


def sanity_checks(model: Any, data: Any, table: pd.DataFrame, attacks: Mapping[str, Any],
                  settings: CheckSettings | None, batch_size: int, seed: int, out: Path) -> dict[str, Any]:
    """Gradient-masking checks (checks.py): writes checks.csv, returns what metrics.json keeps."""
    results = run_checks(model, data, table, attacks, settings, batch_size, seed)
    rundir.write_table(out, rundir.CHECKS_CSV, checks_frame(results))
    return {
        "passed": sum(r.passed for r in results),
        "failed": [r.check for r in results if not r.passed],
        "summary": summary_text(results),
    }
