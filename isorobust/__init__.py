"""isorobust: isometric regularization and adversarial robustness, as reproducible experiments."""
from typing import Any

__version__ = "0.1.0"
__all__ = ["isometric_loss", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy, so that `isorobust --help` and `--cfg job` answer without importing torch.
    if name == "isometric_loss":
        from isorobust.losses import isometric_loss

        return isometric_loss
    raise AttributeError(f"module 'isorobust' has no attribute {name!r}")
