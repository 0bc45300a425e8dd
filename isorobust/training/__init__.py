from isorobust.training.adversarial import AdversarialTrainer
from isorobust.training.hierarchical import HierarchicalTrainer
from isorobust.training.standard import StandardTrainer, TrainingDiverged

__all__ = ["StandardTrainer", "HierarchicalTrainer", "AdversarialTrainer", "TrainingDiverged"]
