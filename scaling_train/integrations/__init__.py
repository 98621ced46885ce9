"""Scaling-law metrics for other training loops: transformers ``Trainer`` and accelerate trackers.

from scaling_train.integrations import ScalingLawCallback      # transformers
from scaling_train.integrations import ScalingLawTracker       # accelerate
"""

from __future__ import annotations

from typing import Any

__all__ = ["ScalingLawCallback", "ScalingLawTracker"]


def __getattr__(name: str) -> Any:  # lazy: importing transformers / accelerate is slow
    if name == "ScalingLawCallback":
        from scaling_train.integrations.hf import ScalingLawCallback

        return ScalingLawCallback
    if name == "ScalingLawTracker":
        from scaling_train.integrations.accelerate_tracker import ScalingLawTracker

        return ScalingLawTracker
    raise AttributeError(name)
