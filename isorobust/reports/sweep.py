"""`isorobust report DIR` and the end of every sweep: summary.csv, summary.md, robustness.png/.pdf in DIR."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from isorobust import io
from isorobust.errors import IsorobustError
from isorobust.reports.aggregate import (
    aggregate_isometry, attack_cost_frame, attack_cost_sums, isometry_frame, summary_frame, summary_markdown,
)
from isorobust.reports.objective import STUDY_FILE, study_report
from isorobust.rundir import RunDir, find_runs, finest_level

ATTACK_COST_FILE = "attack_cost.csv"  # per attack and ε, summed over the runs that recorded their cost
REPORT_FILES = ("summary.csv", "summary.md", "robustness.png", "robustness.pdf", "isometry_summary.csv")


@dataclass
class Report:
    root: Path
    runs: list[RunDir]
    markdown: str
    files: list[Path]

    @property
    def incomplete(self) -> list[RunDir]:
        return [r for r in self.runs if not r.complete]


def write_report(root: str | Path) -> Report:
    """Aggregate every complete run below ``root`` into REPORT_FILES (in ``root``); nothing is written on error."""
    root = Path(root)
    if not root.exists():
        raise IsorobustError(f"{root} not found")
    if not root.is_dir():
        raise IsorobustError(f"{root} is a file; give the folder that holds the run directories")
    runs = find_runs(root)
    if not runs:
        raise IsorobustError(f"no run directories below {root} (a run holds metrics.json and robustness.csv)")
    if not any(r.complete for r in runs):
        raise IsorobustError(f"no complete runs below {root} ({len(runs)} incomplete: no metrics.json/robustness.csv yet)")
    summary = summary_frame(runs, root)
    per_run_isometry = isometry_frame(summary, root)
    isometry = aggregate_isometry(per_run_isometry) if not per_run_isometry.empty else None
    markdown = summary_markdown(summary, runs, root, isometry)
    study = study_report(root, summary)  # an Optuna sweep (optimization_results.yaml): its trials, the best
    if study is not None:
        markdown += study.markdown
    from isorobust.reports.figures import robustness_figure, save_figure  # matplotlib: only when plotting

    # Hierarchical runs: the figure shows the finest level (the network's classifier); summary.md has all.
    figure = robustness_figure(finest_level(summary))
    files = [
        io.write_csv(root / "summary.csv", summary),
        io.write_text(root / "summary.md", markdown),
        save_figure(figure, root / "robustness.png"),
        save_figure(figure, root / "robustness.pdf"),
        io.write_csv(root / "isometry_summary.csv", per_run_isometry),
    ]
    if study is not None:
        files.append(io.write_csv(root / STUDY_FILE, study.frame))
    costs = attack_cost_frame(summary, root)
    if not costs.empty:  # runs recorded since version 3 of metrics.json
        files.append(io.write_csv(root / ATTACK_COST_FILE, attack_cost_sums(costs)))
    return Report(root, runs, markdown, files)
