"""``model.pt``: the weights of a trained model and the constructor arguments that rebuild it.

Only the classes of ``MODEL_CLASSES`` are ever constructed from a file, and the file is read
weights-only (``io.load_torch``): nothing in it can execute.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from isorobust.errors import CheckpointError
from isorobust.io import load_torch
from isorobust.models.cnn import CNN
from isorobust.models.hierarchical import HierarchicalMLP
from isorobust.models.mlp import MLP

# Classes a checkpoint may name; nothing outside this table is ever constructed from a file.
MODEL_CLASSES = {"MLP": MLP, "HierarchicalMLP": HierarchicalMLP, "CNN": CNN}

CHECKPOINT_FORMAT = "isorobust.model"
CHECKPOINT_VERSION = 1


def model_checkpoint(model: nn.Module, **extra: Any) -> dict[str, Any]:
    """What ``model.pt`` holds: the weights and the constructor arguments to rebuild the model."""
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model_class": type(model).__name__,
        "model_config": dict(model.config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }


def load_model(path: str | Path) -> nn.Module:
    """Rebuild a model from ``model.pt``; refuse anything that is not exactly such a file."""
    ckpt = load_torch(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"refusing checkpoint {path}: not an isorobust model file")
    cls = MODEL_CLASSES.get(ckpt.get("model_class"))
    if cls is None:
        raise CheckpointError(f"refusing checkpoint {path}: unknown model class {ckpt.get('model_class')!r}")
    try:
        model = cls(**ckpt["model_config"])
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"refusing checkpoint {path}: weights do not fit the model ({reason})") from None
    return model


def load_state_dict_file(path: str | Path) -> dict[str, Any]:
    """A plain state_dict (name -> tensor) from ``path``, read weights-only; ``model.pt`` files of this tool
    give their ``state_dict``. Anything else (a pickled model, other objects) is refused."""
    import torch

    ckpt = load_torch(path)
    if isinstance(ckpt, dict) and ckpt.get("format") == CHECKPOINT_FORMAT:
        ckpt = ckpt["state_dict"]
    if not isinstance(ckpt, dict) or not ckpt or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in ckpt.items()):
        raise CheckpointError(f"refusing checkpoint {path}: not a state_dict (a mapping of parameter names to "
                              "tensors, as torch.save(model.state_dict(), FILE) writes)")
    return ckpt


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """``model`` with the weights of the state_dict in ``path``: every key and shape must match."""
    state = load_state_dict_file(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = "; ".join(lines[1:3]) if len(lines) > 1 else lines[0]
        raise CheckpointError(f"refusing checkpoint {path}: its weights do not fit {type(model).__name__} "
                              f"({reason[:300]})") from None
    return model
