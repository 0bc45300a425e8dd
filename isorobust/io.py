"""Atomic writes of results and checkpoints, and safe (weights-only) loading of torch files.

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

from typing import TYPE_CHECKING

from isorobust.errors import CheckpointError

if TYPE_CHECKING:  # torch and pandas load only when a checkpoint or a table is written: reports start fast
    import pandas as pd

def _file_mode() -> int:
    """What a plain open() would give a new file: 0o666 less the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


# mkstemp creates files readable by their owner only; results are meant to be shared (cluster groups).
FILE_MODE = _file_mode()


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


def write_csv(path: str | Path, frame: "pd.DataFrame") -> Path:
    return write_text(path, frame.to_csv(index=False))


def save_torch(path: str | Path, obj: Any) -> Path:
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))


def load_torch(path: str | Path) -> Any:
    """``torch.load`` restricted to tensors and plain containers: nothing in the file can execute."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, foreign pickle globals, not a torch file at all
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"refusing checkpoint {path}: not a readable weights-only file ({reason})") from None
