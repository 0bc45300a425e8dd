"""`isorobust report DIR` and the end of every sweep: summary.csv, summary.md, robustness.png/.pdf in DIR."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from isorobust import io
from isorobust.errors import IsorobustError
from isorobust.sweeps.aggregate import RunDir, find_runs, summary_frame, summary_markdown

REPORT_FILES = ("summary.csv", "summary.md", "robustness.png", "robustness.pdf")


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
    markdown = summary_markdown(summary, runs, root)
    from isorobust.sweeps.plot import robustness_figure, save_figure  # matplotlib: only when plotting

    figure = robustness_figure(summary)
    files = [
        io.write_csv(root / "summary.csv", summary),
        io.write_text(root / "summary.md", markdown),
        save_figure(figure, root / "robustness.png"),
        save_figure(figure, root / "robustness.pdf"),
    ]
    return Report(root, runs, markdown, files)
