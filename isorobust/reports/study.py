"""`isorobust report SWEEP [SWEEP ...] --out FILE.md`: one report over several sweeps (a study).

The first sweep is the main one (e.g. experiment=paper_mnist); its β=0 configuration is the
reference every other configuration, baselines included, is compared with seed by seed. The
report holds the commands that made the sweeps (from Hydra's multirun.yaml), the machine and
time they took, a headline table at the radii of the strongest evaluation, sentences generated
from the numbers, every per-attack table, and two figures written beside FILE.md.
"""
from __future__ import annotations

import os
import shlex
from pathlib import Path

import pandas as pd
import yaml

from isorobust import io, rundir
from isorobust.errors import IsorobustError
from isorobust.rundir import WORST_CASE, finest_level
from isorobust.reports.aggregate import (
    CERTIFIED_PREFIX, CONFIGURATION, SETTING, aggregate_clean, aggregate_isometry, config_key, config_keys,
    aggregate_robustness, certify_provenance, configuration_labels, isometry_frame, paired_differences,
    radius_frame, summary_frame, summary_markdown,
)
from isorobust.reports.sweep import Report
from isorobust.reports.tables import MISSING, markdown, row_cell
from isorobust.rundir import RunDir, find_runs

SWEEP = "sweep"  # which of the given sweeps a row comes from (0 = the main one)
KEY = CONFIGURATION


def sweep_command(sweep_dir: Path) -> str:
    """The command line that made a sweep, rebuilt from Hydra's record of its overrides."""
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return f"(no multirun.yaml in {sweep_dir}: not made by one `isorobust train -m`)"
    try:
        overrides = (yaml.safe_load(path.read_text()) or {})["hydra"]["overrides"]
    except (yaml.YAMLError, KeyError, TypeError) as exc:
        raise IsorobustError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    hydra = [o for o in overrides.get("hydra") or [] if o != "hydra.mode=MULTIRUN"]
    return "isorobust train -m " + " ".join(shlex.quote(str(o)) for o in [*(overrides.get("task") or []), *hydra])


def run_intervals(run: Path, metrics: rundir.Metrics) -> list[tuple[float, float]]:
    """When a complete run's attempts ran, from its own log: the earlier, stopped ones from their first to
    their last log line, the one that finished from its first line for as long as it recorded
    (``seconds.total``: its silent end, the sanity checks, is in it)."""
    attempts = rundir.log_attempts(run)
    if not attempts:
        return []
    start, end = attempts[-1]
    return [*attempts[:-1], (start, max(end, start + metrics.total_seconds))]


def sweep_facts(runs: list[RunDir]) -> dict[str, object]:
    """Machine, torch, number of runs and wall time: from the first job's start to the last job's end, from
    the jobs' own timed logs, less the stretches in which no job ran (a sweep stopped and resumed later;
    ``rundir.working_seconds``); None where a run kept no log: file times would give the time of a copy.
    Job time: each run's recorded total, plus its earlier, stopped attempts as far as their logs go."""
    complete = [r.path for r in runs if r.complete]
    metrics = [rundir.read_metrics(p) for p in complete]
    timed = [iv for p, m in zip(complete, metrics) if (iv := run_intervals(p, m))]
    env = metrics[0].environment if metrics else {}
    return {
        "runs": len(complete),
        "wall_minutes": rundir.working_seconds([i for a in timed for i in a]) / 60
        if timed and len(timed) == len(complete) else None,
        "timed_runs": len(timed),
        "resumed_runs": sum(len(a) > 1 for a in timed),
        "job_minutes": (sum(m.total_seconds for m in metrics)
                        + sum(b - s for a in timed for s, b in a[:-1])) / 60,
        "machine": env.get("machine", "?"),
        "torch": env.get("torch", "?"),
        "device": env.get("device", "?"),
        "threads": sorted({m.environment.get("threads") for m in metrics} - {None}),
        "attack_minutes": _attack_minutes(metrics),
        "cpus": os.cpu_count(),
    }


def _attack_minutes(metrics: list[rundir.Metrics]) -> dict[str, float]:
    """Minutes each attack took, summed over the runs and radii (runs recorded since metrics version 3)."""
    minutes: dict[str, float] = {}
    for m in metrics:
        for cost in m.attack_cost:
            minutes[cost["attack"]] = minutes.get(cost["attack"], 0.0) + float(cost["seconds"]) / 60
    return minutes


def attack_time(facts: dict[str, object]) -> str:
    """" Attack time summed over runs: fgsm 0.3 min, pgd 12.1 min." where the runs recorded it."""
    minutes = facts.get("attack_minutes") or {}
    if not minutes:
        return ""
    return " Attack time summed over runs: " + ", ".join(f"{a} {m:.1f} min" for a, m in minutes.items()) + "."


