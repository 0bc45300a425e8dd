"""Load run directories and aggregate their robustness tables over seeds (pure functions, no plotting)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from isorobust import rundir
from isorobust.config import result_neutral
from isorobust.errors import IsorobustError
from isorobust.reports.tables import MISSING, markdown, row_cell, stat_cell, t_half_width
from isorobust.rundir import RunDir

# The columns of robustness.csv that say which configuration a row belongs to (besides the seed).
CONFIG_COLUMNS = ["dataset", "model", "reg", "reg_weight", "reg_scale", "eval_samples"]
EVAL_SAMPLES = "eval_samples"  # a run's evaluation set size (its largest n_samples: a trimmed attack has fewer)
# Overrides that are already a column above or the seed itself do not make two runs different
# configurations; nor do the result-neutral keys (config.RESULT_NEUTRAL).
IDENTITY_KEYS = {"seed", "reg", "reg.weight", "reg.scale", "dataset", "model", "eval.n_samples", "eval.batch_size"}
SETTING = "setting"  # the remaining overrides of a run, e.g. "trainer.epochs=2"
CONFIGURATION = [*CONFIG_COLUMNS, SETTING]  # what makes two runs the same configuration (seeds aside)
LEVEL = rundir.LEVEL
ISOMETRY_FIGURES = ("scale", "pearson", "spearman", "distortion")
TEST_CLEAN = "test_clean_accuracy"  # metrics.json's clean accuracy on the whole test split
CERTIFIED_PREFIX = "certified_"  # certified rows in the summary: attack certified_<method>, value in robust_accuracy


def config_key(row: Any) -> tuple:
    """A configuration's identity: its CONFIGURATION columns of one row of any aggregate frame."""
    return tuple(row[c] for c in CONFIGURATION)


def config_keys(frame: pd.DataFrame) -> list[tuple]:
    """``config_key`` of every row, in order."""
    return [config_key(r) for _, r in frame.iterrows()]


def split_override(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def setting_of(overrides: list[str]) -> str:
    """The overrides that make a configuration differ from another beyond CONFIG_COLUMNS and the seed."""
    def counts(key: str) -> bool:
        return key not in IDENTITY_KEYS and not result_neutral(key)

    return " ".join(sorted(o for o in overrides if counts(split_override(o)[0])))


def load_run(run: Path, root: Path) -> pd.DataFrame:
    """The rows of one complete run's robustness.csv, with its path, test-split accuracy and overrides."""
    wanted = [c for c in CONFIG_COLUMNS if c != EVAL_SAMPLES]
    table = rundir.read_robustness(run, (*wanted, "n_samples", "seed", "attack", "epsilon", "robust_accuracy"))
    metrics = rundir.read_metrics(run)
    overrides = rundir.read_overrides(run)
    relative = run.relative_to(root).as_posix() if run != root else "."
    eval_samples = int(table["n_samples"].max())  # of the attacks; certification has its own n_samples
    table = with_certified(run, table)
    table.insert(0, "run", relative)
    table[TEST_CLEAN] = float(metrics.clean_accuracy) if metrics.clean_accuracy is not None else float("nan")
    table[EVAL_SAMPLES] = eval_samples
    table[SETTING] = setting_of(overrides)
    for override in overrides:
        key, value = split_override(override)
        table[f"override.{key}"] = value
    return table


def certified_rows(certified: pd.DataFrame, table: pd.DataFrame, attack: str | None = None) -> pd.DataFrame:
    """certified.csv's rows as rows of ``table`` (a robustness table): the certified accuracy as
    ``robust_accuracy``, the method (or ``attack``) as the attack, L∞; on a hierarchical table the finest
    level's, whose classifier was certified."""
    rows = certified.rename(columns={"certified_accuracy": "robust_accuracy"})
    rows["attack"] = attack if attack is not None else CERTIFIED_PREFIX + rows["method"].map(rundir.method_name)
    rows["norm"] = "linf"
    if LEVEL in table.columns:
        rows[LEVEL] = table[LEVEL].max()
    return rows[[c for c in table.columns if c in rows.columns]]


def with_certified(run: Path, table: pd.DataFrame) -> pd.DataFrame:
    """robustness.csv's rows plus, for each certification of the run (``rundir.certifications``), one row
    per ε with attack ``certified_<method>`` and the certified accuracy as ``robust_accuracy``: every
    statistic over seeds and every paired difference then covers the lower bounds as it covers the attacks.
    Where a certification attacked its own images first, that upper bound joins too (``with_same_image_upper``)."""
    found = rundir.certifications(run)
    if not found:
        return table
    tables = [c.table() for c in found]
    return pd.concat([with_same_image_upper(table, tables), *(certified_rows(t, table) for t in tables)],
                     ignore_index=True)


def with_same_image_upper(table: pd.DataFrame, certified: list[pd.DataFrame]) -> pd.DataFrame:
    """``table`` (robustness rows) with the certifications' ``attack_upper_bound`` as ``worst_case_first<N>``
    rows: the worst case over the attacks on the N images certified, at the radii certified, so that a bracket
    can be read on the same images. One row per (N, ε), the lowest of the certifications' and of a row the
    table already has there (which it replaces); none where the run's own attacks covered exactly those N
    images at that ε (its ``worst_case`` is that bound)."""
    column = rundir.ATTACK_UPPER_BOUND
    parts = [t.dropna(subset=[column]) for t in certified if column in t.columns]
    parts = [p for p in parts if not p.empty]
    if not parts:
        return table
    bounds = pd.concat(parts, ignore_index=True)
    bounds = bounds.loc[bounds.groupby(["n_samples", "epsilon"])[column].idxmin()]
    # a hierarchical model's certified classifier is its finest level: only that level's rows bound it
    finest = (table[LEVEL] == table[LEVEL].max()) if LEVEL in table.columns else pd.Series(True, index=table.index)
    worst = table[finest & (table["attack"] == rundir.WORST_CASE)]
    rows = []
    for _, bound in bounds.iterrows():
        n, eps = int(bound["n_samples"]), float(bound["epsilon"])
        if (((worst["epsilon"] - eps).abs() <= 1e-12) & (worst["n_samples"] == n)).any():
            continue
        name = f"{rundir.WORST_CASE}_first{n}"
        there = finest & (table["attack"] == name) & ((table["epsilon"] - eps).abs() <= 1e-12)
        value = min([float(bound[column]), *table.loc[there, "robust_accuracy"].astype(float)])
        table, finest = table[~there], finest[~there]
        row = certified_rows(bound.to_frame().T.infer_objects(), table, attack=name)
        row["robust_accuracy"] = value
        rows.append(row)
    return pd.concat([table, *rows], ignore_index=True)


def certify_summary(run: Path) -> dict[str, Any] | None:
    """The summary of the run's leading certification (the median radius lives here)."""
    found = rundir.certifications(run)
    return found[0].summary if found else None


def certify_provenance(summary: pd.DataFrame, root: Path) -> tuple[int, int, float | None]:
    """(runs certified in training, runs certified afterwards, mean seconds of a certification) over the
    runs of ``summary`` that have a certification."""
    during = after = 0
    seconds = []
    for run in summary["run"].unique():
        found = rundir.certifications(root / run)
        if not found:
            continue
        during, after = (during + 1, after) if found[0].during_training else (during, after + 1)
        if found[0].seconds is not None:
            seconds.append(found[0].seconds)
    return during, after, (sum(seconds) / len(seconds) if seconds else None)


def radius_frame(summary: pd.DataFrame, root: Path) -> pd.DataFrame:
    """One row per certified run with its median certified radius in ``robust_accuracy`` (attack
    ``certified_<method>``, ε = the radius cap), so that aggregate_robustness and paired_differences give
    it the statistics over seeds the accuracies get. Empty where no run has radii."""
    rows = []
    for run, table in summary.groupby("run", sort=False):
        info = certify_summary(root / run)
        if not info or info.get("median_radius") is None:
            continue
        first = table.iloc[0]
        rows.append({"run": run, **{c: first[c] for c in (*CONFIG_COLUMNS, SETTING, "seed") if c in table.columns},
                     "attack": CERTIFIED_PREFIX + rundir.method_name(info["method"]), "norm": "linf",
                     "n_samples": int(info["n_samples"]), "epsilon": float(info["radius_max"]),
                     "robust_accuracy": float(info["median_radius"])})
    return pd.DataFrame(rows)


def summary_frame(runs: list[RunDir], root: Path) -> pd.DataFrame:
    """Every row of every complete run's robustness.csv (long format), plus each run's overrides as columns."""
    frames = [load_run(r.path, root) for r in runs if r.complete]
    if not frames:
        raise IsorobustError(f"no complete runs below {root}")
    frame = pd.concat(frames, ignore_index=True)
    first = ["run", *[c for c in frame.columns if c not in ("run", SETTING) and not c.startswith("override.")]]
    overrides = sorted(c for c in frame.columns if c.startswith("override."))
    frame[SETTING] = frame[SETTING].fillna("")
    return frame[[*first, SETTING, *overrides]]


def _mean_std_n(frame: pd.DataFrame, keys: list[str], value: str) -> pd.DataFrame:
    grouped = frame.groupby(keys, sort=True, dropna=False)
    out = grouped[value].agg(mean="mean", std="std", n="count").reset_index()
    out["seeds"] = grouped["seed"].agg(lambda s: " ".join(str(v) for v in sorted(s))).to_numpy()
    return out


def aggregate_robustness(summary: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample std (ddof=1; NaN for one run) and n of robust accuracy per configuration, attack and ε."""
    keys = [*CONFIG_COLUMNS, SETTING, "attack", "norm", "n_samples", LEVEL, "epsilon"]
    keys = [k for k in keys if k in summary.columns]
    return _mean_std_n(summary, keys, "robust_accuracy")


def paired_differences(summary: pd.DataFrame, reference: pd.Series | None = None) -> pd.DataFrame:
    """Robust accuracy minus that of the β=0 configuration with the same seed (and every other setting
    equal), per configuration, attack, level and ε: mean, sample std, n and a 95 % t-interval.

    ``reference``: a boolean mask of the rows every other configuration is compared with instead
    (e.g. β=0 of a study's main sweep, for baselines whose settings differ from it).
    Pairing by seed removes what the seeds share (initialisation, data order) from the comparison.
    """
    keys = [k for k in ("dataset", "model", "n_samples", *([SETTING] if reference is None else []),
                        "attack", "norm", LEVEL, "epsilon") if k in summary.columns]
    value = ["seed", "robust_accuracy"]
    if reference is None:
        reference = summary["reg_weight"] == 0
    base = summary[reference].drop_duplicates([*keys, "seed"])[[*keys, *value]]
    others = summary[~reference]
    if base.empty or others.empty:
        return pd.DataFrame()
    merged = others.merge(base, on=[*keys, "seed"], suffixes=("", "_baseline"), how="inner")
    merged["difference"] = merged["robust_accuracy"] - merged["robust_accuracy_baseline"]
    group = [k for k in (*CONFIG_COLUMNS, SETTING, "attack", "norm", LEVEL, "epsilon") if k in merged.columns]
    out = merged.groupby(group, sort=True, dropna=False)["difference"].agg(mean="mean", std="std", n="count")
    out = out.reset_index()
    half = [t_half_width(sd, int(n)) for sd, n in zip(out["std"], out["n"])]
    out["ci_low"] = out["mean"] - half
    out["ci_high"] = out["mean"] + half
    return out


def isometry_frame(summary: pd.DataFrame, root: Path) -> pd.DataFrame:
    """One row per (run, hidden layer): the run's configuration and its pooled isometry figures
    (``metrics.json["isometry"]["layers"]``, written by every `isorobust train`)."""
    rows = []
    for run, table in summary.groupby("run", sort=False):
        metrics = rundir.read_metrics(root / run)
        base = table.iloc[0][[c for c in (*CONFIG_COLUMNS, SETTING, "seed") if c in table.columns]].to_dict()
        for entry in (metrics.isometry or {}).get("layers", []):
            rows.append({"run": run, **base, "layer": entry["layer"],
                         **{f: entry.get(f) for f in ISOMETRY_FIGURES}})
    return pd.DataFrame(rows)


def attack_cost_frame(summary: pd.DataFrame, root: Path) -> pd.DataFrame:
    """One row per (run, attack, ε, level) with what the attack cost there (``metrics.json["attack_cost"]``,
    recorded since version 3 of the record; empty for older runs)."""
    rows = []
    for run in summary["run"].unique():
        for cost in rundir.read_metrics(root / run).attack_cost:
            rows.append({"run": run, **cost})
    return pd.DataFrame(rows)


def attack_cost_sums(costs: pd.DataFrame) -> pd.DataFrame:
    """Per attack and ε, summed over runs: seconds, samples attacked, sample-forwards, and throughput."""
    sums = costs.groupby(["attack", "epsilon"], sort=False)[["seconds", "samples", "sample_forwards"]].sum()
    sums = sums.reset_index()
    sums["sample_forwards_per_s"] = sums["sample_forwards"] / sums["seconds"].where(sums["seconds"] > 0)
    return sums


def attack_cost_markdown(costs: pd.DataFrame) -> list[str]:
    """The sweep's attack cost: per attack, seconds and sample-forwards per run (all radii) and throughput."""
    if costs.empty:
        return []
    per_run = costs.groupby(["attack", "run"], sort=False)[["seconds", "sample_forwards"]].sum().reset_index()
    rows = []
    for attack, part in per_run.groupby("attack", sort=False):
        seconds, forwards = part["seconds"], part["sample_forwards"]
        rate = forwards.sum() / seconds.sum() if seconds.sum() > 0 else float("nan")
        rows.append([str(attack), stat_cell(seconds.mean(), seconds.std(), len(part), scale=1.0, digits=1),
                     f"{forwards.mean():.4g}", f"{rate:.4g}"])
    return ["", "## Attack cost (per run, all radii together; mean ± std over runs)", "",
            "Sample-forwards: the rows of every forward pass an attack made (per sample, one per iteration of a "
            "gradient attack, one per query of Square); per attack and ε summed over runs in attack_cost.csv.", "",
            *markdown(["attack", "seconds per run", "sample-forwards per run", "sample-forwards/s"], rows, left=1)]


def aggregate_isometry(isometry: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample std and n over seeds of each isometry figure, per configuration and layer."""
    keys = [*CONFIG_COLUMNS, SETTING, "layer"]
    parts = []
    for figure in ISOMETRY_FIGURES:
        part = _mean_std_n(isometry, keys, figure)
        part.insert(len(keys), "figure", figure)
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def aggregate_clean(summary: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample std and n of the clean test accuracy (metrics.json) per configuration, one value per run."""
    per_run = summary.drop_duplicates("run")
    return _mean_std_n(per_run, [*CONFIG_COLUMNS, SETTING], TEST_CLEAN)


def common_overrides(configs: pd.DataFrame) -> list[str]:
    """The setting overrides every configuration shares (said once, not in every label)."""
    settings = [set(str(s).split()) for s in configs[SETTING]] if SETTING in configs else []
    return sorted(set.intersection(*settings)) if settings else []


def configuration_labels(configs: pd.DataFrame) -> list[str]:
    """A short name per configuration row: β always, other columns only where configurations differ."""
    def varies(column: str) -> bool:
        return column in configs and configs[column].astype(str).nunique() > 1

    common = set(common_overrides(configs))

    labels = []
    for _, row in configs.iterrows():
        isometric = "isometric" in str(row["reg"])
        weight = f"β={row['reg_weight']:g}" if isometric else f"weight {row['reg_weight']:g}"
        parts = ["no regularizer" if row["reg"] == "none" else weight]
        if (varies("reg") or not isometric) and row["reg"] != "none":
            parts[0] = f"{row['reg']} {parts[0]}"
        if varies("reg_scale") and isometric:
            parts.append(f"K={row['reg_scale']:g}")
        parts += [f"{c}={row[c]}" for c in ("dataset", "model", EVAL_SAMPLES) if varies(c)]
        parts += [o for o in str(row.get(SETTING, "")).split() if o not in common]
        labels.append(", ".join(parts))
    # `experiment=...` names the sweep, not the method: left out where the labels stay distinct.
    short = [", ".join(p for p in label.split(", ") if not p.startswith("experiment=")) for label in labels]
    return short if len(set(short)) == len(set(labels)) else labels


def summary_markdown(summary: pd.DataFrame, runs: list[RunDir], root: Path,
                     isometry: pd.DataFrame | None = None, reference: pd.Series | None = None) -> str:
    """The sweep as terminal-readable markdown: clean accuracy, ε × configuration per attack (and level),
    and, given ``aggregate_isometry``'s frame, the isometry figures per layer. ``reference``: the rows
    the paired differences compare with (default: β=0 of each setting)."""
    robust, clean = aggregate_robustness(summary), aggregate_clean(summary)
    configs = clean[[*CONFIG_COLUMNS, SETTING]]
    labels = configuration_labels(configs)
    key = config_key
    label_of = {key(row): label for (_, row), label in zip(configs.iterrows(), labels)}
    complete = [r for r in runs if r.complete]
    incomplete = [r for r in runs if not r.complete]
    lines = [
        f"# Sweep summary: {root}",
        "",
        f"Dataset {', '.join(map(str, summary['dataset'].unique()))}, model {', '.join(map(str, summary['model'].unique()))}; "
        f"{len(complete)} complete run(s), {len(incomplete)} incomplete (ignored).",
        "Accuracy in %: mean ± sample std (ddof=1) over seeds [95 % Student-t interval of the mean] (n = number of runs).",
        *([f"Overrides shared by all runs: {' '.join(common_overrides(configs))}"] if common_overrides(configs) else []),
        "",
        "## Clean accuracy (whole test split)",
        "",
    ]
    rows = [[label_of[key(r)], stat_cell(r["mean"], r["std"], r["n"], interval=1), r["seeds"]] for _, r in clean.iterrows()]
    lines += markdown(["configuration", "clean accuracy", "seeds"], rows, left=1)
    has_level = rundir.has_levels(robust)
    sections = robust[["attack", LEVEL]].drop_duplicates() if has_level else robust[["attack"]].drop_duplicates()
    for _, section in sections.iterrows():
        attack = section["attack"]
        part = robust[robust["attack"] == attack]
        level = ""
        if has_level:
            part = part[part[LEVEL] == section[LEVEL]] if pd.notna(section[LEVEL]) else part[part[LEVEL].isna()]
            level = f", level {int(section[LEVEL])}" if pd.notna(section[LEVEL]) else ""
        norm = part["norm"].iloc[0] if "norm" in part else ""
        n_samples = ", ".join(str(n) for n in sorted(part["n_samples"].unique()))
        columns = [c for c in label_of if c in {key(r) for _, r in part.iterrows()}]
        rows = []
        for eps, at_eps in part.groupby("epsilon", sort=True):
            cells = {key(r): stat_cell(r["mean"], r["std"], r["n"], interval=1) for _, r in at_eps.iterrows()}
            rows.append([f"{eps:.4g}", *(cells.get(c, MISSING) for c in columns)])
        what = ("certified accuracy (a lower bound)" if str(attack).startswith(CERTIFIED_PREFIX)
                else "robust accuracy")
        lines += ["", f"## {attack} ({norm}{level}): {what} on {n_samples} test samples", ""]
        lines += markdown(["ε", *(label_of[c] for c in columns)], rows)
    radii = radius_frame(summary, root)
    if not radii.empty:
        lines += ["", "## Median certified radius (L∞, input units; 0 for images not certified at all)", ""]
        per_method = aggregate_robustness(radii)
        columns = [c for c in label_of if c in {key(r) for _, r in per_method.iterrows()}]
        rows = []
        for method, part in per_method.groupby("attack", sort=True):
            cells = {key(r): stat_cell(r["mean"], r["std"], r["n"], scale=1.0, digits=4, interval=4) for _, r in part.iterrows()}
            rows.append([str(method), *(cells.get(c, MISSING) for c in columns)])
        lines += markdown(["method", *(label_of[c] for c in columns)], rows)
    paired = paired_differences(summary, reference)
    against = "β=0"
    if reference is not None and reference.any():
        against = label_of.get(key(summary[reference].iloc[0]), "the reference")
    if not paired.empty:
        lines += ["", f"## Paired differences to {against} (same seed), robust accuracy in points", "",
                  "mean difference [95 % t-interval over seeds]; a * marks an interval that excludes 0."]
        distinguishable = []
        sections = paired[["attack", LEVEL]].drop_duplicates() if LEVEL in paired else paired[["attack"]].drop_duplicates()
        for _, section in sections.iterrows():
            part = paired[paired["attack"] == section["attack"]]
            title = section["attack"]
            if LEVEL in paired and pd.notna(section.get(LEVEL)):
                part = part[part[LEVEL] == section[LEVEL]]
                title += f", level {int(section[LEVEL])}"
            columns = [c for c in label_of if c in {key(r) for _, r in part.iterrows()}]
            rows = []
            for eps, at_eps in part.groupby("epsilon", sort=True):
                cells = {}
                for _, r in at_eps.iterrows():
                    if r["n"] > 1 and (r["ci_low"] > 0 or r["ci_high"] < 0):
                        distinguishable.append(f"{label_of[key(r)]} {title} ε={eps:.3g}: {100 * r['mean']:+.2f}")
                    cells[key(r)] = row_cell(r, spread=False, interval=True, count=False, signed=True, star=True)
                rows.append([f"{eps:.4g}", *(cells.get(c, MISSING) for c in columns)])
            lines += ["", f"### {title}", ""]
            lines += markdown(["ε", *(label_of[c] for c in columns)], rows)
        cells = len(paired)
        if distinguishable:
            lines += ["", f"In words: {len(distinguishable)} of {cells} (configuration, attack, ε) cells differ from "
                          f"{against} by more than the seeds explain (95 % interval excludes 0): " + "; ".join(distinguishable)
                      + ". Everywhere else the difference is not distinguishable from zero with these seeds."]
        else:
            lines += ["", f"In words: none of the {cells} (configuration, attack, ε) differences to {against} is "
                          "distinguishable from zero with these seeds (every 95 % interval contains 0)."]
        lines += [f"These are {cells} separate comparisons without a multiple-testing correction: about "
                  f"{0.05 * cells:.1f} of them would exclude 0 by chance alone even if nothing changed."]
    if isometry is not None and not isometry.empty:
        lines += ["", "## Isometry of the hidden layers (test split, pooled over classes)", "",
                  "K̂: best-fit scale (d_z ≈ d_x/K̂); Pearson: correlation of input and representation distances "
                  "within classes; distortion: 95th − 5th percentile of d_z·K̂/d_x (0 = exact scaled isometry)."]
        for figure, title in (("scale", "K̂"), ("pearson", "Pearson r"), ("distortion", "distortion")):
            part = isometry[isometry["figure"] == figure]
            columns = [c for c in label_of if c in {key(r) for _, r in part.iterrows()}]
            rows = []
            for layer, at_layer in part.groupby("layer", sort=True):
                cells = {key(r): stat_cell(r["mean"], r["std"], r["n"], scale=1.0, digits=3) for _, r in at_layer.iterrows()}
                rows.append([str(layer), *(cells.get(c, MISSING) for c in columns)])
            lines += ["", f"### {title}", ""]
            lines += markdown(["layer", *(label_of[c] for c in columns)], rows)
    lines += attack_cost_markdown(attack_cost_frame(summary, root))
    duplicated = clean[clean["seeds"].str.split().map(lambda s: len(s) != len(set(s)))]
    if not duplicated.empty:
        lines += ["", "Note: some configurations hold several runs with the same seed (merged sweeps?)."]
    if incomplete:
        lines += ["", "## Incomplete runs (ignored)", ""]
        lines += [f"- {r.path.relative_to(root).as_posix() if r.path != root else '.'}: no {', '.join(r.missing)}"
                  for r in incomplete]
    return "\n".join(lines) + "\n"
