"""The two primitives every report is made of: one statistic cell and one markdown table.

``stat_cell`` formats a statistic over seeds (mean, sample std, n, a 95 % interval); ``markdown`` renders
rows of cells as a markdown table padded for a terminal. Reports build frames and rows, and only these
two turn them into text, so a number looks the same in every report.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

MISSING = "–"


def t_quantile(n: int, level: float = 0.95) -> float:
    """Two-sided Student-t quantile for a mean of ``n`` values (NaN below 2 values)."""
    if n < 2:
        return float("nan")
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, n - 1))


def t_half_width(std: float, n: int) -> float:
    """Half the width of the 95 % Student-t interval of a mean of ``n`` values with sample std ``std``."""
    return t_quantile(int(n)) * std / math.sqrt(n) if n > 1 else float("nan")


def stat_cell(mean: float, std: float = float("nan"), n: int = 1, *, scale: float = 100.0, digits: int = 2,
              spread: bool = True, interval: int | tuple[float, float] | None = None, count: bool = True,
              signed: bool = False, star: bool = False) -> str:
    """``mean ± std [low, high] (n)`` of a statistic over ``n`` seeds, times ``scale`` (100: percent).

    spread: show ``± std`` (when n > 1). interval: the 95 % t-interval of the mean with that many digits,
    or (low, high) given; shown when n > 1 ("(one seed)" instead for a signed difference of one seed).
    count: ``(n)`` at the end. signed: ``+``/``-`` on mean and interval (differences). star: `` *`` where
    the interval excludes 0.
    """
    sign = "+" if signed else ""
    text = f"{scale * mean:{sign}.{digits}f}"
    if n > 1 and spread:
        text += f" ± {scale * std:.{digits}f}"
    if interval is not None:
        if n > 1:
            low, high = interval if isinstance(interval, tuple) else (mean - t_half_width(std, n),
                                                                     mean + t_half_width(std, n))
            idigits = digits if isinstance(interval, tuple) else interval
            text += f" [{scale * low:{sign}.{idigits}f}, {scale * high:{sign}.{idigits}f}]"
            if star and (low > 0 or high < 0):
                text += " *"
        elif signed:
            text += " (one seed)"
    if count:
        text += f" ({n})"
    return text


def row_cell(row: Mapping[str, Any] | None, **format: Any) -> str:
    """``stat_cell`` of an aggregate row (``mean``, ``std``, ``n``; a paired row's ``ci_low``/``ci_high``
    where ``interval=True``); ``MISSING`` where there is no row."""
    if row is None:
        return MISSING
    if format.get("interval") is True:
        format["interval"] = (row["ci_low"], row["ci_high"])
    return stat_cell(row["mean"], row["std"], int(row["n"]), **format)


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 0) -> list[str]:
    """A markdown table padded for a terminal; the first ``left`` columns left-aligned, numbers right."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if i < left else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    rule = [":" + "-" * (w + 1) if i < left else "-" * (w + 1) + ":" for i, w in enumerate(widths)]
    return [line(header), "|" + "|".join(rule) + "|", *(line(r) for r in rows)]