def wall_time(facts: dict[str, object]) -> str:
    """"wall time 14.6 min", or why it is not known."""
    if facts["wall_minutes"] is None:
        return f"wall time unknown: {facts['runs'] - facts['timed_runs']} of {facts['runs']} runs kept no timed log"
    resumed = facts.get("resumed_runs") or 0
    return f"wall time {facts['wall_minutes']:.1f} min" + (
        f" ({resumed} runs were stopped and resumed: the time in which no job ran is not counted, nor a stopped "
        "attempt's after its last log line)" if resumed else "")


def _of(frame: pd.DataFrame, config: tuple) -> pd.DataFrame:
    """The rows of one configuration (equal in every KEY column)."""
    mask = pd.Series(True, index=frame.index)
    for column, value in zip(KEY, config):
        mask &= frame[column] == value
    return frame[mask]


def _value(robust: pd.DataFrame, config: tuple, attack: str, eps: float | None) -> pd.Series | None:
    """The aggregate row of one configuration, attack and ε (None: the attack's only ε, e.g. a radius row)."""
    if robust.empty:
        return None
    rows = robust["attack"] == attack
    if eps is not None:
        rows &= (robust["epsilon"] - eps).abs() < 1e-9
    part = _of(robust[rows], config)
    return part.iloc[0] if not part.empty else None


def _pct(row: pd.Series | None, scale: float = 100.0, digits: int = 1) -> str:
    """mean ± std of an aggregate row, in % by default (a radius: scale 1, 4 digits)."""
    return row_cell(row, scale=scale, digits=digits, count=False)


def _diff(row: pd.Series | None, scale: float = 100.0, digits: int = 1) -> str:
    """A paired difference with its 95 % interval and * where it excludes 0, in points by default."""
    if row is None or row["n"] < 2:
        return MISSING
    return row_cell(row, scale=scale, digits=digits, spread=False, interval=True, count=False, signed=True,
                    star=True)


def headline(summary: pd.DataFrame, reference: pd.Series, labels: dict[tuple, str],
             main: set[tuple] | None = None) -> tuple[list[str], list[str], list[str]]:
    """The table a reader looks at first, and sentences generated from it.

    Columns: clean accuracy, then per radius of the strongest attack (AutoAttack; else a trimmed one) the
    per-sample worst case over every attack and its paired difference to the reference. Returns
    the table, per-radius sentences and a conclusion (``main``: the main sweep's configurations).
    """
    robust, clean = aggregate_robustness(summary), aggregate_clean(summary)
    paired = paired_differences(summary, reference)
    names = summary["attack"].astype(str)
    # lower bounds have their own grid; *_first<N> rows restate other attacks (or a certification's) on fewer images
    attacked = ~names.str.startswith(CERTIFIED_PREFIX) & ~names.str.contains("_first")
    strongest = summary[names == "autoattack"]
    trimmed = summary[attacked & (summary["n_samples"] < summary["eval_samples"])]
    radii = (sorted(strongest["epsilon"].unique()) if not strongest.empty
             else sorted(trimmed["epsilon"].unique()) if not trimmed.empty
             else sorted(summary.loc[attacked, "epsilon"].unique())[:4])
    radii = [float(e) for e in radii]
    n_worst = sorted(summary.loc[summary["attack"] == WORST_CASE, "n_samples"].unique())
    configs = config_keys(clean)
    reference_config = config_key(summary[reference].iloc[0]) if reference.any() else None
    rows = []
    for config in configs:
        c = _of(clean, config).iloc[0]
        row = [labels[config], _pct(c, digits=2)]
        for eps in radii:
            row.append(_pct(_value(robust, config, WORST_CASE, eps)))
            row.append("(reference)" if config == reference_config else _diff(_value(paired, config, WORST_CASE, eps)))
        rows.append(row)
    header = ["configuration", "clean"]
    for eps in radii:
        header += [f"worst ε={eps:g}", f"Δ ε={eps:g}"]
    table = [
        f"Robust accuracy (%) under the per-sample worst case over every attack run at that radius "
        f"({', '.join(map(str, n_worst))} test images; see the per-attack tables), mean ± std over seeds; "
        f"Δ = paired difference to {labels.get(reference_config, 'the reference')} (same seed) in points "
        "[95 % t-interval], * where it excludes 0.",
        "",
        *markdown(header, rows, left=1),
    ]

    sentences = []
    compared: list[tuple[tuple, float, pd.Series]] = []  # (configuration, ε, paired difference)
    if reference_config is not None:
        for eps in radii:
            base = _value(robust, reference_config, WORST_CASE, eps)
            better, worse = [], []
            for config in configs:
                d = _value(paired, config, WORST_CASE, eps)
                if d is None or d["n"] < 2:
                    continue
                compared.append((config, eps, d))
                if d["ci_low"] > 0:
                    better.append(f"{labels[config]} ({100 * d['mean']:+.1f})")
                elif d["ci_high"] < 0:
                    worse.append(f"{labels[config]} ({100 * d['mean']:+.1f})")
            text = f"At ε={eps:g} the reference keeps {_pct(base)} % under the worst case. "
            text += ("Higher than the reference beyond seed noise: " + ", ".join(better) + ". ") if better else \
                "No configuration is higher than the reference beyond seed noise. "
            text += ("Lower: " + ", ".join(worse) + ".") if worse else "None is lower beyond seed noise."
            sentences.append(text)
    # The original protocol against FGSM on cross-entropy alone, same models.
    inflation: list[tuple[tuple, float, float]] = []
    for config in configs:
        gaps, gap_values = [], []
        for eps in radii:
            paper, fgsm = _value(robust, config, "paper_fgsm", eps), _value(robust, config, "fgsm", eps)
            if paper is not None and fgsm is not None:
                gaps.append(f"{100 * (paper['mean'] - fgsm['mean']):+.1f} at ε={eps:g}")
                gap_values.append((eps, float(paper["mean"] - fgsm["mean"])))
        if gaps and config[CONFIGURATION.index("reg_weight")] and "isometric" in str(config[CONFIGURATION.index("reg")]):
            sentences.append(f"Original protocol (paper_fgsm) minus FGSM, {labels[config]}: {', '.join(gaps)} points.")
            inflation.extend((config, eps, gap) for eps, gap in gap_values)
    sentences += autoattack_sentences(robust, configs, radii, labels)
    return table, sentences, conclusion(compared, inflation, labels, main or set(configs), reference_config)


