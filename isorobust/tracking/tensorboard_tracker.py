"""``logger=tensorboard`` (pip install 'isorobust[tensorboard]'): a run's scalars as TensorBoard event files
in its run directory, so that ``tensorboard --logdir outputs/`` shows every run (and each sweep's figure).

Robust accuracy is a step series per attack, ``robust_curve/<attack>``, with step = ε in thousandths
(``round(1000·ε)``: 0.1 -> 100, 1 -> 1000), so TensorBoard draws robust accuracy vs ε for each run.
"""
from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from isorobust import rundir
from isorobust.tracking import RunInfo, missing_package, read_run, run_scalars

log = logging.getLogger(__name__)

EVENTS = "events.out.tfevents.*"


@contextlib.contextmanager
def _event_writer(folder: Path) -> Iterator[Any]:
    """A SummaryWriter whose event file replaces the folder's earlier ones only once it is complete:
    it is written in a hidden temporary folder beside them and moved in after ``close``. The events are
    derived from the run's files, so replacing them loses nothing and logging twice does not double them."""
    from torch.utils.tensorboard import SummaryWriter

    tmp = Path(tempfile.mkdtemp(prefix=".tensorboard.", dir=folder))
    try:
        writer = SummaryWriter(log_dir=str(tmp))
        try:
            yield writer
        finally:
            writer.close()
        for old in folder.glob(EVENTS):
            old.unlink()
        for new in tmp.glob(EVENTS):
            new.replace(folder / new.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class TensorBoardTracker:
    label = "logger=tensorboard"

    def __init__(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (needs the tensorboard package)
        except ImportError:
            raise missing_package(self.label, "tensorboard", "tensorboard") from None

    def open(self, info: RunInfo) -> None:
        """Nothing to check: the events go into the run directory, which the run itself writes."""

    def log_run(self, run_dir: Path, info: RunInfo) -> None:
        metrics, table = read_run(run_dir)
        end = rundir.finished_at(run_dir)
        start = end - float((metrics.get("seconds") or {}).get("total") or 0.0)
        with _event_writer(run_dir) as writer:
            for s in run_scalars(metrics, table, per_epsilon=False):
                writer.add_scalar(s.key, s.value, s.step, walltime=start + s.seconds)
            # TensorBoard's text tab renders markdown: the run's table, and its config as a code block.
            if (run_dir / "robustness.md").is_file():
                writer.add_text("robustness", (run_dir / "robustness.md").read_text(), 0, walltime=end)
            config = yaml.safe_dump(metrics.get("config") or {}, sort_keys=False)
            writer.add_text("config", "```\n" + config + "```", 0, walltime=end)
            overrides = " ".join(metrics.get("overrides") or []) or "(none)"
            writer.add_text("overrides", "`" + overrides + "`", 0, walltime=end)
        log.info("%s: wrote the events of %s", self.label, run_dir)

    def log_sweep(self, sweep_dir: Path, info: RunInfo) -> None:
        """The sweep's figure (robustness.png) as an image, summary.md as text, Optuna's best value."""
        figure, summary = sweep_dir / "robustness.png", sweep_dir / "summary.md"
        results = sweep_dir / "optimization_results.yaml"
        with _event_writer(sweep_dir) as writer:
            if figure.is_file():
                import matplotlib.image

                pixels = matplotlib.image.imread(str(figure))[..., :3]  # RGBA floats in [0, 1]
                writer.add_image("sweep/robustness", pixels, 0, dataformats="HWC")
            if summary.is_file():
                writer.add_text("sweep/summary", summary.read_text(), 0)
            if results.is_file():
                best = yaml.safe_load(results.read_text()) or {}
                if isinstance(best.get("best_value"), (int, float)):
                    writer.add_scalar("objective/best", float(best["best_value"]), 0)
                    writer.add_text("objective/best_params", "`" + json.dumps(best.get("best_params")) + "`", 0)
        log.info("%s: wrote the sweep's events in %s", self.label, sweep_dir)
