"""The jobs on a saved model: ``isorobust attack``, ``check`` and ``certify`` on a run directory."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from isorobust import rundir
from isorobust.attacks.sweep import robustness_table
from isorobust.certification import ATTACK_UPPER_BOUND
from isorobust.checks import CheckSettings
from isorobust.config import resolve_device
from isorobust.errors import ConfigError, IsorobustError
from isorobust.jobs.build import (
    EvalSettings, build_attacks, build_certifier, build_model, environment, model_name, run_meta, validate_all,
)
from isorobust.jobs.common import attack_and_certify, attack_state, certify_split, sanity_checks, write_tables
from isorobust.models import load_model
from isorobust.models.checkpoint import load_weights
from isorobust.sweeps.threads import apply_threads


@dataclass
class SavedRun:
    """The model a command evaluates and the configuration it came with: a finished training run (its
    directory, its saved config, its rebuilt model), or a model trained elsewhere (``path`` None): built
    from ``model._target_``, its weights from ``checkpoint=FILE``, under the train command's defaults for
    the chosen ``dataset``."""

    path: Path | None
    config: DictConfig
    model: Any
    external_source: str = ""
    data: Any = None  # an external model's data set, loaded once to build the model

    def test_data(self, dataset: Any, device: Any) -> Any:
        """The data set the command evaluates on ``device`` (an external model's is already loaded)."""
        return (self.data if self.data is not None else instantiate(dataset)).to(device)

    @classmethod
    def from_command(cls, cfg: DictConfig) -> SavedRun:
        if cfg.get("run") is not None:
            if cfg.get("checkpoint") is not None or cfg.get("dataset") is not None:
                raise ConfigError("give run=<run dir> (its model and data set), or checkpoint=<file> "
                                  "model._target_=<factory> dataset=<name>, not both")
            return cls.load(cfg.run)
        return cls.external(cfg)

    @classmethod
    def load(cls, run: Any) -> SavedRun:
        path = Path(str(run)).expanduser()
        config = rundir.read_config(path)
        return cls(path, config, load_model(path / rundir.MODEL))

    @classmethod
    def external(cls, cfg: DictConfig) -> SavedRun:
        node = cfg.get("model") or {}
        if not node.get("_target_") or cfg.get("checkpoint") is None:
            raise ConfigError("give run=<run dir> (a folder `isorobust train` wrote), or a model trained elsewhere: "
                              "model._target_=<module.factory> checkpoint=<state_dict file> dataset=<name>")
        if cfg.get("dataset") is None:
            raise ConfigError("a model given by model._target_ needs dataset=<name> (mnist, fashion_mnist, "
                              "cifar10, torus): its test split is what is attacked")
        from hydra import compose

        # The train command's defaults (attacks, ε grid, checks, seed) for this model and data set.
        config = compose(config_name="train")
        OmegaConf.set_struct(config, False)  # like a saved run's config, which the jobs merge into
        config.dataset = cfg.dataset
        config.model = {**node, "name": model_name(node)}
        data = instantiate(cfg.dataset)
        model = load_weights(build_model(node, data.input_shape, data.num_classes), Path(str(cfg.checkpoint)))
        return cls(None, config, model.eval(), f"{Path(str(cfg.checkpoint)).resolve()} ({node['_target_']})", data)

    @property
    def source(self) -> str:
        """What was evaluated, for attack.json and certify.json: the run directory, or checkpoint and target."""
        return str(self.path.resolve()) if self.path is not None else self.external_source


def attack(cfg: DictConfig, out_dir: Path) -> pd.DataFrame:
    """The ``isorobust attack`` job: attack the model of a saved run (``run=``) or an external one again."""
    saved = SavedRun.from_command(cfg)
    # Everything left unset (null) on the command line comes from the training run.
    merged = OmegaConf.merge(saved.config, {"eval": {k: v for k, v in cfg.eval.items() if v is not None}})
    if cfg.get("seed") is not None:
        merged.seed = cfg.seed
    if cfg.get("attack"):
        merged.attack = cfg.attack
    merged.device = cfg.device
    # Certification only when this command asks for it (certify=crown): it does not come from the run.
    merged.certify = cfg.get("certify")
    validate_all(merged)
    apply_threads(cfg.get("threads"))
    device = resolve_device(merged.device)
    attacks = build_attacks(merged.attack)
    certifier = build_certifier(merged.certify)
    if certifier is not None:
        certifier.layers(saved.model)
    evaluation = EvalSettings.from_config(merged.eval)
    data = saved.test_data(merged.dataset, device)
    model = saved.model.to(device)
    meta = run_meta(merged)

    state = attack_state(out_dir, merged, model, resume=bool(cfg.get("resume")))
    t0 = time.perf_counter()
    table, certified, _, attack_cost = attack_and_certify(model, data.test, attacks, evaluation, int(merged.seed),
                                                          meta, certifier, state)
    markdown = write_tables(out_dir, table, attacks, certified)
    rundir.write_attack_record(out_dir, {
        "run": saved.source,
        "attacks": list(attacks),
        "epsilons": evaluation.epsilons,
        "seconds": time.perf_counter() - t0,
        "attack_cost": attack_cost,
        **({"certify": certified[0].summary()} if certified else {}),
        "environment": environment(device),
    })
    state.clear()
    print(markdown, flush=True)
    return table


def check(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """The ``isorobust check`` job: the sanity checks of a saved run (on its robustness table), or of an
    external model (on a table this job makes first with the train command's attacks and ε grid), into
    this command's directory."""
    saved = SavedRun.from_command(cfg)
    merged = OmegaConf.merge(saved.config, {"check": cfg.check, "device": cfg.device})
    validate_all(merged)
    apply_threads(cfg.get("threads"))
    device = resolve_device(merged.device)
    data = saved.test_data(merged.dataset, device)
    model = saved.model.to(device)
    attacks = build_attacks(merged.attack)
    if saved.path is None:
        table, _, _, _ = attack_and_certify(model, data.test, attacks, EvalSettings.from_config(merged.eval),
                                         int(merged.seed), run_meta(merged), None)
        rundir.write_table(out_dir, rundir.ROBUSTNESS_CSV, table)
    elif (saved.path / rundir.ROBUSTNESS_CSV).is_file():
        table = rundir.read_robustness(saved.path)
    else:
        raise IsorobustError(f"{saved.path} has no robustness.csv (an unfinished run?)")
    checks = sanity_checks(model, data, table, attacks, CheckSettings.from_config(merged.check),
                           int(merged.eval.batch_size), int(merged.seed), out_dir)
    print(checks["summary"], flush=True)
    return checks


def certify(cfg: DictConfig, out_dir: Path) -> pd.DataFrame:
    """The ``isorobust certify`` job: certified bounds of a saved run's model (or an external one), bracketed by
    an attack on the same images.

    The command's ``attack`` (default apgd) runs first on the images certified, at ``certify.epsilons``: what it
    breaks is certified.csv's upper bound on those images (``attack_upper_bound``), alpha_crown and bab skip it,
    and no certificate may contradict it (``Certifier.run``). Writes certified.csv and certify.json (the summary
    with the median radius) to this command's directory, by default ``<run>/certify/``, where sweep summaries and
    study reports find it for runs trained without ``certify=``.
    """
    saved = SavedRun.from_command(cfg)
    merged = OmegaConf.merge(saved.config, {"device": cfg.device})
    merged.certify = cfg.certify
    merged.attack = cfg.get("attack")  # the command's, not the run's: a bracket at the certified radii
    if cfg.get("seed") is not None:
        merged.seed = cfg.seed
    validate_all(merged)
    apply_threads(cfg.get("threads"))
    device = resolve_device(merged.device)
    certifier = build_certifier(merged.certify)
    if certifier is None:
        raise ConfigError("certify=null: choose certify=crown or certify=ibp")
    certifier.layers(saved.model)
    attacks = build_attacks(merged.attack, required=False)  # attack=null or attack.apgd=null: none
    data = saved.test_data(merged.dataset, device)
    model, meta = saved.model.to(device), run_meta(merged)
    broken: dict[float, Any] | None = None
    bracket: dict[str, Any] = {}
    if attacks:
        broken, t0 = {}, time.perf_counter()
        n = certifier.count(data.test.x.shape[0])
        robustness_table(model, data.test, attacks, certifier.epsilons, n, int(merged.eval.batch_size),
                         int(merged.seed), meta, broken=broken)
        bracket = {"attacks": {name: a.describe() for name, a in attacks.items()},
                   "attack_seconds": time.perf_counter() - t0}
    result, frame = certify_split(certifier, model, data.test, meta, broken)
    rundir.write_certification(out_dir, frame, {**result.summary(), **bracket}, result.seconds, saved.source,
                               environment(device))
    shown = frame[[c for c in ("method", "epsilon", "n_samples", "clean_accuracy", "certified_accuracy",
                               ATTACK_UPPER_BOUND) if c in frame.columns]]
    print(shown.to_string(index=False) + f"\nmedian certified radius: {result.median_radius}", flush=True)
    return frame
