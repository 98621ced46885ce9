"""Learning-rate schedules with linear warmup: constant, cosine, WSD (warmup-stable-decay), linear.

``lr_at(step)`` is the LR of optimizer step ``step + 1`` (0-based index); ``lr_array(T)`` is the full
planned schedule the law fitter needs (``Curve.lr``).

Pure numpy next to ``config`` (layer 0, no torch): the trainer computes its LRs here and writes the
planned schedule to ``RUN/lr_schedule.json``; the fitter and the report read that file, and rebuild the
schedule from ``config.yaml``'s ``optim`` section with ``lr_array`` only for run folders written before
the trainer wrote it (``read_lr_schedule``). ``scaling_train.train.schedule`` re-exports these names.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from scaling_train.config import doc
from scaling_train.run_folder import LR_SCHEDULE


@dataclass
class OptimConfig:
    lr: float = doc("Peak learning rate (muP: the base-width LR).", 3e-3)
    min_lr_ratio: float = doc("Final LR as a fraction of the peak (cosine, wsd, linear).", 0.1)
    schedule: Literal["constant", "cosine", "wsd", "linear"] = doc("LR schedule after warmup.", "cosine")
    warmup_steps: int = doc(
        "Linear warmup steps (0 = none); a float in (0,1) is not accepted, give steps.", 20
    )
    decay_fraction: float = doc("WSD: fraction of all steps spent in the final decay.", 0.2)
    weight_decay: float = doc("AdamW decoupled weight decay on matrices.", 0.1)
    beta1: float = doc("AdamW beta1.", 0.9)
    beta2: float = doc("AdamW beta2.", 0.95)
    eps: float = doc("AdamW epsilon.", 1e-8)
    grad_clip: float | None = doc("Clip the global gradient norm to this (null = off).", 1.0)

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"optim.lr={self.lr} must be > 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"optim.min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps={self.warmup_steps} must be >= 0")
        if not 0 < self.decay_fraction <= 1:
            raise ValueError(f"optim.decay_fraction={self.decay_fraction} must be in (0, 1]")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"optim.{name}={getattr(self, name)} must be in [0, 1)")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"optim.grad_clip={self.grad_clip} must be > 0 or null")
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay={self.weight_decay} must be >= 0")


def lr_at(cfg: OptimConfig, step: int, total_steps: int) -> float:
    """LR of 0-based step ``step`` out of ``total_steps``."""
    peak, floor = cfg.lr, cfg.lr * cfg.min_lr_ratio
    w = min(cfg.warmup_steps, max(total_steps - 1, 0))
    if step < w:
        return peak * (step + 1) / (w + 1)
    if cfg.schedule == "constant":
        return peak
    if cfg.schedule == "wsd":
        decay_start = max(w, total_steps - round(cfg.decay_fraction * total_steps))
        if step < decay_start:
            return peak
        frac = (step - decay_start + 1) / max(total_steps - decay_start, 1)
        return peak + (floor - peak) * frac
    frac = (step - w + 1) / max(total_steps - w, 1)  # in (0, 1]
    if cfg.schedule == "linear":
        return peak + (floor - peak) * frac
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * frac))


def lr_array(cfg: OptimConfig, total_steps: int) -> np.ndarray:
    """The whole planned schedule: element k is the LR of optimizer step k+1."""
    return np.array([lr_at(cfg, s, total_steps) for s in range(total_steps)], dtype=np.float64)


LR_SCHEDULE_FILE = LR_SCHEDULE
"""``RUN/lr_schedule.json``: a JSON list of floats, element k the planned LR of optimizer step k+1,
length = total steps. Written by our trainer and by the HF / accelerate integrations."""


def read_lr_schedule(run_dir: str | Path) -> np.ndarray | None:
    """``RUN/lr_schedule.json`` as float64, or None when the file is absent (a run folder from before the
    trainer wrote it: rebuild from ``config.yaml`` with ``lr_array``). An unreadable file raises
    ``ValueError`` naming it."""
    path = Path(run_dir) / LR_SCHEDULE_FILE
    if not path.is_file():
        return None
    try:
        lr = np.asarray(json.loads(path.read_text()), dtype=np.float64)
    except (OSError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: not a JSON list of learning rates ({type(e).__name__}: {e})") from e
    if lr.ndim != 1:
        raise ValueError(f"{path}: expected a flat list of learning rates, got shape {lr.shape}")
    return lr
