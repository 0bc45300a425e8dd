"""A model for isorobust: ReLU hidden layers of chosen widths (docs/extending.md)."""
from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn


class MyModel(nn.Module):
    """in_features -> widths[0] -> ... -> widths[-1] -> num_classes, ReLU after each hidden layer."""

    def __init__(self, in_features: int, num_classes: int, widths: Sequence[int]) -> None:
        super().__init__()
        # The constructor's arguments, saved in model.pt to rebuild the model.
        self.config = dict(in_features=in_features, num_classes=num_classes, widths=list(widths))
        sizes = [in_features, *widths]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))
        self.readout = nn.Linear(sizes[-1], num_classes)

    @property
    def num_hidden(self) -> int:
        """How many hidden representations forward_features returns (reg.layer indexes them)."""
        return len(self.hidden)

    def forward_features(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The logits and every hidden representation, first to last."""
        h, features = x.flatten(1), []
        for layer in self.hidden:
            h = layer(h).relu()
            features.append(h)
        return self.readout(h), features

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)[0]


def my_model(input_shape: tuple[int, ...], num_classes: int, widths: Sequence[int] = (256, 64),
             name: str = "my_model") -> MyModel:
    """The config's _target_. isorobust passes the data set's input_shape and num_classes."""
    return MyModel(math.prod(input_shape), num_classes, widths)
