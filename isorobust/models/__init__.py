from isorobust.models.hierarchical import HierarchicalMLP, hierarchical_mlp
from isorobust.models.mlp import MLP, mlp

# Classes a checkpoint may name; nothing outside this table is ever constructed from a file.
MODEL_CLASSES = {"MLP": MLP, "HierarchicalMLP": HierarchicalMLP}

__all__ = ["MLP", "mlp", "HierarchicalMLP", "hierarchical_mlp", "MODEL_CLASSES"]
