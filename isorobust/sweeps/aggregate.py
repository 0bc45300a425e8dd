"""Load run directories and aggregate their robustness tables over seeds (pure functions, no plotting)."""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from isorobust.errors import IsorobustError

# metrics.json is written last by `isorobust train`; with robustness.csv beside it the run is complete.
COMPLETE_MARKERS = ("metrics.json", "robustness.csv")
# The columns of robustness.csv that say which configuration a row belongs to (besides the seed).
CONFIG_COLUMNS = ["dataset", "model", "reg", "reg_weight", "reg_scale", "eval_samples"]
EVAL_SAMPLES = "eval_samples"  # a run's evaluation set size (its largest n_samples: a trimmed attack has fewer)
# Overrides that are already a column above, the seed itself, or switches that do not change results:
# none of them makes two runs different configurations.
NOT_A_SETTING = {
    "seed", "reg", "reg.weight", "reg.scale", "dataset", "model", "eval.n_samples", "eval.batch_size",
    "dataset.root", "dataset.download", "device", "threads", "resume", "trainer.resume",
}
# ... nor do whole nodes that say how a run is tracked (logger=mlflow) or ranked (objective.epsilon=0.2).
NOT_A_SETTING_NODES = ("logger", "objective", "certify")
SETTING = "setting"  # the remaining overrides of a run, e.g. "trainer.epochs=2"
LEVEL = "level"  # hierarchical runs: the label level a row's read-out and labels belong to
ISOMETRY_FIGURES = ("scale", "pearson", "spearman", "distortion")
TEST_CLEAN = "test_clean_accuracy"  # metrics.json's clean accuracy on the whole test split
CERTIFIED_FILE = "certified.csv"  # certify=crown|ibp: certified accuracy per ε, beside robustness.csv
CERTIFIED_PREFIX = "certified_"  # its rows in the summary: attack certified_<method>, value in robust_accuracy


@dataclass(frozen=True)
class RunDir:
    path: Path
    missing: tuple[str, ...]  # the COMPLETE_MARKERS it lacks; empty for a complete run

    @property
    def complete(self) -> bool:
        return not self.missing


def _natural_key(path: Path) -> list:
    # Sweep jobs are folders 0, 1, ..., 10: sort them as numbers, not as text.
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.as_posix())]


def _job_name(run: Path) -> str | None:
    hydra_yaml = run / ".hydra" / "hydra.yaml"
    if not hydra_yaml.is_file():
        return None
    try:
        return ((yaml.safe_load(hydra_yaml.read_text()) or {}).get("hydra") or {}).get("job", {}).get("name")
    except (yaml.YAMLError, OSError, AttributeError):
        return None


def is_run_dir(folder: Path) -> bool:
    """A folder `isorobust train` made (or started): results or Hydra's .hydra/ record, not an attack run."""
    if not any((folder / name).exists() for name in (*COMPLETE_MARKERS, ".hydra")):
        return False
    # `isorobust attack` runs also hold .hydra/ and robustness.csv; they are not training runs.
    return not (folder / "attack.json").exists() and _job_name(folder) in (None, "train")


def find_runs(root: Path) -> list[RunDir]:
    """Every run directory at or below ``root``, complete or not, in natural order."""
    runs = []
    for folder, subdirs, _ in os.walk(root):
        # .hydra, .submitit and other hidden folders never hold runs
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        path = Path(folder)
        if is_run_dir(path):
            missing = tuple(name for name in COMPLETE_MARKERS if not (path / name).is_file())
            runs.append(RunDir(path, missing))
    return sorted(runs, key=lambda r: _natural_key(r.path))


def read_overrides(run: Path) -> list[str]:
    """The command-line overrides Hydra recorded for this run (``.hydra/overrides.yaml``), or none."""
    path = run / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise IsorobustError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    return [str(o) for o in loaded or []]