def certifiedmarkdown(summary: pd.DataFrame, reference: pd.Series, labels: dict[tuple, str],
                      root: Path | None = None) -> tuple[list[str], list[str]]:
    """Certified accuracy (runs made with certify=crown|ibp, or certified afterwards by ``isorobust
    certify``) per configuration and radius, as the headline shows the attacks: mean ± std over seeds and
    the paired difference to the reference [95 % t-interval]; the median certified radius the same way;
    and a generated sentence on whether any configuration is above the reference beyond seed noise. Returns
    the section's lines and its verdicts on the true robust accuracy (``truth_sentences``, for the study's
    conclusion). Empty where no run certified, so such reports stay as they were."""
    rows_mask = summary["attack"].astype(str).str.startswith(CERTIFIED_PREFIX)
    if not rows_mask.any():
        return [], []
    certified = summary[rows_mask]
    robust, paired = aggregate_robustness(certified), paired_differences(certified, reference[rows_mask])
    radii = radius_frame(summary, root) if root is not None else pd.DataFrame()
    radius_robust = aggregate_robustness(radii) if not radii.empty else pd.DataFrame()
    radius_paired = pd.DataFrame()
    if not radii.empty:
        radius_paired = paired_differences(radii, radii["run"].isin(set(summary.loc[reference, "run"])))
    configs = config_keys(aggregate_clean(summary))
    reference_config = config_key(summary[reference].iloc[0]) if reference.any() else None
    against = labels.get(reference_config, "the reference")
    lines = ["## Certified accuracy (lower bounds)", "",
             "Share of test images proven robust in the whole L∞ ball (IBP, CROWN, α-CROWN or branch and bound; "
             "see docs/certification.md): a lower bound where the attacks give an upper one. Mean ± std over seeds; Δ = paired "
             f"difference to {against} (same seed) in points [95 % t-interval], * where it excludes 0. The "
             "median certified radius is in input units (0 for an image not certified at any radius)."]
    if root is not None:
        during, after, seconds = certify_provenance(summary[rows_mask], root)
        lines[-1] += (f" Certified during training in {during} runs and afterwards by `isorobust certify "
                      f"run=DIR` in {after} (records in each run's certify/ or certify_<method>/ folder)"
                      + (f"; {seconds:.0f} s per run on average." if seconds is not None else "."))
    sentences, verdicts = [], []
    for method in sorted(certified["attack"].unique()):
        part = certified[certified["attack"] == method]
        eps_list = [float(e) for e in sorted(part["epsilon"].unique())]
        has_radius = not radius_robust.empty and (radius_robust["attack"] == method).any()
        up: dict[tuple, list[str]] = {}
        down: dict[tuple, list[str]] = {}
        rows, compared = [], []

        def tally(d: pd.Series | None, what: str) -> None:
            """Count one paired difference (not the reference's own) and name it if it excludes 0."""
            if config == reference_config or d is None or d["n"] < 2:
                return
            compared.append(what)
            if d["ci_low"] > 0 or d["ci_high"] < 0:
                (up if d["ci_low"] > 0 else down).setdefault(config, []).append(what)

        for config in configs:
            cells = []
            for eps in eps_list:
                cells.append(_pct(_value(robust, config, method, eps)))
                d = _value(paired, config, method, eps)
                cells.append("(reference)" if config == reference_config else _diff(d))
                tally(d, f"ε={eps:g} {100 * d['mean']:+.1f}" if d is not None else "")
            if has_radius:
                cells.append(_pct(_value(radius_robust, config, method, None), scale=1.0, digits=4))
                d = _value(radius_paired, config, method, None)
                cells.append("(reference)" if config == reference_config else _diff(d, scale=1.0, digits=4))
                tally(d, f"median radius {d['mean']:+.4f}" if d is not None else "")
            if any(c != MISSING for c in cells[::2]):
                rows.append([labels[config], *cells])
        header = ["configuration"] + [h for eps in eps_list for h in (f"ε={eps:g}", f"Δ ε={eps:g}")]
        header += ["median radius", "Δ median radius"] if has_radius else []
        n = ", ".join(str(v) for v in sorted(part["n_samples"].unique()))
        lines += ["", f"{method} ({n} test images):", "", *markdown(header, rows, left=1)]
        if compared:
            text = (f"{method}: of {len(compared)} paired comparisons with {against} (certified accuracy at each radius"
                    f"{' and the median radius' if has_radius else ''}), ")
            def listed(cells: dict[tuple, list[str]]) -> str:
                return "; ".join(f"{labels[c]}: {', '.join(v)}" for c, v in cells.items())

            n_up, n_down = sum(map(len, up.values())), sum(map(len, down.values()))
            text += (f"{n_up} are above it beyond seed noise ({listed(up)})" if up
                     else "none is above it beyond seed noise")
            text += (f" and {n_down} below ({listed(down)})." if down else ", and none below.")
            text += (" No configuration raises certified accuracy or the certified radius." if not up else "")
            sentences.append(text)
        sentences += verifiability_sentences(summary, reference, paired, method, configs, reference_config,
                                             labels)
        bracket, said, truth = bracketmarkdown(summary, certified, method, configs, labels, reference_config)
        lines += bracket
        sentences += said + truth
        verdicts += truth
    return lines + [""] + [f"In words (generated): {s}" for s in sentences] + ([""] if sentences else []), verdicts


