"""The sweep's figure: robust accuracy vs ε (log x), one panel per attack, one line per configuration.

Panels are laid out three to a row, the ones that carry a verdict first: the per-sample worst case, the
certified lower bounds, then the paper's own protocol beside the FGSM it is read against.
"""
from __future__ import annotations

import io as _bytes_io
from pathlib import Path

import pandas as pd

from isorobust import io
from isorobust.plots.robustness import NORM_NAMES
from isorobust.reports.aggregate import CONFIG_COLUMNS, SETTING, aggregate_clean, aggregate_robustness, configuration_labels


PANELS_PER_ROW = 3


def panel_order(attack: str) -> int:
    """Worst case first, then certified bounds, the paper's protocol and FGSM, then every other attack."""
    for rank, prefix in enumerate(("worst_case", "certified", "paper_fgsm", "fgsm")):
        if attack.startswith(prefix):
            return rank
    return 4


def robustness_figure(summary: pd.DataFrame):
    """A matplotlib Figure (no pyplot, so no GUI backend and no global state): mean line, ±1 std band."""
    from matplotlib.figure import Figure

    robust, clean = aggregate_robustness(summary), aggregate_clean(summary)
    configs = clean[[*CONFIG_COLUMNS, SETTING]]
    labels = configuration_labels(configs)
    # An attack whose rows cover different sample counts (the worst case at the radii of an attack run on
    # the first N samples only) gets one panel per count: points over different samples are not one curve.
    counts = robust.groupby("attack")["n_samples"].nunique()
    robust = robust.assign(attack=[a if counts[a] == 1 else f"{a}, {n} samples"
                                   for a, n in zip(robust["attack"], robust["n_samples"])])
    attacks = list(dict.fromkeys(a for attack in dict.fromkeys(summary["attack"])
                                 for a in robust["attack"].unique() if a == attack or a.startswith(f"{attack}, ")))
    attacks = sorted(attacks, key=panel_order)  # stable: the table's order within each rank
    legend_rows = 0 if len(configs) <= 4 else -(-len(configs) // 3)
    ncols = min(PANELS_PER_ROW, len(attacks))
    nrows = -(-len(attacks) // ncols)
    fig = Figure(figsize=(4.2 * ncols + 0.6, 3.6 * nrows + 0.6 + 0.3 * legend_rows), layout="constrained")
    grid = fig.subplots(nrows, ncols, sharey=True, squeeze=False)
    axes = list(grid.flat)[: len(attacks)]
    for unused in list(grid.flat)[len(attacks):]:
        unused.set_visible(False)
    colors = [f"C{i % 10}" for i in range(len(configs))]
    # ε = 0 has no place on a log axis; clean accuracy is in summary.md.
    robust = robust[robust["epsilon"] > 0]
    for ax, attack in zip(axes, attacks):
        for (_, config), label, color in zip(configs.iterrows(), labels, colors):
            mask = robust["attack"] == attack
            for column in (*CONFIG_COLUMNS, SETTING):
                mask &= robust[column] == config[column]
            curve = robust[mask].sort_values("epsilon")
            if curve.empty:
                continue
            mean, std = 100 * curve["mean"].to_numpy(), 100 * curve["std"].fillna(0).to_numpy()
            n = int(curve["n"].min())
            ax.plot(curve["epsilon"], mean, marker="o", markersize=3, color=color, label=f"{label} (n={n})")
            if n > 1:
                ax.fill_between(curve["epsilon"], mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
        norm = robust.loc[robust["attack"] == attack, "norm"].iloc[0] if "norm" in robust else ""
        norm = NORM_NAMES.get(norm, norm)
        ax.set_xscale("log")
        ax.set_title(f"{attack} ({norm})" if norm else attack)
        ax.set_xlabel(f"ε ({norm} radius)" if norm else "ε")
        ax.grid(True, which="both", alpha=0.3)
    for row in grid:
        row[0].set_ylabel("robust accuracy (%)")
    axes[0].set_ylim(-2, 102)
    if len(configs) > 4:  # many lines: one legend below the panels instead of over the last one
        handles, names = axes[0].get_legend_handles_labels()
        fig.legend(handles, names, loc="outside lower center", ncols=min(3, len(names)), fontsize="small")
    else:
        axes[0].legend(loc="upper right", fontsize="small")
    datasets = ", ".join(map(str, summary["dataset"].unique()))
    models = ", ".join(map(str, summary["model"].unique()))
    n_samples = ", ".join(str(n) for n in sorted(summary["n_samples"].unique()))
    fig.suptitle(f"Robust accuracy vs ε: dataset {datasets}, model {models} ({n_samples} test samples; mean ± std over seeds)")
    return fig


def save_figure(fig, path: Path) -> Path:
    """Render to memory, then write atomically (the format follows the suffix: .png, .pdf, .svg)."""
    buffer = _bytes_io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lstrip("."), dpi=150)
    return io.atomic_write(path, lambda f: f.write(buffer.getvalue()))