def split_override(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def setting_of(overrides: list[str]) -> str:
    """The overrides that make a configuration differ from another beyond CONFIG_COLUMNS and the seed."""
    def counts(key: str) -> bool:
        return key not in NOT_A_SETTING and key.split(".", 1)[0] not in NOT_A_SETTING_NODES

    return " ".join(sorted(o for o in overrides if counts(split_override(o)[0])))


def load_run(run: Path, root: Path) -> pd.DataFrame:
    """The rows of one complete run's robustness.csv, with its path, test-split accuracy and overrides."""
    try:
        table = pd.read_csv(run / "robustness.csv")
        metrics = json.loads((run / "metrics.json").read_text())
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise IsorobustError(f"cannot read the results in {run}: {str(exc).splitlines()[0]}") from None
    wanted = [c for c in CONFIG_COLUMNS if c != EVAL_SAMPLES]
    missing = [c for c in (*wanted, "n_samples", "seed", "attack", "epsilon", "robust_accuracy") if c not in table]
    if missing:
        raise IsorobustError(f"{run / 'robustness.csv'} lacks the columns {', '.join(missing)}")
    overrides = read_overrides(run)
    relative = run.relative_to(root).as_posix() if run != root else "."
    eval_samples = int(table["n_samples"].max())  # of the attacks; certification has its own n_samples
    table = with_certified(run, table)
    table.insert(0, "run", relative)
    table[TEST_CLEAN] = float(metrics["clean_accuracy"]) if "clean_accuracy" in metrics else float("nan")
    table[EVAL_SAMPLES] = eval_samples
    table[SETTING] = setting_of(overrides)
    for override in overrides:
        key, value = split_override(override)
        table[f"override.{key}"] = value
    return table


def with_certified(run: Path, table: pd.DataFrame) -> pd.DataFrame:
    """robustness.csv's rows plus, where the run certified (certified.csv), one row per ε with attack
    ``certified_<method>`` and the certified accuracy as ``robust_accuracy``: every statistic over
    seeds and every paired difference then covers the lower bounds as it covers the attacks. A run trained
    without ``certify=`` may have been certified afterwards (``isorobust certify run=DIR``): its
    ``certify/certified.csv`` counts then; the run's own table comes first. Certifications by other methods
    made afterwards (``certify_<method>/certified.csv``, e.g. α-CROWN beside CROWN) add their own rows."""
    source = certification_source(run)
    if source is None:
        return table
    frames = [_read_certified(source[0])]
    for path in method_certifications(run):
        if path != source[0]:
            extra = _read_certified(path)
            frames.append(extra[~extra["method"].isin(frames[0]["method"])])  # the primary's method stays its own
    rows = pd.concat(frames, ignore_index=True).rename(columns={"certified_accuracy": "robust_accuracy"})
    # "crown (ibp through conv/max-pool)" is CROWN after an IBP front end: one name per method
    rows["attack"] = CERTIFIED_PREFIX + rows["method"].astype(str).str.split().str[0]
    rows["norm"] = "linf"
    if LEVEL in table.columns:  # hierarchical: the certified classifier is the finest level's
        rows[LEVEL] = table[LEVEL].max()
    return pd.concat([table, rows[[c for c in table.columns if c in rows.columns]]], ignore_index=True)


def _read_certified(path: Path) -> pd.DataFrame:
    try:
        certified = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise IsorobustError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    missing = [c for c in ("method", "epsilon", "n_samples", "certified_accuracy") if c not in certified]
    if missing:
        raise IsorobustError(f"{path} lacks the columns {', '.join(missing)}")
    return certified


def method_certifications(run: Path) -> list[Path]:
    """``certify_<method>/certified.csv`` of a run: certifications by one method each, made afterwards beside
    certify/ (``isorobust certify run=DIR certify=<method> hydra.run.dir=DIR/certify_<method>``). A folder
    whose name is not its table's method (an archived certification, say) is not one."""
    found = []
    for path in sorted(run.glob(f"certify_*/{CERTIFIED_FILE}")):
        method = path.parent.name[len("certify_"):]
        try:
            methods = set(pd.read_csv(path, usecols=["method"])["method"].astype(str).str.split().str[0])
        except (OSError, ValueError, pd.errors.ParserError):
            continue
        if methods == {method}:
            found.append(path)
    return found


def certification_source(run: Path) -> tuple[Path, Path, bool] | None:
    """Which certification of a run the reports use, as (certified.csv, the JSON file holding its summary
    under "certify", certified during training): the run's own table first (metrics.json), else the one
    ``isorobust certify run=DIR`` wrote to certify/ (certify.json), else the first of
    ``method_certifications``; None where there is none."""
    if (run / CERTIFIED_FILE).is_file():
        return run / CERTIFIED_FILE, run / "metrics.json", True
    if (run / "certify" / CERTIFIED_FILE).is_file():
        return run / "certify" / CERTIFIED_FILE, run / "certify" / "certify.json", False
    others = method_certifications(run)
    if others:
        return others[0], others[0].parent / "certify.json", False
    return None


def _certification_record(run: Path) -> tuple[dict[str, Any], bool] | None:
    """(the JSON file of ``certification_source``, certified during training), or None."""
    source = certification_source(run)
    if source is None or not source[1].is_file():
        return None
    try:
        return json.loads(source[1].read_text()), source[2]
    except (OSError, ValueError) as exc:
        raise IsorobustError(f"cannot read {source[1]}: {str(exc).splitlines()[0]}") from None


def certify_summary(run: Path) -> dict[str, Any] | None:
    """The summary of the certification whose table ``with_certified`` reads (the median radius lives here)."""
    record = _certification_record(run)
    return None if record is None else record[0].get("certify")


def certify_provenance(summary: pd.DataFrame, root: Path) -> tuple[int, int, float | None]:
    """(runs certified in training, runs certified afterwards, mean seconds of a certification) over the
    runs of ``summary`` that have a certification."""
    during = after = 0
    seconds = []
    for run in summary["run"].unique():
        source = certification_source(root / run)
        if source is None:
            continue
        during, after = (during + 1, after) if source[2] else (during, after + 1)
        record = _certification_record(root / run)
        if record is not None:  # metrics.json: seconds.certify; certify.json: seconds
            value = record[0].get("seconds")
            seconds.append((value or {}).get("certify") if record[1] else value)
    known = [float(v) for v in seconds if isinstance(v, (int, float))]
    return during, after, (sum(known) / len(known) if known else None)


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
                     "attack": CERTIFIED_PREFIX + str(info["method"]).split()[0], "norm": "linf",
                     "n_samples": int(info["n_samples"]), "epsilon": float(info["radius_max"]),
                     "robust_accuracy": float(info["median_radius"])})
    return pd.DataFrame(rows)


