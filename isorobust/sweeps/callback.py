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

from isorobust.errors import IsorobustError

log = logging.getLogger(__name__)


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from isorobust.sweeps.report import write_report

        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            report = write_report(sweep_dir)
        except IsorobustError as exc:
            log.warning("no sweep summary: %s", exc)
            return
        print(report.markdown, flush=True)
        log.info("sweep summary: %s", ", ".join(str(p) for p in report.files))
