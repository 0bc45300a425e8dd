from isorobust.models.cnn import CNN, cnn
from isorobust.models.hierarchical import HierarchicalMLP, hierarchical_mlp
from isorobust.models.mlp import MLP, mlp

# Classes a checkpoint may name; nothing outside this table is ever constructed from a file.
MODEL_CLASSES = {"MLP": MLP, "HierarchicalMLP": HierarchicalMLP, "CNN": CNN}

__all__ = ["MLP", "mlp", "HierarchicalMLP", "hierarchical_mlp", "CNN", "cnn", "MODEL_CLASSES"]
