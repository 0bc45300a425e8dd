"""A run's own figure, ``robustness.png``: robust accuracy against ε for each attack, the per-sample worst
case in bold, and where the run was certified the certified accuracy (a lower bound) shaded up to it:
the band between the two is what neither the attacks nor the bounds decide."""
from __future__ import annotations

import io as _bytes_io

import pandas as pd

from isorobust.rundir import finest_level

NORM_NAMES = {"linf": "L∞", "l2": "L2", "l1": "L1"}


def run_figure(table: pd.DataFrame, certified: pd.DataFrame | None = None, title: str = "") -> bytes:
    """PNG of ``table`` (robustness.csv's rows; the finest level of a hierarchical model) and, optionally,
    ``certified`` (certified.csv's rows). One panel per norm; ε = 0 is left out (log axis)."""
    from matplotlib.figure import Figure

    table = finest_level(table)
    table = table[(table["epsilon"] > 0) & ~table["attack"].astype(str).str.contains("_first")]
    norms = list(dict.fromkeys(table["norm"]))
    fig = Figure(figsize=(5.6 * len(norms), 4.2), layout="constrained")
    axes = fig.subplots(1, len(norms), sharey=True, squeeze=False)[0]
    for ax, norm in zip(axes, norms):
        rows = table[table["norm"] == norm]
        worst = None
        for i, (attack, curve) in enumerate(rows.groupby("attack", sort=False)):
            curve = curve.sort_values("epsilon")
            bold = str(attack).startswith("worst_case")
            ax.plot(curve["epsilon"], 100 * curve["robust_accuracy"], marker="o", markersize=3 if not bold else 4,
                    linewidth=2.6 if bold else 1.2, color="black" if bold else f"C{i % 10}", label=str(attack),
                    zorder=3 if bold else 2)
            if bold:
                worst = curve
        if certified is not None and not certified.empty and norm == "linf":
            bound = certified[certified["epsilon"] > 0].sort_values("epsilon")
            method = str(bound["method"].iloc[0]).split()[0]
            ax.fill_between(bound["epsilon"], 0, 100 * bound["certified_accuracy"], color="C2", alpha=0.25,
                            linewidth=0, label=f"certified ({method}), a lower bound")
            ax.plot(bound["epsilon"], 100 * bound["certified_accuracy"], color="C2", marker="s", markersize=3)
            if worst is not None:
                ax.set_title("true robust accuracy lies between the shaded bound and the bold worst case",
                             fontsize="small")
        name = NORM_NAMES.get(norm, norm)
        ax.set_xscale("log")
        ax.set_xlabel(f"ε ({name} radius)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower left", fontsize="small")
    axes[0].set_ylabel("robust accuracy (%)")
    axes[0].set_ylim(-2, 102)
    if title:
        fig.suptitle(title)
    buffer = _bytes_io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()