def verifiability_sentences(summary: pd.DataFrame, reference: pd.Series, certified_paired: pd.DataFrame,
                            method: str, configs: list[tuple], reference_config: tuple | None,
                            labels: dict[tuple, str]) -> list[str]:
    """At each radius where both ran: the configurations whose certified accuracy is above the reference's
    beyond seed noise, and whether the worst-case attack accuracy at that radius is too. A lower bound that
    rises while the upper bound stays says the model became easier to prove robust, not harder to attack."""
    attacks = summary["attack"] == WORST_CASE
    attack_paired = paired_differences(summary[attacks], reference[attacks])
    if attack_paired.empty or certified_paired.empty:
        return []
    radii = sorted({float(e) for e in certified_paired.loc[certified_paired["attack"] == method, "epsilon"]}
                   & {float(e) for e in attack_paired["epsilon"]})
    out = []
    for eps in radii:
        higher, also, level, lower = [], [], [], []
        for config in configs:
            cert = _value(certified_paired, config, method, eps)
            if config == reference_config or cert is None or cert["n"] < 2 or cert["ci_low"] <= 0:
                continue
            higher.append(f"{labels[config]} {100 * cert['mean']:+.1f}")
            att = _value(attack_paired, config, WORST_CASE, eps)
            if att is None or att["n"] < 2:
                continue
            cell = f"{labels[config]} {_diff(att)}"
            (also if att["ci_low"] > 0 else lower if att["ci_high"] < 0 else level).append(cell)
        if not higher:
            continue
        text = (f"At ε={eps:g}, {method} certified accuracy is above the reference beyond seed noise for "
                f"{len(higher)} configuration(s) ({', '.join(higher)}). The worst-case attack accuracy at the same "
                f"radius is also above it for {len(also)}{' (' + '; '.join(also) + ')' if also else ''}, not "
                f"distinguishable from it for {len(level)}{' (' + '; '.join(level) + ')' if level else ''}"
                f"{f' and below it for {len(lower)} (' + '; '.join(lower) + ')' if lower else ''}.")
        if level:
            text += (" Where only the lower bound rose, the models became easier to prove robust at this radius; "
                     "the attacks do not find them harder to break.")
        out.append(text)
    return out


