"""A run's own tables as markdown: robustness.md (one table per level for hierarchical models)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from isorobust.rundir import LEVEL, TREE_DISTANCE, WORST_CASE

SWEEP_NOTE = (
    "A point broken at a smaller ε counts as broken at every larger ε (an adversarial example "
    "inside a small ball lies inside every larger one); the survivors are attacked afresh at "
    "each ε. Robust accuracy = correct on the clean input and not fooled."
)


def markdown_table(frame: pd.DataFrame, attacks: Mapping[str, Any] | None = None) -> str:
    """Rows ε, columns attacks, robust accuracy in percent; a header line with the run's facts."""
    first = frame.iloc[0]
    wide = frame.pivot_table(index="epsilon", columns="attack", values="robust_accuracy", sort=False)
    wide = wide[list(dict.fromkeys(frame["attack"]))].sort_index()
    reg = ("none" if first["reg"] == "none"
           else f"{first['reg']} (β={first['reg_weight']:g}, K={first['reg_scale']:g})" if "isometric" in first["reg"]
           else f"{first['reg']} (weight {first['reg_weight']:g})")
    lines = [
        f"Robust accuracy (%) — dataset {first['dataset']}, model {first['model']}, regularizer {reg}, "
        f"seed {first['seed']}, {first['n_samples']} test samples, clean accuracy {100 * first['clean_accuracy']:.2f}%",
        "",
        "| ε | " + " | ".join(wide.columns) + " |",
        "|---:|" + "---:|" * len(wide.columns),
    ]
    for eps, row in wide.iterrows():
        lines.append(f"| {eps:.4g} | " + " | ".join("—" if v != v else f"{100 * v:.2f}" for v in row) + " |")
    lines.append("")
    if attacks:
        lines += [f"- {name}: {a.describe()}" + (f" — first {a.n_samples} test samples only" if a.n_samples else "")
                  for name, a in attacks.items()]
    if any(str(a).startswith(WORST_CASE) for a in wide.columns):
        lines.append(f"- {WORST_CASE}: per sample, robust only if it survives every attack above (of that norm) "
                     "that ran on all samples"
                     + ("; `*_firstN` columns: on the first N samples only, where an attack ran on those only "
                        f"(`{WORST_CASE}_firstN` over every attack, including the trimmed one)"
                        if attacks and any(a.n_samples for a in attacks.values()) else ""))
    lines.append(f"- {SWEEP_NOTE}")
    return "\n".join(lines) + "\n"


def markdown_by_level(table: pd.DataFrame, attacks: Mapping[str, Any] | None = None) -> str:
    """``markdown_table``, once per level when the table has a ``level`` column."""
    if LEVEL not in table.columns:
        return markdown_table(table, attacks)
    parts = []
    for level, rows in table.groupby(LEVEL, sort=True):
        title = f"## Level {level}"
        if TREE_DISTANCE in rows and rows[TREE_DISTANCE].notna().any():
            title += f" (mean tree distance of clean errors: {rows[TREE_DISTANCE].iloc[0]:.3f})"
        parts.append(title + "\n\n" + markdown_table(rows.reset_index(drop=True), attacks))
    return "\n".join(parts)
