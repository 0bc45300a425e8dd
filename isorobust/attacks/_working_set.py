"""The working set of a batched attack: the rows whose attack is over leave it together.

PGD, APGD and Square each attack a batch row by row; a row whose attack is over (the sample is fooled) need
not be computed any more. Removing rows copies every per-row tensor, so removing a few at every iteration
costs more than computing them a little longer: they stay in the batch, marked done, until they are
COMPACT_SHARE of it, and then leave together. Results do not depend on when rows leave (each attack's tests
compare shares), only the cost does.
"""
from __future__ import annotations

from torch import Tensor

COMPACT_SHARE = 0.1


def compaction_due(done: Tensor) -> bool:
    """Whether the rows marked ``done`` are now COMPACT_SHARE of the batch (or more), so that they leave."""
    return int(done.sum()) >= COMPACT_SHARE * done.numel()


def keep_rows(keep: Tensor, *tensors: Tensor | None) -> tuple[Tensor | None, ...]:
    """Each tensor's rows where ``keep`` (a boolean or index tensor over the batch); None stays None."""
    return tuple(None if t is None else t[keep] for t in tensors)