SAME, OTHER_IMAGES, OTHER_SEEDS = "", "images", "seeds"  # what an upper bound shares with a lower bound
MARKS = {OTHER_IMAGES: "†", OTHER_SEEDS: "‡"}


def upper_bound_on(attacks: pd.DataFrame, config: tuple, eps: float, low: pd.Series) -> tuple[pd.Series | None, str]:
    """The upper bound a certified aggregate row ``low`` is bracketed by at ``eps``, and what it does not share
    with it (``SAME``: nothing, the same images of the same models): the worst case on its first N images
    (``worst_case_first<N>``, from the run's attacks or the certification's own), else the worst case on the
    whole attacked set (``OTHER_IMAGES`` unless that is N too); ``OTHER_SEEDS`` where the mean is over other
    runs than the lower bound's. ``attacks``: aggregates of the finest level's rows."""
    n = int(low["n_samples"])
    high = _value(attacks, config, f"{WORST_CASE}_first{n}", eps)
    if high is None:
        high = _value(attacks, config, WORST_CASE, eps)
        if high is None or int(high["n_samples"]) != n:
            return high, OTHER_IMAGES
    return high, SAME if high["seeds"] == low["seeds"] else OTHER_SEEDS


def truth_sentences(robust: pd.DataFrame, attacks: pd.DataFrame, method: str, radii: list[float],
                    configs: list[tuple], reference_config: tuple | None, labels: dict[tuple, str]) -> list[str]:
    """Does a configuration raise the *true* robust accuracy over the reference? Only where both brackets are on
    the same images, each of the same models, and do not overlap: its lower bound (``method``) above the
    reference's upper bound (worst-case attack) proves it higher, its upper bound below the reference's lower
    bound proves it lower; else it is undecided."""
    if reference_config is None or not radii:
        return []
    out, skipped = [], {OTHER_IMAGES: set(), OTHER_SEEDS: set(), "n": set()}
    ref_n = None
    for eps in radii:
        ref_low = _value(robust, reference_config, method, eps)
        if ref_low is None:
            continue
        ref_high, ref_why = upper_bound_on(attacks, reference_config, eps, ref_low)
        if ref_high is None:
            continue
        ref_n = int(ref_low["n_samples"])
        if ref_why != SAME:  # nothing to compare with: every configuration is undecided at this ε
            skipped[ref_why] |= {(labels[c], ref_n, int(ref_high["n_samples"])) for c in configs
                                 if _value(robust, c, method, eps) is not None}
            continue
        higher, lower, open_ = [], [], []
        for config in configs:
            low = _value(robust, config, method, eps)
            if config == reference_config or low is None:
                continue
            high, why = upper_bound_on(attacks, config, eps, low)
            if high is None:
                continue
            if why != SAME or int(low["n_samples"]) != ref_n:
                skipped[why or "n"].add((labels[config], int(low["n_samples"]), int(high["n_samples"])))
                continue
            if low["mean"] > ref_high["mean"]:
                higher.append(f"{labels[config]} ({100 * low['mean']:.1f} > {100 * ref_high['mean']:.1f})")
            elif high["mean"] < ref_low["mean"]:
                lower.append(f"{labels[config]} ({100 * high['mean']:.1f} < {100 * ref_low['mean']:.1f})")
            else:
                open_.append(f"{labels[config]} ({100 * low['mean']:.1f}–{100 * high['mean']:.1f} against "
                             f"{100 * ref_low['mean']:.1f}–{100 * ref_high['mean']:.1f})")
        if not (higher or lower or open_):
            continue
        parts = []
        if higher:
            parts.append(f"proved higher than {labels[reference_config]}'s for {len(higher)} "
                         f"(lower bound above its upper bound: {'; '.join(higher)})")
        if lower:
            parts.append(f"proved lower for {len(lower)} ({'; '.join(lower)})")
        if open_:
            parts.append(f"undecided for {len(open_)}, the brackets overlap ({'; '.join(open_)})")
        out.append(f"True robust accuracy at ε={eps:g} on the first {ref_n} test images ({method} lower bounds, "
                   "worst-case attack upper bounds on the same images, means over these seeds' models; a proof "
                   "about these models on these images, not a test across seeds): " + "; ".join(parts) + ".")

    def names(cases: set) -> str:
        return ", ".join(sorted({label for label, _, _ in cases}))

    if skipped[OTHER_IMAGES]:
        certified_n = ", ".join(sorted({str(c) for _, c, _ in skipped[OTHER_IMAGES]}))
        attacked_n = ", ".join(sorted({str(a) for _, _, a in skipped[OTHER_IMAGES]}))
        out.append(f"Whether a configuration raises the true robust accuracy is not decided here by {method} for "
                   f"{names(skipped[OTHER_IMAGES])}: certified on the first {certified_n} test images, attacked on "
                   f"{attacked_n}; a bracket decides only where both sides cover the same images (`isorobust "
                   "certify` attacks the images it certifies first).")
    if skipped[OTHER_SEEDS]:
        out.append(f"Not decided by {method} for {names(skipped[OTHER_SEEDS])} either: the upper bound on the "
                   "certified images exists for only some of the seeds whose lower bound is averaged.")
    if skipped["n"]:
        out.append(f"Not compared with {labels[reference_config]} (certified on the first {ref_n} test images): "
                   f"{names(skipped['n'])}, certified on another number of images.")
    return out


