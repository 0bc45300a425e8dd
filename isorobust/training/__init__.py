from isorobust.training.standard import StandardTrainer, TrainingDiverged

__all__ = ["StandardTrainer", "TrainingDiverged"]
