"""train → evaluate → attack, and re-attack a saved run: the steps behind the CLI commands."""
from __future__ import annotations

import dataclasses
import logging
import platform
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from isorobust import io
from isorobust.config import regularizer_terms, resolve_device, sorted_epsilons, validate
from isorobust.errors import ConfigError, IsorobustError
from isorobust.evaluation.apgd import APGD
from isorobust.evaluation.attacks import FGSM, Attack, LinfPGD
from isorobust.evaluation.certify import CERTIFIED, Certifier, CertifyResult, bracket_note
from isorobust.evaluation.checks import attack_checks, checks_frame, summary_text, table_checks, train_surrogate
from isorobust.evaluation.clean import clean_metrics
from isorobust.evaluation.isometry import isometry_options, isometry_report
from isorobust.evaluation.isometry_regions import isometry_map_report, region_extras, run_title
from isorobust.losses import resolve_layers
from isorobust.hierarchy.evaluation import (
    check_hierarchy_config, hierarchy_metrics, markdown_by_level, robustness_by_level,
)
from isorobust.sweeps.resume import completed_metrics, run_record
from isorobust.sweeps.threads import apply_threads
from isorobust.tracking import log_finished_run, open_tracker
from isorobust.training.standard import isometric_monitor

log = logging.getLogger(__name__)

RESULT_FILES = ("metrics.json", "robustness.csv", "robustness.md", "isometry.csv", "isometry_boundary.png",
                "isometry_torus.csv", "isometry_torus.png", "checks.csv", "certified.csv")


def build_attacks(attack_cfg: Mapping[str, Any]) -> dict[str, Attack]:
    """The attacks of ``attack``; an entry set to null is dropped (an experiment's way to remove an
    attack its parent selected)."""
    chosen = {name: c for name, c in (attack_cfg or {}).items() if c is not None}
    if not chosen:
        raise ConfigError("no attack selected (use attack=fgsm, attack=pgd or attack=[fgsm,pgd])")
    bare = [name for name, c in chosen.items() if not isinstance(c, Mapping) or "_target_" not in c]
    if bare:
        raise ConfigError(f"attack.{bare[0]} has settings but no attack: add it to the list, e.g. "
                          f"attack=[fgsm,pgd,{bare[0]}], or set attack.{bare[0]}=null")
    return {name: instantiate(c, name=name) for name, c in chosen.items()}


def build_certifier(certify_cfg: Mapping[str, Any] | None) -> Certifier | None:
    """The ``certify`` group (off unless asked: ``certify=crown`` or ``certify=ibp``)."""
    return instantiate(certify_cfg) if certify_cfg else None


def regularizer_configs(reg_cfg: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    """The ``reg`` node as a list: one regularizer (``+reg=isometric``) or several under their own
    keys (``+reg=isometric_jacobian``, or ``+reg@reg.isometric=isometric +reg@reg.jacobian=jacobian``)."""
    if reg_cfg is None:
        return []
    terms = [c for c in regularizer_terms(reg_cfg).values() if "_target_" in c]
    if not terms:
        raise ConfigError("reg holds no regularizer (expected _target_ in reg or in each reg.<name>)")
    return terms


def build_regularizers(reg_cfg: Mapping[str, Any] | None) -> list[Any]:
    return [instantiate(c) for c in regularizer_configs(reg_cfg)]


def run_meta(cfg: DictConfig) -> dict[str, Any]:
    """The run's identity in every table row. With several regularizers, ``reg`` joins their names
    and ``reg_weight``/``reg_scale`` are the isometric term's (β, K) where there is one."""
    terms = regularizer_configs(cfg.get("reg"))
    main = next((t for t in terms if t.get("name") == "isometric"), terms[0] if terms else None)
    return {
        "dataset": cfg.dataset.name,
        "model": cfg.model.name,
        "reg": "+".join(str(t.get("name")) for t in terms) if terms else "none",
        "reg_weight": float(main.weight) if main is not None else 0.0,
        "reg_scale": float(main.get("scale") or 0.0) if main is not None else 0.0,
        "seed": int(cfg.seed),
    }


def write_tables(run_dir: Path, table: pd.DataFrame, attacks: Mapping[str, Attack],
                 certified: tuple[CertifyResult, pd.DataFrame] | None = None) -> str:
    """robustness.csv/.md; with a certification, its rows become robustness.md's ``certified`` column
    (robustness.csv keeps attack rows only) and its table certified.csv."""
    shown = table
    if certified is not None:
        result, frame = certified
        rows = frame.rename(columns={"method": "attack", "certified_accuracy": "robust_accuracy"})
        rows = rows.assign(attack=CERTIFIED, norm="linf")
        if "level" in table.columns:  # hierarchical: the certified classifier is the finest level's
            rows["level"] = table["level"].max()
        shown = pd.concat([table, rows[[c for c in rows.columns if c in table.columns]]], ignore_index=True)
        io.write_csv(run_dir / "certified.csv", frame)
    markdown = markdown_by_level(shown, attacks)  # one table per level for hierarchical models
    if certified is not None:
        markdown += certified[0].note() + "\n" + bracket_note(table, certified[1])
    io.write_csv(run_dir / "robustness.csv", table)
    io.write_text(run_dir / "robustness.md", markdown)
    return markdown


def certify_split(certifier: Certifier, model: Any, test: Any, meta: Mapping[str, Any],
                  broken: Mapping[float, Any] | None = None) -> tuple[CertifyResult, pd.DataFrame]:
    """Certified accuracy of ``model`` on the test split (``certify`` group) and certified.csv's rows;
    ``broken``: what this run's attacks broke per radius (alpha_crown and bab skip it)."""
    result = certifier.run(model, test.x, test.y, broken)
    log.info("certified (%s): %s; median radius %s", result.method,
             " ".join(f"{a:.4f}" for a in result.certified_accuracy()), result.median_radius)
    return result, result.table(dict(meta))


def train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """The ``isorobust train`` job: returns the metrics it writes to ``metrics.json``."""
    validate(cfg)
    check_hierarchy_config(cfg)
    tracker = open_tracker(cfg)  # logger=...: a missing package or an unusable store stops here, before training
    if cfg.get("resume") and (done := completed_metrics(cfg, run_dir)) is not None:
        print((run_dir / "robustness.md").read_text(), flush=True)
        log_finished_run(tracker, run_dir)  # not yet logged (or a failed attempt): logged now
        return done
    apply_threads(cfg.get("threads"))
    t_start = time.perf_counter()
    # Results of an earlier attempt in this directory would look complete; they go first.
    for name in RESULT_FILES:
        (run_dir / name).unlink(missing_ok=True)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    data = instantiate(cfg.dataset).to(device)
    model = instantiate(cfg.model, input_shape=data.input_shape, num_classes=data.num_classes).to(device)
    regularizers = build_regularizers(cfg.get("reg"))
    for r in regularizers:
        layer = getattr(r, "layer", None)
        if layer is not None:
            try:
                resolve_layers(layer, model.num_hidden)
            except ValueError as exc:
                raise ConfigError(f"the {r.name} regularizer's layer {exc}") from None
    iso_layers, iso_max_per_class = isometry_options(cfg.eval, model.num_hidden)
    attacks = build_attacks(cfg.attack)
    certifier = build_certifier(cfg.get("certify"))
    if certifier is not None:
        certifier.layers(model)  # a model it cannot bound stops here, before training
    epsilons = sorted_epsilons(cfg.eval.epsilons)
    trainer = instantiate(cfg.trainer)
    log.info("data %s: %d train / %d test on %s", data.name, len(data.train), len(data.test), device)

    t0 = time.perf_counter()
    history = trainer.fit(model, data, regularizers, seed=cfg.seed, run_dir=run_dir)
    train_s = time.perf_counter() - t0
    io.save_torch(run_dir / "model.pt", io.model_checkpoint(model))

    t0 = time.perf_counter()
    monitor_scale, monitor_layer = isometric_monitor(regularizers)
    test = clean_metrics(model, data.test, trainer.batch_size, monitor_scale, monitor_layer)
    isometry = isometry_report(model, data, run_dir, iso_layers, iso_max_per_class,
                               region_extras(data))  # writes isometry.csv (+ the torus' near/far rows)
    if getattr(data, "test_angles", None) is not None:  # the torus: the (u, v) map of the local distortion
        meta = run_meta(cfg)
        title = run_title(meta["reg_weight"], meta["reg_scale"], test["accuracy"], "isometric" in meta["reg"])
        isometry_map_report(model, data, run_dir, iso_layers, title)
    eval_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    broken: dict[float, Any] = {}  # per radius, what the attacks broke (certification skips it)
    table = robustness_by_level(  # = robustness_table, per level for hierarchical models
        model, data.test, attacks, epsilons, cfg.eval.n_samples, cfg.eval.batch_size, cfg.seed, run_meta(cfg),
        broken=broken,
    )
    attack_s = time.perf_counter() - t0
    certified = certify_split(certifier, model, data.test, run_meta(cfg), broken) if certifier is not None else None
    markdown = write_tables(run_dir, table, attacks, certified)
    t0 = time.perf_counter()
    checks = sanity_checks(cfg, model, data, table, attacks, run_dir)
    checks_s = time.perf_counter() - t0

    metrics = {
        **run_meta(cfg),
        "clean_accuracy": test["accuracy"],
        "test_cross_entropy": test["cross_entropy"],
        "test_isometric_loss": test["isometric_loss"],
        "isometric_loss_scale": monitor_scale,
        "isometric_loss_layer": monitor_layer,
        "train_cross_entropy": history[-1]["train_cross_entropy"],
        "train_isometric_loss": history[-1]["train_isometric_loss"],
        **{k: v for k, v in history[-1].items() if k.startswith("train_") and k.endswith("_loss")},
        "regularizers": [{"name": r.name, "weight": float(r.weight)} for r in regularizers],
        "n_train": len(data.train),
        "n_test": len(data.test),
        "history": history,
        "isometry": isometry,
        "checks": checks,
        **hierarchy_metrics(model, data.test, cfg.eval.batch_size),  # empty unless hierarchical
        **({"certify": certified[0].summary()} if certified else {}),  # the median radius lives here
        "seconds": {
            "train": train_s, "evaluate": eval_s, "attack": attack_s, "checks": checks_s,
            **({"certify": certified[0].seconds} if certified else {}),
            "total": time.perf_counter() - t_start,
        },
        "environment": environment(device),
        **run_record(cfg),  # config (resolved) and overrides; resume=true compares against them
    }
    # Written last: a run directory with metrics.json is a complete run.
    io.write_json(run_dir / "metrics.json", metrics)
    print(markdown + "\n" + checks["summary"], flush=True)
    log_finished_run(tracker, run_dir)  # from the files just written; a failure only warns
    return metrics


def load_run(run: Any) -> tuple[Path, DictConfig, Any]:
    """A finished training run: its directory, its saved config and its rebuilt model."""
    run_dir = Path(str(run)).expanduser()
    if not run_dir.is_dir():
        raise IsorobustError(f"run directory {run_dir} not found")
    saved = run_dir / ".hydra" / "config.yaml"
    if not saved.is_file():
        raise IsorobustError(f"{run_dir} is not an isorobust run directory (no .hydra/config.yaml)")
    try:
        run_cfg = OmegaConf.load(saved)
    except Exception as exc:
        raise IsorobustError(f"cannot read {saved}: {str(exc).splitlines()[0]}") from None
    return run_dir, run_cfg, io.load_model(run_dir / "model.pt")


def sanity_checks(cfg: DictConfig, model: Any, data: Any, table: pd.DataFrame, attacks: Mapping[str, Attack],
                  out_dir: Path) -> dict[str, Any]:
    """Gradient-masking checks (evaluation/checks.py): writes checks.csv, prints the summary."""
    if "level" in table.columns:  # hierarchical: the finest level is the model's own classifier
        table = table[table["level"] == table["level"].max()]
    results = table_checks(table)
    settings = cfg.get("check")
    # The extra attacks need image-shaped inputs (Square works on pixels).
    if settings is not None and settings.enabled and data.test.x.dim() == 4:
        x, y = data.test.x[: settings.n_samples], data.test.y[: settings.n_samples]
        pgd = next((a for a in attacks.values() if isinstance(a, LinfPGD)), LinfPGD())
        surrogate = train_surrogate(data, data.num_classes, settings.surrogate_epochs, seed=int(cfg.seed) + 1000)
        # The default pair must come close to APGD-CE + APGD-T (the run's own settings if it ran apgd).
        reference = next((a for a in attacks.values() if isinstance(a, APGD)), None)
        reference = dataclasses.replace(reference, epsilons=None, n_samples=None) if reference else APGD()
        if data.num_classes < 4:  # the targeted DLR loss needs 4 classes
            reference = dataclasses.replace(reference, n_target_classes=0)
        results += attack_checks(model, x, y, settings.epsilons, pgd, FGSM(), instantiate(settings.gradient_free),
                                 surrogate, int(cfg.eval.batch_size), int(cfg.seed), reference=reference)
    io.write_csv(out_dir / "checks.csv", checks_frame(results))
    return {
        "passed": sum(r.passed for r in results),
        "failed": [r.check for r in results if not r.passed],
        "summary": summary_text(results),
    }


def check(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """The ``isorobust check`` job: the sanity checks of a saved run, into this command's directory."""
    run_dir, run_cfg, model = load_run(cfg.run)
    table_path = run_dir / "robustness.csv"
    if not table_path.is_file():
        raise IsorobustError(f"{run_dir} has no robustness.csv (an unfinished run?)")
    merged = OmegaConf.merge(run_cfg, {"check": cfg.check, "device": cfg.device})
    validate(merged)
    device = resolve_device(merged.device)
    data = instantiate(merged.dataset).to(device)
    checks = sanity_checks(merged, model.to(device), data, pd.read_csv(table_path), build_attacks(merged.attack),
                           out_dir)
    print(checks["summary"], flush=True)
    return checks


def attack(cfg: DictConfig, out_dir: Path) -> pd.DataFrame:
    """The ``isorobust attack`` job: re-attack the model saved in ``cfg.run``."""
    run_dir, run_cfg, model = load_run(cfg.run)

    # Everything left unset (null) on the command line comes from the training run.
    merged = OmegaConf.merge(run_cfg, {"eval": {k: v for k, v in cfg.eval.items() if v is not None}})
    if cfg.get("seed") is not None:
        merged.seed = cfg.seed
    if cfg.get("attack"):
        merged.attack = cfg.attack
    merged.device = cfg.device
    # Certification only when this command asks for it (certify=crown): it does not come from the run.
    merged.certify = cfg.get("certify")
    validate(merged)
    device = resolve_device(merged.device)
    attacks = build_attacks(merged.attack)
    certifier = build_certifier(merged.certify)
    if certifier is not None:
        certifier.layers(model)
    data = instantiate(merged.dataset).to(device)
    model = model.to(device)

    t0 = time.perf_counter()
    broken: dict[float, Any] = {}  # per radius, what the attacks broke (certification skips it)
    table = robustness_by_level(  # = robustness_table, per level for hierarchical models
        model, data.test, attacks, sorted_epsilons(merged.eval.epsilons), merged.eval.n_samples,
        merged.eval.batch_size, merged.seed, run_meta(merged), broken=broken,
    )
    certified = certify_split(certifier, model, data.test, run_meta(merged), broken) if certifier is not None else None
    markdown = write_tables(out_dir, table, attacks, certified)
    io.write_json(out_dir / "attack.json", {
        "run": str(run_dir.resolve()),
        "attacks": list(attacks),
        "epsilons": sorted_epsilons(merged.eval.epsilons),
        "seconds": time.perf_counter() - t0,
        **({"certify": certified[0].summary()} if certified else {}),
        "environment": environment(device),
    })
    print(markdown, flush=True)
    return table


def certify(cfg: DictConfig, out_dir: Path) -> pd.DataFrame:
    """The ``isorobust certify`` job: certified bounds of the model saved in ``cfg.run``, nothing else.

    Writes certified.csv and certify.json (the summary with the median radius) to this command's directory,
    by default ``<run>/certify/``, where sweep summaries and study reports find it for runs trained without
    ``certify=``.
    """
    run_dir, run_cfg, model = load_run(cfg.run)
    merged = OmegaConf.merge(run_cfg, {"device": cfg.device})
    merged.certify = cfg.certify
    validate(merged)
    apply_threads(cfg.get("threads"))
    device = resolve_device(merged.device)
    certifier = build_certifier(merged.certify)
    if certifier is None:
        raise ConfigError("certify=null: choose certify=crown or certify=ibp")
    certifier.layers(model)
    data = instantiate(merged.dataset).to(device)
    result, frame = certify_split(certifier, model.to(device), data.test, run_meta(merged))
    io.write_csv(out_dir / "certified.csv", frame)
    io.write_json(out_dir / "certify.json", {
        "run": str(run_dir.resolve()),
        "certify": result.summary(),
        "seconds": result.seconds,
        "environment": environment(device),
    })
    shown = frame[["method", "epsilon", "n_samples", "clean_accuracy", "certified_accuracy"]]
    print(shown.to_string(index=False) + f"\nmedian certified radius: {result.median_radius}", flush=True)
    return frame


def environment(device: torch.device) -> dict[str, Any]:
    return {
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