def bracketmarkdown(summary: pd.DataFrame, certified: pd.DataFrame, method: str, configs: list[tuple],
                    labels: dict[tuple, str], reference_config: tuple | None = None,
                    ) -> tuple[list[str], list[str], list[str]]:
    """Where the attacks ran at a radius the method certified too: the truth lies between the certified
    accuracy (lower bound) and the worst-case attack (upper bound), on the same images of the same models where
    the records have it (``upper_bound_on``). One cell per configuration and such radius, ``lower–upper
    (gap)``, means over seeds, † where the upper bound is on other images, ‡ where it is over other seeds (no
    mark where no cell is on the same images: the header says so); a sentence on the gaps; and the verdicts on
    the true robust accuracy (``truth_sentences``)."""
    names = summary["attack"].astype(str)
    # the certified classifier of a hierarchical model is its finest level: only that level's attacks bound it
    attacks = aggregate_robustness(finest_level(summary[(names == WORST_CASE)
                                                        | names.str.startswith(f"{WORST_CASE}_first")]))
    robust = aggregate_robustness(certified[certified["attack"] == method])
    radii = sorted({float(e) for e in robust["epsilon"]} & {float(e) for e in attacks["epsilon"]})
    found = {}  # (config, ε) -> (lower row, upper row, what they do not share)
    for config in configs:
        for eps in radii:
            low = _value(robust, config, method, eps)
            high, why = (None, OTHER_IMAGES) if low is None else upper_bound_on(attacks, config, eps, low)
            if low is not None and high is not None:
                found[(config, eps)] = (low, high, why)
    if not found:
        return [], [], []
    elsewhere = ", ".join(str(n) for n in sorted({int(h["n_samples"]) for _, h, why in found.values()
                                                  if why == OTHER_IMAGES}))
    none_same = all(why == OTHER_IMAGES for _, _, why in found.values())
    rows, gaps = [], {eps: [] for eps in radii}
    for config in configs:
        cells = []
        for eps in radii:
            if (config, eps) not in found:
                cells.append(MISSING)
                continue
            low, high, why = found[(config, eps)]
            gap, mark = 100 * (high["mean"] - low["mean"]), "" if none_same else MARKS.get(why, "")
            gaps[eps].append(f"{labels[config]} {gap:.1f}{mark}")
            cells.append(f"{100 * low['mean']:.1f}–{100 * high['mean']:.1f} ({gap:.1f}){mark}")
        if any(c != MISSING for c in cells):
            rows.append([labels[config], *cells])
    counts = ", ".join(str(n) for n in sorted(robust["n_samples"].unique()))
    whys = {why for _, _, why in found.values()}
    if none_same:
        where = (f"certified on the first {counts} test images, attacked on {elsewhere}: not the same images, so "
                 "the true robust accuracy of neither set need lie in between, and the table decides nothing "
                 "between configurations")
    else:
        where = (f"certified on the first {counts} test images and attacked on the same images, whose true robust "
                 "accuracy lies in between"
                 + (f"; † attacked on {elsewhere} instead, not the same images" if OTHER_IMAGES in whys else "")
                 + ("; ‡ the attacks' mean is over other seeds than the certified one's" if OTHER_SEEDS in whys
                    else ""))
    lines = ["", f"Bracket at the radii both ran: {method} certified accuracy – worst-case attack accuracy "
             f"(gap), in %, means over seeds ({where}).", "",
             *markdown(["configuration", *(f"ε={eps:g}" for eps in radii)], rows, left=1)]
    said = [f"Gap between {method} and the worst-case attack at ε={eps:g}, in points: {', '.join(g)}."
            for eps, g in gaps.items() if g]
    return lines, said, truth_sentences(robust, attacks, method, radii, configs, reference_config, labels)


