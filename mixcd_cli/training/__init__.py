"""Training: optimisers and schedules, inference passes, and the fine-tuning recipe."""

from .finetuner import BatchOrder, FineTuner, LoopResult, Rehearsal, TrainSettings, TrainState
from .inference import ModelSelection, Predictions, largest_batch, predict_task
from .optim import OPTIMIZERS, SCHEDULES, create_optimizer, create_schedule

__all__ = ["BatchOrder", "FineTuner", "LoopResult", "Rehearsal", "TrainSettings", "TrainState", "ModelSelection",
           "Predictions", "largest_batch", "predict_task", "OPTIMIZERS", "SCHEDULES", "create_optimizer",
           "create_schedule"]
