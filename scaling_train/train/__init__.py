"""Training loop, configs, schedules, checkpoints; ``backend.py`` owns all parallelism."""

from scaling_train.callbacks import TrainerCallback
from scaling_train.train.config import LoopConfig, RunConfig, config_hash
from scaling_train.train.schedule import OptimConfig, lr_array, lr_at
from scaling_train.train.trainer import RunResult, Trainer, train

__all__ = [
    "LoopConfig",
    "OptimConfig",
    "RunConfig",
    "RunResult",
    "Trainer",
    "TrainerCallback",
    "config_hash",
    "lr_array",
    "lr_at",
    "train",
]
