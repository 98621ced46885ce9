"""The LR schedules live in ``scaling_train/schedule.py`` (pure numpy, below every package, so the fitter
and the report can rebuild an old run's schedule without importing training code); re-exported here."""

from scaling_train.schedule import LR_SCHEDULE_FILE, OptimConfig, lr_array, lr_at

__all__ = ["LR_SCHEDULE_FILE", "OptimConfig", "lr_array", "lr_at"]
