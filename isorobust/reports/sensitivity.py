"""`isorobust report --sensitivity REFERENCE QUESTION... --out FILE.md`: does the verdict depend on the settings?

The first sweep is the reference: β = 0 at the reference setting. Every further sweep is one question,
one setting changed (K, the layer, the training length, the architecture, the data). Its β > 0
configurations are compared seed by seed with β = 0 at matched settings:

- the sweep's own β = 0 runs where it has them (its change alters the β = 0 model too: epochs, model,
  data),
- else the reference sweep's β = 0 runs (the change acts only through the term: K, the layer). Their
  resolved configurations must then equal the question's in everything but ``reg`` and the seed, or
  the report refuses: a comparison at unmatched settings is not the one this report claims.

Per question: the headline table (per-sample worst case over the attacks run on every test image,
clean accuracy, paired differences with 95 % t-intervals), a figure of those differences against ε,
and sentences that say which cells are distinguishable from zero.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from isorobust import io
from isorobust.errors import IsorobustError
from isorobust.rundir import WORST_CASE
from isorobust.reports.aggregate import (
    aggregate_clean, config_keys, configuration_labels, paired_differences, summary_markdown,
)
from isorobust.reports.sweep import Report
from isorobust import rundir
from isorobust.config import differing_keys
from isorobust.reports.study import (KEY, SWEEP, headline, load_sweeps, run_intervals, sweep_command, sweep_facts,
                                     wall_time)

# What may differ between a question's runs and the reference's β = 0 besides the result-neutral keys.
UNMATCHED_OK = ("reg", "seed")


def _resolved(root: Path, rows: pd.DataFrame) -> dict[int, dict[str, Any]]:
    """Resolved config of each run of ``rows`` by seed, from its metrics.json."""
    out = {}
    for run, seed in rows[["run", "seed"]].drop_duplicates().itertuples(index=False):
        out.setdefault(int(seed), {})[run] = rundir.read_metrics(root / run).config or {}
    return out


def _check_matched(question: pd.DataFrame, reference: pd.DataFrame, root: Path, name: str) -> None:
    """Refuse when the reference's β = 0 runs were trained or evaluated differently from the question's
    (compared seed by seed: some settings, e.g. an attack's own seed, follow the run's seed)."""
    ours, theirs = _resolved(root, question), _resolved(root, reference)
    for seed, runs in ours.items():
        if seed not in theirs:
            raise IsorobustError(f"{name}: seed {seed} has no β = 0 run in the reference sweep")
        base = next(iter(theirs[seed].values()))
        for run, config in runs.items():
            differing = differing_keys(config, base, ignore=UNMATCHED_OK)
            if differing:
                raise IsorobustError(
                    f"{name}: run {run} differs from the reference sweep's β = 0 runs in {', '.join(differing)} "
                    "(not only in reg): give the sweep its own β = 0 runs")


def protocol(rows: pd.DataFrame) -> str:
    """What was attacked, generated from the rows: each attack's radii and its number of test images."""
    parts = []
    for attack, part in rows[~rows["attack"].str.contains("worst_case|_first")].groupby("attack", sort=False):
        radii = ", ".join(f"{e:g}" for e in sorted(part["epsilon"].unique()))
        counts = sorted(int(n) for n in part["n_samples"].unique())
        parts.append(f"{attack} on {'/'.join(map(str, counts))} test images at ε ∈ {{{radii}}}")
    return "Attacks: " + "; ".join(parts) + "." if parts else ""


def _cells(paired: pd.DataFrame, configs: list[tuple], radii: list[float]) -> list[tuple[tuple, float, pd.Series]]:
    cells = []
    for config in configs:
        for eps in radii:
            part = paired[(paired["attack"] == WORST_CASE) & ((paired["epsilon"] - eps).abs() < 1e-9)]
            for column, value in zip(KEY, config):
                part = part[part[column] == value]
            if not part.empty and part.iloc[0]["n"] >= 2:
                cells.append((config, eps, part.iloc[0]))
    return cells