def radius_cell(mean: float, std: float, n: int) -> str:
    """A radius (L∞, input units): mean ± sample std [95 % t-interval of the mean] (n)."""
    if n > 1:
        half = t_quantile(int(n)) * std / math.sqrt(n)
        return f"{mean:.4f} ± {std:.4f} [{mean - half:.4f}, {mean + half:.4f}] ({n})"
    return f"{mean:.4f} ({n})"


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


def t_quantile(n: int, level: float = 0.95) -> float:
    """Two-sided Student-t quantile for a mean of ``n`` values (NaN below 2 values)."""
    if n < 2:
        return float("nan")
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, n - 1))


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
    half = [t_quantile(int(n)) * sd / math.sqrt(n) if n > 1 else float("nan") for sd, n in zip(out["std"], out["n"])]
    out["ci_low"] = out["mean"] - half
    out["ci_high"] = out["mean"] + half
    return out


def isometry_frame(summary: pd.DataFrame, root: Path) -> pd.DataFrame:
    """One row per (run, hidden layer): the run's configuration and its pooled isometry figures
    (``metrics.json["isometry"]["layers"]``, written by every `isorobust train`)."""
    rows = []
    for run, table in summary.groupby("run", sort=False):
        metrics = json.loads((root / run / "metrics.json").read_text())
        base = table.iloc[0][[c for c in (*CONFIG_COLUMNS, SETTING, "seed") if c in table.columns]].to_dict()
        for entry in (metrics.get("isometry") or {}).get("layers", []):
            rows.append({"run": run, **base, "layer": entry["layer"],
                         **{f: entry.get(f) for f in ISOMETRY_FIGURES}})
    return pd.DataFrame(rows)


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


def _cell(mean: float, std: float, n: int) -> str:
    """Percent: mean ± sample std [95 % t-interval of the mean] (n)."""
    if n > 1:
        half = t_quantile(int(n)) * std / math.sqrt(n)
        return f"{100 * mean:.2f} ± {100 * std:.2f} [{100 * (mean - half):.1f}, {100 * (mean + half):.1f}] ({n})"
    return f"{100 * mean:.2f} ({n})"


def _plain_cell(mean: float, std: float, n: int) -> str:
    return f"{mean:.3f} ± {std:.3f} ({n})" if n > 1 else f"{mean:.3f} ({n})"


