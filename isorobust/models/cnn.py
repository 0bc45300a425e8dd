"""The authors' convolutional classifier: two conv blocks, then tanh layers like the MLP's.

    x (C, H, W) -> conv 3×3 (C→c₁, padding 1) -> ReLU -> max-pool 2
                -> conv 3×3 (c₁→c₂, padding 1) -> ReLU -> max-pool 2 -> flatten (c₂·⌊H/4⌋·⌊W/4⌋)
                -> ``depth`` tanh layers of ``width`` (the first on the flattened features, the other
                   depth − 1 width×width, orthogonally initialised) -> linear read-out

``forward_features`` gives the logits and every hidden tanh representation, as ``MLP`` does (index 0:
the first tanh layer, index -1 = ``depth`` − 1: the last), so the isometric term (``reg.layer``), the
isometry measurements and ``paper_fgsm`` act on those layers. Their CIFAR-10 setting: channels
(128, 256), width 1000, depth 3: the first tanh layer takes 256·8·8 = 16384 features.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from isorobust.errors import ConfigError
from isorobust.models.mlp import MLP


class CNN(MLP):
    """Conv feature extractor in front of the MLP's tanh layers (``MLP`` with ``depth − 1`` width×width
    layers on the flattened conv features); the constructor arguments are plain values (``config``)
    so that a checkpoint rebuilds it through the fixed table of ``isorobust.models.MODEL_CLASSES``."""

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        channels: Sequence[int] = (32, 64),
        width: int = 100,
        depth: int = 3,
        num_classes: int = 10,
    ) -> None:
        shape = [int(s) for s in input_shape]
        chans = [int(c) for c in channels] if isinstance(channels, Sequence) else []
        if len(shape) != 3 or shape[1] < 4 or shape[2] < 4:
            raise ValueError(f"model=cnn needs image inputs (C, H, W) of at least 4×4 (got {tuple(shape)})")
        if len(chans) != 2 or min(chans) < 1:
            raise ValueError(f"model.channels must be two integers >= 1 (got {list(channels)})")
        if width < 1 or depth < 1:
            raise ValueError(f"model.width and model.depth must be >= 1 for model=cnn (got {width}, {depth})")
        (c_in, h, w), (c1, c2) = shape, chans
        flat_features = c2 * (h // 4) * (w // 4)
        # The tanh layers, their orthogonal init and forward_features are the MLP's.
        super().__init__(flat_features, width, depth - 1, num_classes, "tanh")
        self.config = dict(input_shape=shape, channels=chans, width=width, depth=depth, num_classes=num_classes)
        self.flat_features = flat_features
        self.conv = nn.Sequential(
            nn.Conv2d(c_in, c1, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )

    def forward_features(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        return super().forward_features(self.conv(x))


def cnn(
    input_shape: tuple[int, ...],
    num_classes: int,
    channels: Sequence[int] = (32, 64),
    width: int = 100,
    depth: int = 3,
    name: str = "cnn",
) -> CNN:
    """Build the CNN for a data set's input shape (the ``model=cnn`` config target)."""
    if len(input_shape) != 3 or min(input_shape[1:], default=0) < 4:
        raise ConfigError(f"model={name} needs image inputs (C, H, W) of at least 4×4; the data set gives "
                          f"{tuple(input_shape)} (use model=mlp)")
    try:
        return CNN(tuple(input_shape), channels, width, depth, num_classes)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc).splitlines()[0]) from None


__all__ = ["CNN", "cnn"]