def _verdict(cells: list[tuple[tuple, float, pd.Series]], labels: dict[tuple, str], title: str) -> str:
    up = [(c, e, d) for c, e, d in cells if d["ci_low"] > 0]
    down = [(c, e, d) for c, e, d in cells if d["ci_high"] < 0]
    n_seeds = int(max(d["n"] for _, _, d in cells)) if cells else 0

    def cite(group: list) -> str:
        return "; ".join(f"{labels[c]} at ε={e:g} ({100 * d['mean']:+.1f} [{100 * d['ci_low']:+.1f}, "
                         f"{100 * d['ci_high']:+.1f}])" for c, e, d in group)

    text = (f"{title}: {len(up)} of {len(cells)} (configuration, ε) differences to β = 0 are above zero and "
            f"{len(down)} below beyond seed noise ({n_seeds} seeds paired, 95 % t-intervals, no multiple-testing "
            "correction)")
    if up:
        text += f". Above: {cite(up)}"
    if down:
        text += f". Below: {cite(down)}"
    return text + "."


def difference_figure(paired: pd.DataFrame, configs: list[tuple], labels: dict[tuple, str], title: str):
    """Paired difference of the worst case to β = 0 against ε, 95 % interval bars, one line per configuration."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    ax.axhline(0.0, color="black", linewidth=0.8)
    worst = paired[paired["attack"] == WORST_CASE]
    radii = sorted(worst["epsilon"].unique())
    width = 0.8 / max(1, len(configs))
    for i, config in enumerate(configs):
        part = worst
        for column, value in zip(KEY, config):
            part = part[part[column] == value]
        part = part.sort_values("epsilon")
        if part.empty:
            continue
        x = [radii.index(e) + (i - (len(configs) - 1) / 2) * width for e in part["epsilon"]]
        mean = 100 * part["mean"].to_numpy()
        low, high = mean - 100 * part["ci_low"].to_numpy(), 100 * part["ci_high"].to_numpy() - mean
        ax.errorbar(x, mean, yerr=[low, high], fmt="o", capsize=3, color=f"C{i % 10}",
                    label=f"{labels[config]} (n={int(part['n'].min())})")
    ax.set_xticks(range(len(radii)), [f"ε={e:g}" for e in radii])
    ax.set_ylabel("worst-case robust accuracy − β=0 (points)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    return fig


def write_sensitivity(sweeps: list[str | Path], out: str | Path) -> Report:
    """The sensitivity report over a reference sweep and one sweep per question, figures beside ``out``."""
    out = Path(out)
    dirs, per_sweep, root, summary = load_sweeps(sweeps, out)
    if len(dirs) < 2:
        raise IsorobustError("--sensitivity needs the reference sweep and at least one question sweep")
    reference_runs = (summary[SWEEP] == 0) & (summary["reg_weight"] == 0)
    if not reference_runs.any():
        raise IsorobustError(f"the first sweep ({dirs[0]}) must hold β = 0 runs: it is the reference")
    from isorobust.reports.figures import save_figure

    overview, sections, files = [], [], []
    helped: list[tuple[str, str, float]] = []  # (question, configuration, ε) above β = 0 beyond noise
    compared = 0
    for i in range(1, len(dirs)):
        name = sweep_command(dirs[i]).split("experiment=")[-1].split()[0] if "experiment=" in sweep_command(dirs[i]) \
            else dirs[i].name
        part = summary[summary[SWEEP] == i]
        own = part["reg_weight"] == 0
        if own.any():
            frame, reference, source = part, own, "its own β = 0 runs"
        else:
            matching = summary[reference_runs & summary["dataset"].isin(part["dataset"].unique())
                               & summary["model"].isin(part["model"].unique())]
            if matching.empty:
                raise IsorobustError(f"{dirs[i]} has no β = 0 runs, and the reference sweep none of its data and model")
            _check_matched(part, matching, root, str(dirs[i]))
            frame = pd.concat([part, matching])
            reference = pd.Series(frame.index.isin(matching.index) & (frame[SWEEP] == 0), index=frame.index)
            frame, reference = frame.reset_index(drop=True), reference.reset_index(drop=True)
            source = "the reference sweep's β = 0 runs (same training; the setting acts through the term only)"
        configs = list(dict.fromkeys(config_keys(part[part["reg_weight"] > 0])))
        clean = aggregate_clean(frame)  # labels name only what varies within the question
        labels = dict(zip(config_keys(clean), configuration_labels(clean[KEY])))
        table, sentences, _ = headline(frame, reference, labels, set(configs))
        paired = paired_differences(frame, reference)
        radii = sorted(float(e) for e in paired.loc[paired["attack"] == WORST_CASE, "epsilon"].unique()) \
            if not paired.empty else []
        cells = _cells(paired, configs, radii) if not paired.empty else []
        verdict = _verdict(cells, labels, f"`{name}`")
        overview.append(verdict)
        helped += [(name, labels[c], e) for c, e, d in cells if d["ci_low"] > 0]
        compared += len(cells)
        image = out.with_name(f"{out.stem}_{name}.png")
        if not paired.empty:
            files.append(save_figure(difference_figure(paired, configs, labels, name), image))
        facts = sweep_facts(per_sweep[i])
        sections += [f"## `{name}`", "", "```", sweep_command(dirs[i]), "```", "",
                     f"`{dirs[i]}`: {facts['runs']} complete runs, {wall_time(facts)} "
                     f"({facts['job_minutes']:.1f} min of job time), torch threads per job {facts['threads']}. "
                     f"{protocol(part)} Compared with {source}.", "",
                     verdict, "", *table, "", *[f"- {s}" for s in sentences], ""]
        if image in files:
            sections += [f"![{name}]({image.name})", ""]

    ref_facts = sweep_facts(per_sweep[0])
    intervals = [i for g in per_sweep for r in g if r.complete
                 for i in run_intervals(r.path, rundir.read_metrics(r.path))]
    total = rundir.working_seconds(intervals) / 60 if intervals else float("nan")
    lines = [f"# {out.stem}: sensitivity report", "",
             f"Generated by `isorobust report --sensitivity {' '.join(str(d) for d in dirs)} --out {out}` "
             "from the runs below; every number is a mean over the seeds of real runs, nothing is typed in by hand.",
             "", "## Verdict per question (generated)", "", *[f"- {v}" for v in overview], "",
             ("**No setting in which the isometric term raises worst-case robust accuracy above β = 0 beyond seed "
              f"noise** ({compared} comparisons over {len(dirs) - 1} questions)." if not helped else
              "**Settings in which the isometric term raises worst-case robust accuracy above β = 0 beyond seed "
              "noise:** " + "; ".join(f"`{q}` {c} at ε={e:g}" for q, c, e in helped) + "."), "",
             "## The reference", "", "```", sweep_command(dirs[0]), "```", "",
             f"`{dirs[0]}`: {ref_facts['runs']} complete runs, {wall_time(ref_facts)}, "
             f"{ref_facts['device']} on {ref_facts['machine']}, torch {ref_facts['torch']}. {protocol(summary[summary[SWEEP] == 0])} "
             f"All sweeps, from the first job's start to the last job's end, less any stretch in which none ran: "
             f"{total:.1f} min of wall time (some ran side by side).", "",
             *sections]
    body = summary_markdown(summary.drop(columns=[SWEEP]), [r for g in per_sweep for r in g], root, None)
    lines += ["## Every table", "", *body.splitlines()[1:]]
    files.append(io.write_csv(out.with_suffix(".csv"), summary))
    files.append(io.write_text(out, "\n".join(lines) + "\n"))
    return Report(root, [r for g in per_sweep for r in g], "\n".join(lines) + "\n", files)


__all__ = ["write_sensitivity", "difference_figure"]
