"""Hydra callback: when `isorobust train -m` ends, write the sweep summary into the sweep directory.

Runs in the launching process after every job has returned, whichever launcher ran them
(basic, joblib, submitit/Slurm). Configured under ``hydra.callbacks`` in configs/train.yaml.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from isorobust.errors import Abort, IsorobustError

log = logging.getLogger(__name__)


class SweepSummary(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # logger=...: a missing package or an unusable store stops the sweep before its first job, and
        # the sweep's MLflow experiment is created here, once, not by several jobs at the same time.
        if config.get("logger") is not None:
            from isorobust.tracking import prepare_sweep

            try:
                prepare_sweep(config)
            except IsorobustError as exc:
                raise Abort(exc) from None  # Hydra turns an Exception here into a traceback

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from isorobust.reports.sweep import write_report

        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            report = write_report(sweep_dir)
        except IsorobustError as exc:
            log.warning("no sweep summary: %s", exc)
            return
        print(report.markdown, flush=True)
        log.info("sweep summary: %s", ", ".join(str(p) for p in report.files))
        if config.get("logger") is not None:  # after the summary: the tracker logs its files and figure
            from isorobust.tracking import log_finished_sweep

            log_finished_sweep(config, sweep_dir)
        from isorobust.rundir import results_line

        print(results_line(sweep_dir), flush=True)