def autoattack_sentences(robust: pd.DataFrame, configs: list[tuple], radii: list[float],
                         labels: dict[tuple, str]) -> list[str]:
    """AutoAttack minus the APGD pair on the images AutoAttack attacked (``apgd_firstN`` rows): FAB-T
    and Square add what the gradient pair missed, so ≈ 0 says the pair alone is full strength."""
    gaps = []
    for config in configs:
        for eps in radii:
            aa = _value(robust, config, "autoattack", eps)
            pair = None if aa is None else _value(robust, config, f"apgd_first{int(aa['n_samples'])}", eps)
            if pair is not None:
                gaps.append((config, eps, int(aa["n_samples"]), float(aa["mean"] - pair["mean"])))
    if not gaps:
        return []
    worst = min(gaps, key=lambda g: g[3])
    nonzero = [g for g in gaps if abs(g[3]) >= 0.0005]
    text = (f"AutoAttack minus the APGD pair (`apgd`) on the same first {gaps[0][2]} test images, mean over seeds: "
            + ("0.0 points in every configuration at every radius: FAB-T and Square found nothing the pair missed."
               if not nonzero else
               f"non-zero in {len(nonzero)} of {len(gaps)} (configuration, ε) cells, at most "
               f"{100 * worst[3]:+.2f} points ({labels[worst[0]]}, ε={worst[1]:g}): "
               + "; ".join(f"{labels[c]} ε={e:g} {100 * g:+.2f}" for c, e, _, g in nonzero) + "."))
    return [text]


def conclusion(compared: list[tuple[tuple, float, pd.Series]], inflation: list[tuple[tuple, float, float]],
               labels: dict[tuple, str], main: set[tuple], reference: tuple | None) -> list[str]:
    """A few neutral sentences counted from the paired differences (nothing chosen by hand)."""
    if reference is None or not compared:
        return []
    def excludes(d: pd.Series) -> int:
        return 1 if d["ci_low"] > 0 else -1 if d["ci_high"] < 0 else 0

    own = [(c, e, d) for c, e, d in compared if c in main]
    other = [(c, e, d) for c, e, d in compared if c not in main]
    up = [(c, e, d) for c, e, d in own if excludes(d) > 0]
    down = [(c, e, d) for c, e, d in own if excludes(d) < 0]
    text = [f"Main sweep against {labels[reference]}, worst case at the strongest evaluation's radii: "
            f"{len(up)} of {len(own)} (configuration, ε) differences are above zero and {len(down)} below "
            f"beyond seed noise (95 % t-intervals over {int(max(d['n'] for _, _, d in compared))} seeds paired, "
            "no multiple-testing correction)"
            + (": " + "; ".join(f"{labels[c]} ε={e:g} {100 * d['mean']:+.1f}" for c, e, d in up + down) if up + down else "")
            + "."]
    for config in dict.fromkeys(c for c, _, _ in other):
        gains = [(e, d) for c, e, d in other if c == config and excludes(d) > 0]
        if gains:
            text.append(f"{labels[config]}: above the reference at " + ", ".join(
                f"ε={e:g} ({100 * d['mean']:+.1f} [{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}])"
                for e, d in gains) + ".")
        else:
            text.append(f"{labels[config]}: not distinguishable from the reference at any of these radii.")
    if inflation:
        config, eps, gap = max(inflation, key=lambda t: t[2])
        text.append(f"The original protocol (paper_fgsm) reports more robust accuracy than FGSM on the same "
                    f"isometric models, by up to {100 * gap:+.1f} points ({labels[config]}, ε={eps:g}); it "
                    "attacks the training objective of a whole test batch, not the classifier's decision.")
    return text


def isometry_sentence(isometry: pd.DataFrame | None, labels: dict[tuple, str]) -> list[str]:
    if isometry is None or isometry.empty:
        return []
    part = isometry[(isometry["figure"] == "pearson")]
    part = part[part["layer"] == part["layer"].max()]
    cells = [f"{labels[config_key(r)]}: {r['mean']:.2f}" for _, r in part.iterrows() if config_key(r) in labels]
    return [f"Isometry of the last hidden layer (Pearson r of within-class input vs representation distances, "
            f"test split): {'; '.join(cells)}."] if cells else []


