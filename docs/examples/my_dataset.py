"""A data set for isorobust: Gaussian blobs in [0, 1]^dim, one per class (docs/extending.md)."""
from __future__ import annotations

import torch

from isorobust.data import ImageDataset, Split


def my_dataset(num_classes: int = 3, dim: int = 2, n_train: int = 600, n_test: int = 300,
               spread: float = 0.05, seed: int = 0, train_size: int | None = None,
               test_size: int | None = None, name: str = "blobs") -> ImageDataset:
    """The config's _target_. Inputs float32 in [0, 1], labels int64 in [0, num_classes)."""
    gen = torch.Generator().manual_seed(seed)
    centres = 0.25 + 0.5 * torch.rand(num_classes, dim, generator=gen)

    def split(n: int, size: int | None) -> Split:
        y = torch.arange(n) % num_classes  # classes interleaved: the first N cover all of them
        x = (centres[y] + spread * torch.randn(n, dim, generator=gen)).clamp(0.0, 1.0)
        return Split(x[:size], y[:size])  # size None: the whole split

    return ImageDataset(name=name, train=split(n_train, train_size), test=split(n_test, test_size),
                        num_classes=num_classes)
