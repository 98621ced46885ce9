"""The simple gradient noise scale from squared gradient norms at two batch sizes (numpy only: the training
process imports it through ``scaling_train.metrics.gns`` and must not pay for scipy)."""

from __future__ import annotations

import numpy as np

from ._validate import check_range


class GradientNoiseScale:
    """Simple gradient noise scale ``B_simple = tr(Sigma) / |G|**2`` (McCandlish et al. 2018, app. A).

    From squared gradient norms measured at two batch sizes ``b_small < b_big`` (E|G_B|^2 = |G|^2 + tr Sigma / B):

        |G|^2    ≈ (b_big |G_big|^2 - b_small |G_small|^2) / (b_big - b_small)
        tr Sigma ≈ (|G_small|^2 - |G_big|^2) / (1/b_small - 1/b_big)

    Both unbiased estimates are smoothed separately with a bias-corrected EMA (``decay``) before the
    ratio is taken, since the ratio of noisy estimates is biased and heavy-tailed.
    """

    def __init__(self, *, decay: float = 0.99) -> None:
        self.decay = check_range("decay", decay, 0.0, 1.0, hi_open=True)
        self._g2 = 0.0
        self._s = 0.0
        self._w = 0.0  # sum of EMA weights, for bias correction
        self.n_updates = 0

    def update(self, sq_norm_small: float, sq_norm_big: float, b_small: float, b_big: float) -> None:
        """Add one measurement: squared norms of the mean gradient over ``b_small`` and ``b_big`` samples."""
        for name, v in (("sq_norm_small", sq_norm_small), ("sq_norm_big", sq_norm_big)):
            if not (np.isfinite(v) and v >= 0):
                raise ValueError(f"{name}={v} must be finite and >= 0")
        if not (0 < b_small < b_big):
            raise ValueError(f"b_small={b_small}, b_big={b_big} must satisfy 0 < b_small < b_big")
        g2 = (b_big * sq_norm_big - b_small * sq_norm_small) / (b_big - b_small)
        s = (sq_norm_small - sq_norm_big) / (1.0 / b_small - 1.0 / b_big)
        d = self.decay
        self._g2 = d * self._g2 + (1 - d) * g2
        self._s = d * self._s + (1 - d) * s
        self._w = d * self._w + (1 - d)
        self.n_updates += 1

    @property
    def g2(self) -> float:
        """Smoothed estimate of |G|^2 (nan before the first update)."""
        return self._g2 / self._w if self._w > 0 else float("nan")

    @property
    def trace_sigma(self) -> float:
        """Smoothed estimate of tr(Sigma), the per-sample gradient variance (nan before the first update)."""
        return self._s / self._w if self._w > 0 else float("nan")

    @property
    def b_simple(self) -> float:
        """tr(Sigma) / |G|^2; nan until |G|^2 is estimated positive."""
        g2 = self.g2
        return self.trace_sigma / g2 if g2 > 0 else float("nan")