def load_sweeps(sweeps: list[str | Path], out: Path) -> tuple[list[Path], list[list[RunDir]], Path, pd.DataFrame]:
    """The sweep directories, their runs, their common root and one summary frame with a SWEEP column."""
    dirs = [Path(d) for d in sweeps]
    if out.suffix != ".md":
        raise IsorobustError(f"--out must name a .md file (got {out})")
    per_sweep = []
    for d in dirs:
        if not d.is_dir():
            raise IsorobustError(f"{d} is not a directory")
        runs = find_runs(d.resolve())  # absolute paths: the sweeps may lie apart
        if not any(r.complete for r in runs):
            raise IsorobustError(f"no complete runs below {d}")
        per_sweep.append(runs)
    root = Path(os.path.commonpath([d.resolve() for d in dirs]))
    runs = [r for group in per_sweep for r in group]
    summary = summary_frame(runs, root)
    run_sweep = {r.path.relative_to(root).as_posix(): i for i, group in enumerate(per_sweep) for r in group}
    summary.insert(1, SWEEP, summary["run"].map(run_sweep))
    return dirs, per_sweep, root, summary


def write_study(sweeps: list[str | Path], out: str | Path) -> Report:
    """Aggregate several sweep directories into one markdown report ``out`` plus figures beside it."""
    out = Path(out)
    dirs, per_sweep, root, summary = load_sweeps(sweeps, out)
    runs = [r for group in per_sweep for r in group]
    reference = (summary[SWEEP] == 0) & (summary["reg_weight"] == 0)
    per_run_isometry = isometry_frame(summary, root)
    isometry = aggregate_isometry(per_run_isometry) if not per_run_isometry.empty else None

    clean = aggregate_clean(summary)
    labels = dict(zip(config_keys(clean), configuration_labels(clean[KEY])))
    main = set(config_keys(summary[summary[SWEEP] == 0].drop_duplicates("run")))
    table, sentences, concluded = headline(summary, reference, labels, main)
    sentences += isometry_sentence(isometry, labels)

    from isorobust.reports.figures import robustness_figure, save_figure

    main_rows = summary[SWEEP] == 0
    figures = {"main sweep": summary[main_rows]}
    if (~main_rows).any():
        reference_setting = summary.loc[reference, SETTING].iloc[0] if reference.any() else None
        figures["other sweeps, with the reference"] = summary[~main_rows | (reference & (summary[SETTING] == reference_setting))]
    images = {}
    for i, (title, frame) in enumerate(figures.items()):
        images[title] = out.with_name(f"{out.stem}_{'main' if i == 0 else 'other'}.png")

    lines = [f"# {out.stem}: study report", "",
             f"Generated by `isorobust report {' '.join(str(d) for d in dirs)} --out {out}` from the runs "
             "below; every number is a mean over the seeds of real runs, nothing is typed in by hand.", "",
             "## How the numbers were made", ""]
    for i, (d, group) in enumerate(zip(dirs, per_sweep)):
        facts = sweep_facts(group)
        lines += [f"{'Main sweep' if i == 0 else f'Sweep {i + 1}'}: `{d}`", "", "```", sweep_command(d), "```", "",
                  f"{facts['runs']} complete runs; {wall_time(facts)} "
                  f"({facts['job_minutes']:.1f} min of job time); {facts['device']} on {facts['machine']}, "
                  f"torch {facts['torch']}, torch threads per job {facts['threads']}.{attack_time(facts)}", ""]
    certified_lines, verdicts = certifiedmarkdown(summary, reference, labels, root)
    lines += ["## Conclusion (generated from the paired differences and the certified brackets)", "",
              " ".join(concluded + verdicts), "",
              "## Headline", "", *table, "", *certified_lines,
              "## What the numbers say (generated)", "",
              *[f"- {s}" for s in sentences], ""]
    for title, path in images.items():
        lines += [f"![{title}]({path.name})", ""]
    body = summary_markdown(summary.drop(columns=[SWEEP]), runs, root, isometry, reference=reference)
    lines += ["## Every table", "", *body.splitlines()[1:]]  # its own title is the sweep root's

    files = []
    for title, path in images.items():
        files.append(save_figure(robustness_figure(figures[title]), path))
    files.append(io.write_csv(out.with_suffix(".csv"), summary))
    if not per_run_isometry.empty:
        files.append(io.write_csv(out.with_name(f"{out.stem}_isometry.csv"), per_run_isometry))
    files.append(io.write_text(out, "\n".join(lines) + "\n"))
    return Report(root, runs, "\n".join(lines) + "\n", files)


__all__ = ["write_study", "load_sweeps", "sweep_command", "sweep_facts", "headline"]
