"""Atomic writes of results and checkpoints, and safe checkpoint loading.

Every result file is written to a temporary file in the same folder and renamed into place,
so an interrupted run never leaves a half-written file under the final name.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pandas as pd
import torch
from torch import nn

from isorobust.errors import CheckpointError

def _file_mode() -> int:
    """What a plain open() would give a new file: 0o666 less the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


# mkstemp creates files readable by their owner only; results are meant to be shared (cluster groups).
FILE_MODE = _file_mode()

CHECKPOINT_FORMAT = "isorobust.model"
CHECKPOINT_VERSION = 1


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write`` on a temporary file beside ``path``, fsync it, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_csv(path: str | Path, frame: pd.DataFrame) -> Path:
    return write_text(path, frame.to_csv(index=False))


def save_torch(path: str | Path, obj: Any) -> Path:
    return atomic_write(path, lambda f: torch.save(obj, f))


def load_torch(path: str | Path) -> Any:
    """``torch.load`` restricted to tensors and plain containers: nothing in the file can execute."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, foreign pickle globals, not a torch file at all
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"refusing checkpoint {path}: not a readable weights-only file ({reason})") from None


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
    from isorobust.models import MODEL_CLASSES

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
