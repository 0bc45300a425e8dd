"""The reference network: an MLP on flattened images with orthogonally initialised hidden layers."""
from __future__ import annotations

import math

from torch import Tensor, nn

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "sigmoid": nn.Sigmoid, "gelu": nn.GELU}


class MLP(nn.Module):
    """in_features → width, then ``depth`` width×width layers, activation after each, linear read-out.

    ``forward(x)`` gives logits; ``forward_features(x)`` gives the logits and every hidden
    representation (index 0: after the input layer, index ``depth``: the last hidden layer).
    """

    def __init__(
        self,
        in_features: int = 784,
        width: int = 100,
        depth: int = 4,
        num_classes: int = 10,
        activation: str = "tanh",
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r} (choose from {', '.join(ACTIVATIONS)})")
        self.config = dict(
            in_features=in_features, width=width, depth=depth, num_classes=num_classes, activation=activation
        )
        self.input_layer = nn.Linear(in_features, width)
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.act = ACTIVATIONS[activation]()
        self.readout = nn.Linear(width, num_classes)
        for layer in self.hidden:
            # Orthogonal width×width weights keep distances through the linear part at init.
            nn.init.orthogonal_(layer.weight)
            nn.init.zeros_(layer.bias)

    @property
    def num_hidden(self) -> int:
        return len(self.hidden) + 1

    def forward_features(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        h = self.act(self.input_layer(x.flatten(1)))
        features = [h]
        for layer in self.hidden:
            h = self.act(layer(h))
            features.append(h)
        return self.readout(h), features

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)[0]


def mlp(
    input_shape: tuple[int, ...],
    num_classes: int,
    width: int = 100,
    depth: int = 4,
    activation: str = "tanh",
    name: str = "mlp",
) -> MLP:
    """Build an MLP for a data set's input shape (the ``model`` config group's target)."""
    return MLP(math.prod(input_shape), width, depth, num_classes, activation)


__all__ = ["MLP", "mlp"]
