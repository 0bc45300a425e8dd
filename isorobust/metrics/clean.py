"""Clean (non-adversarial) metrics of a model on a data split."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from isorobust.data import Split
from isorobust.losses import isometric_loss


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int = 1000) -> Tensor:
    """Predicted labels for ``x``, computed in batches."""
    return torch.cat([model(x[i : i + batch_size]).argmax(dim=1) for i in range(0, x.shape[0], batch_size)])


def logit_margin(logits: Tensor, labels: Tensor) -> Tensor:
    """logit[y] − max_{j≠y} logit[j] per row: > 0 where the row is classified as its label, ≤ 0 where it is
    not (the quantity attacks push below 0 and certificates bound from below)."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    return true - logits.scatter(1, labels[:, None], float("-inf")).amax(dim=1)


def accuracy(predictions: Tensor, labels: Tensor) -> float:
    return (predictions == labels).float().mean().item()


@torch.no_grad()
def clean_metrics(
    model: nn.Module, split: Split, batch_size: int, iso_scale: float, iso_layer: int
) -> dict[str, float]:
    """Accuracy, mean cross-entropy and mean isometric term over ``split`` in fixed batches.

    The isometric term is a per-batch quantity, so it is averaged over consecutive batches of
    the training batch size (the same size it was optimised at).
    """
    model.eval()
    correct, ce_sum, iso_sum, n_batches = 0, 0.0, 0.0, 0
    for i in range(0, len(split), batch_size):
        x, y = split.x[i : i + batch_size], split.y[i : i + batch_size]
        logits, features = model.forward_features(x)
        correct += (logits.argmax(dim=1) == y).sum().item()
        ce_sum += F.cross_entropy(logits, y, reduction="sum").item()
        iso_sum += isometric_loss(x, features[iso_layer], y, scale=iso_scale).item()
        n_batches += 1
    n = len(split)
    return {"accuracy": correct / n, "cross_entropy": ce_sum / n, "isometric_loss": iso_sum / n_batches}
