import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = os.environ.get("ISOROBUST_DATA")
HAS_MNIST = bool(DATA_ROOT) and (Path(DATA_ROOT) / "MNIST" / "raw" / "t10k-images-idx3-ubyte").is_file()

requires_mnist = pytest.mark.skipif(
    not HAS_MNIST, reason="real MNIST not found: set ISOROBUST_DATA to a folder with MNIST/raw (.ci/run does)"
)


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``isorobust`` as a user would, in ``cwd``."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "isorobust", *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )
