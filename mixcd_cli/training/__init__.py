"""Training: optimisers and schedules, inference passes, and the fine-tuning recipe."""

from .batches import BatchOrder
from .finetuner import FineTuner, LoopResult, Rehearsal, TrainState
from .inference import ModelSelection, Predictions, largest_batch, predict_task
from .optim import OPTIMIZERS, SCHEDULES, create_optimizer, create_schedule
from .settings import TrainSettings

__all__ = ["BatchOrder", "FineTuner", "LoopResult", "Rehearsal", "TrainSettings", "TrainState", "ModelSelection",
           "Predictions", "largest_batch", "predict_task", "OPTIMIZERS", "SCHEDULES", "create_optimizer",
           "create_schedule"]
