"""A regularizer for isorobust: logit squeezing, the mean squared norm of the logits (docs/extending.md)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor


@dataclass
class LogitSqueezing:
    """mean_i ‖f(x_i)‖². The trainer adds weight × this term to the cross-entropy of every batch."""

    weight: float = 0.05
    name: str = "logit_squeezing"
    # True: the trainer makes x require grad and builds the logits from it (for gradient penalties).
    needs_input_grad: ClassVar[bool] = False

    def __call__(self, x: Tensor, logits: Tensor, features: list[Tensor], y: Tensor) -> Tensor:
        """The unweighted term of one batch: inputs, logits, hidden representations, labels."""
        return logits.pow(2).sum(dim=1).mean()
