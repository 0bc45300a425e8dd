"""``isorobust train``: train -> evaluate -> attack -> check (-> certify), one run directory."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig


from isorobust import io, rundir
from isorobust.checks import CheckSettings
from isorobust.config import resolve_device
from isorobust.errors import ConfigError
from isorobust.jobs.build import (
    EvalSettings, build_attacks, build_certifier, build_model, build_regularizers, environment, run_meta,
    validate_all,
)
from isorobust.jobs.common import attack_and_certify, attack_state, sanity_checks, write_tables
from isorobust.losses import resolve_layers
from isorobust.models import model_checkpoint
from isorobust.metrics.clean import clean_metrics
from isorobust.metrics.hierarchy import hierarchy_metrics
from isorobust.metrics.isometry import run_isometry
from isorobust.metrics.regions import isometry_map_table, near_far
from isorobust.sweeps.resume import completed_metrics, hydra_overrides, job_config
from isorobust.sweeps.threads import apply_threads
from isorobust.tracking import log_finished_run, open_tracker
from isorobust.training.standard import isometric_monitor

log = logging.getLogger(__name__)


def train(cfg: DictConfig, run_dir: Path) -> rundir.Metrics:
    """The ``isorobust train`` job: returns the metrics it writes to ``metrics.json``."""
    validate_all(cfg)
    tracker = open_tracker(cfg)  # logger=...: a missing package or an unusable store stops here, before training
    if cfg.get("resume") and (done := completed_metrics(cfg, run_dir)) is not None:
        print((run_dir / rundir.ROBUSTNESS_MD).read_text(), flush=True)
        log_finished_run(tracker, run_dir)  # not yet logged (or a failed attempt): logged now
        return done
    apply_threads(cfg.get("threads"))
    t_start = time.perf_counter()
    # Results of an earlier attempt in this directory would look complete; they go first.
    for name in rundir.RESULT_FILES:
        (run_dir / name).unlink(missing_ok=True)
    device = resolve_device(cfg.device)
    seed = int(cfg.seed)
    meta = run_meta(cfg)
    attacks = build_attacks(cfg.get("attack"))  # a config error before the data are loaded
    import torch

    torch.manual_seed(seed)
    data = instantiate(cfg.dataset).to(device)
    model = build_model(cfg.model, data.input_shape, data.num_classes).to(device)
    regularizers = build_regularizers(cfg.get("reg"))
    for r in regularizers:
        layer = getattr(r, "layer", None)
        if layer is not None:
            try:
                resolve_layers(layer, model.num_hidden)
            except ValueError as exc:
                raise ConfigError(f"the {r.name} regularizer's layer {exc}") from None
    evaluation = EvalSettings.from_config(cfg.eval)
    evaluation.check_layers(model.num_hidden)
    certifier = build_certifier(cfg.get("certify"))
    if certifier is not None:
        certifier.layers(model)  # a model it cannot bound stops here, before training
    check_settings = CheckSettings.from_config(cfg.get("check"))
    trainer = instantiate(cfg.trainer)
    log.info("data %s: %d train / %d test on %s", data.name, len(data.train), len(data.test), device)

    t0 = time.perf_counter()
    history = trainer.fit(model, data, regularizers, seed=seed, run_dir=run_dir)
    train_s = time.perf_counter() - t0
    io.save_torch(run_dir / rundir.MODEL, model_checkpoint(model))

    t0 = time.perf_counter()
    monitor_scale, monitor_layer = isometric_monitor(regularizers)
    test = clean_metrics(model, data.test, trainer.batch_size, monitor_scale, monitor_layer)
    isometry = write_isometry(model, data, run_dir, evaluation, meta, test["accuracy"])
    eval_s = time.perf_counter() - t0

    # Each attack's state after every ε: an interrupted attempt's attacks go on from there with resume=true.
    state = attack_state(run_dir, cfg, model, resume=bool(cfg.get("resume") or cfg.trainer.get("resume")))
    table, certified, attack_s, attack_cost = attack_and_certify(model, data.test, attacks, evaluation, seed, meta,
                                                                 certifier, state)
    markdown = write_tables(run_dir, table, attacks, certified)
    t0 = time.perf_counter()
    checks = sanity_checks(model, data, table, attacks, check_settings, evaluation.batch_size, seed, run_dir)
    checks_s = time.perf_counter() - t0

    last = history[-1]
    metrics = rundir.Metrics(
        **meta,
        clean_accuracy=test["accuracy"],
        test_cross_entropy=test["cross_entropy"],
        test_isometric_loss=test["isometric_loss"],
        isometric_loss_scale=monitor_scale,
        isometric_loss_layer=monitor_layer,
        train_cross_entropy=last["train_cross_entropy"],
        train_isometric_loss=last["train_isometric_loss"],
        extra={k: v for k, v in last.items() if k.startswith("train_") and k.endswith("_loss")
               and k not in ("train_cross_entropy", "train_isometric_loss")},
        regularizers=[{"name": r.name, "weight": float(r.weight)} for r in regularizers],
        n_train=len(data.train),
        n_test=len(data.test),
        history=history,
        isometry=isometry,
        checks=checks,
        hierarchy=hierarchy_metrics(model, data.test, evaluation.batch_size).get("hierarchy"),  # hierarchical only
        certify=certified[0].summary() if certified else None,  # the median radius lives here
        seconds={
            "train": train_s, "evaluate": eval_s, "attack": attack_s, "checks": checks_s,
            **({"certify": certified[0].seconds} if certified else {}),
            "total": time.perf_counter() - t_start,
        },
        attack_cost=attack_cost,
        environment=environment(device),
        config=job_config(cfg),  # resume=true compares against it
        overrides=hydra_overrides(),
    )
    rundir.write_metrics(run_dir, metrics)  # written last: a run directory with metrics.json is complete
    state.clear()
    print(markdown + "\n" + checks["summary"], flush=True)
    log_finished_run(tracker, run_dir)  # from the files just written; a failure only warns
    return metrics


def write_isometry(model: Any, data: Any, run_dir: Path, evaluation: EvalSettings, meta: dict[str, Any],
                   accuracy: float) -> dict[str, Any]:
    """isometry.csv (plus, where the test points know their distance to a class boundary, the near/far
    rows and isometry_boundary.png; on the torus, isometry_torus.csv/.png); returns metrics.json's part."""
    import pandas as pd

    layers, per_class = evaluation.isometry_layers, evaluation.isometry_max_per_class
    table, summary = run_isometry(model, data.test, layers, per_class)
    tables = [table]
    distance = getattr(data, "test_boundary_distance", None)
    if distance is not None:
        from isorobust.plots.isometry import boundary_plot

        rows, summary["near_far"], plot = near_far(model, data.test, distance, layers, per_class)
        tables.append(rows)
        png = boundary_plot(plot["distance"], plot["ratios"], plot["thresholds"])
        io.atomic_write(run_dir / rundir.BOUNDARY_PNG, lambda f: f.write(png))
    rundir.write_table(run_dir, rundir.ISOMETRY_CSV, pd.concat(tables, ignore_index=True))
    if getattr(data, "test_angles", None) is not None:  # the torus: the (u, v) map of the local distortion
        from isorobust.plots.isometry import map_figure, run_title

        title = run_title(meta["reg_weight"], meta["reg_scale"], accuracy, "isometric" in meta["reg"])
        angles = isometry_map_table(model, data.test, data.test_angles, data.test_boundary_distance, layers)
        rundir.write_table(run_dir, rundir.TORUS_CSV, angles)
        panels = [(t, "") for _, t in angles.groupby("layer", sort=True)]
        png = map_figure(panels, suptitle=f"{title}\nlocal distortion of each hidden layer on the torus' (u, v) "
                                          "square (white: isometric); black lines: class boundaries")
        io.atomic_write(run_dir / rundir.TORUS_PNG, lambda f: f.write(png))
    return summary
