from isorobust.training.standard import StandardTrainer, TrainingDiverged
from isorobust.training.hierarchical import HierarchicalTrainer

__all__ = ["StandardTrainer", "HierarchicalTrainer", "TrainingDiverged"]
