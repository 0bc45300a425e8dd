from isorobust.models.checkpoint import MODEL_CLASSES, load_model, model_checkpoint
from isorobust.models.cnn import CNN, cnn
from isorobust.models.hierarchical import HierarchicalMLP, hierarchical_mlp
from isorobust.models.mlp import MLP, mlp

__all__ = ["MLP", "mlp", "HierarchicalMLP", "hierarchical_mlp", "CNN", "cnn", "MODEL_CLASSES", "load_model",
           "model_checkpoint"]
