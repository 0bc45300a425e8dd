from isorobust.models.mlp import MLP, mlp

# Classes a checkpoint may name; nothing outside this table is ever constructed from a file.
MODEL_CLASSES = {"MLP": MLP}

__all__ = ["MLP", "mlp", "MODEL_CLASSES"]