def _table(header: list[str], rows: list[list[str]], left: int = 0) -> list[str]:
    """A markdown table padded for a terminal; the first ``left`` columns left-aligned, numbers right."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if i < left else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    rule = [":" + "-" * (w + 1) if i < left else "-" * (w + 1) + ":" for i, w in enumerate(widths)]
    return [line(header), "|" + "|".join(rule) + "|", *(line(r) for r in rows)]


def summary_markdown(summary: pd.DataFrame, runs: list[RunDir], root: Path,
                     isometry: pd.DataFrame | None = None, reference: pd.Series | None = None) -> str:
    """The sweep as terminal-readable markdown: clean accuracy, ε × configuration per attack (and level),
    and, given ``aggregate_isometry``'s frame, the isometry figures per layer. ``reference``: the rows
    the paired differences compare with (default: β=0 of each setting)."""
    robust, clean = aggregate_robustness(summary), aggregate_clean(summary)
    configs = clean[[*CONFIG_COLUMNS, SETTING]]
    labels = configuration_labels(configs)
    key = lambda row: tuple(row[c] for c in (*CONFIG_COLUMNS, SETTING))  # noqa: E731
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
    rows = [[label_of[key(r)], _cell(r["mean"], r["std"], r["n"]), r["seeds"]] for _, r in clean.iterrows()]
    lines += _table(["configuration", "clean accuracy", "seeds"], rows, left=1)
    has_level = LEVEL in robust.columns and robust[LEVEL].notna().any()
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
            cells = {key(r): _cell(r["mean"], r["std"], r["n"]) for _, r in at_eps.iterrows()}
            rows.append([f"{eps:.4g}", *(cells.get(c, "–") for c in columns)])
        what = ("certified accuracy (a lower bound)" if str(attack).startswith(CERTIFIED_PREFIX)
                else "robust accuracy")
        lines += ["", f"## {attack} ({norm}{level}): {what} on {n_samples} test samples", ""]
        lines += _table(["ε", *(label_of[c] for c in columns)], rows)
    radii = radius_frame(summary, root)
    if not radii.empty:
        lines += ["", "## Median certified radius (L∞, input units; 0 for images not certified at all)", ""]
        per_method = aggregate_robustness(radii)
        columns = [c for c in label_of if c in {key(r) for _, r in per_method.iterrows()}]
        rows = []
        for method, part in per_method.groupby("attack", sort=True):
            cells = {key(r): radius_cell(r["mean"], r["std"], r["n"]) for _, r in part.iterrows()}
            rows.append([str(method), *(cells.get(c, "–") for c in columns)])
        lines += _table(["method", *(label_of[c] for c in columns)], rows)
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
                    excludes = r["n"] > 1 and (r["ci_low"] > 0 or r["ci_high"] < 0)
                    if excludes:
                        distinguishable.append(f"{label_of[key(r)]} {title} ε={eps:.3g}: {100 * r['mean']:+.2f}")
                    interval = (f" [{100 * r['ci_low']:+.2f}, {100 * r['ci_high']:+.2f}]"
                                if r["n"] > 1 else " (one seed)")
                    cells[key(r)] = f"{100 * r['mean']:+.2f}{interval}{' *' if excludes else ''}"
                rows.append([f"{eps:.4g}", *(cells.get(c, "–") for c in columns)])
            lines += ["", f"### {title}", ""]
            lines += _table(["ε", *(label_of[c] for c in columns)], rows)
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
                cells = {key(r): _plain_cell(r["mean"], r["std"], r["n"]) for _, r in at_layer.iterrows()}
                rows.append([str(layer), *(cells.get(c, "–") for c in columns)])
            lines += ["", f"### {title}", ""]
            lines += _table(["layer", *(label_of[c] for c in columns)], rows)
    duplicated = clean[clean["seeds"].str.split().map(lambda s: len(s) != len(set(s)))]
    if not duplicated.empty:
        lines += ["", "Note: some configurations hold several runs with the same seed (merged sweeps?)."]
    if incomplete:
        lines += ["", "## Incomplete runs (ignored)", ""]
        lines += [f"- {r.path.relative_to(root).as_posix() if r.path != root else '.'}: no {', '.join(r.missing)}"
                  for r in incomplete]
    return "\n".join(lines) + "\n"
