"""Critical batch size: gradient noise scale, Kaplan's B_crit(L) and the steps-to-target law S(B)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

from ._validate import as_1d, check_range, same_length


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


@dataclass(frozen=True)
class CriticalBatchFit:
    """Kaplan et al. 2020: ``B_crit(L) = B_star / L**(1/alpha_B)``."""

    B_star: float
    alpha_B: float  # noqa: N815  (contract name, Kaplan et al.)
    rmse_log: float

    def predict(self, loss: np.ndarray | float) -> np.ndarray:
        """Critical batch size (same unit as the fitted batches, e.g. tokens) at loss ``loss``."""
        return self.B_star / np.asarray(loss, dtype=np.float64) ** (1.0 / self.alpha_B)


def fit_critical_batch(losses: np.ndarray, critical_batches: np.ndarray) -> CriticalBatchFit:
    """Fit ``B_crit(L) = B_star / L**(1/alpha_B)`` by least squares in log-log space:
    ``log B_crit = log B_star - (1/alpha_B) log L``. Needs at least 2 distinct losses and a decreasing
    trend (B_crit grows as loss falls), otherwise alpha_B is not positive and the fit is rejected."""
    losses = as_1d("losses", losses, positive=True)
    bc = as_1d("critical_batches", critical_batches, positive=True)
    n = same_length(losses=losses, critical_batches=bc)
    if n < 2 or np.ptp(np.log(losses)) == 0:
        raise ValueError(
            f"need >= 2 distinct losses, got {n} point(s) with {len(np.unique(losses))} distinct"
        )
    slope, intercept = np.polyfit(np.log(losses), np.log(bc), 1)
    if slope >= 0:
        raise ValueError(
            f"slope d log B_crit / d log L = {slope:.3g} must be < 0 (B_crit must grow as the loss falls)"
        )
    resid = np.log(bc) - (intercept + slope * np.log(losses))
    return CriticalBatchFit(
        B_star=float(np.exp(intercept)),
        alpha_B=float(-1.0 / slope),
        rmse_log=float(np.sqrt(np.mean(resid**2))),
    )


@dataclass(frozen=True)
class StepsToTargetFit:
    """``S(B) = S_min (1 + B_noise / B)`` steps to reach a target loss at batch size B (McCandlish et al.
    2018, eq. 2.11; used for the critical batch size by Zhang et al. 2024). Examples processed
    ``E(B) = B S(B) = E_min (1 + B / B_noise)`` with ``E_min = S_min B_noise``; the critical batch
    ``B_crit = B_noise`` is where both overheads equal 2x."""

    S_min: float
    B_noise: float
    rmse_log: float

    @property
    def E_min(self) -> float:
        return self.S_min * self.B_noise

    @property
    def B_crit(self) -> float:
        return self.B_noise

    def predict(self, B: np.ndarray | float) -> np.ndarray:
        return self.S_min * (1.0 + self.B_noise / np.asarray(B, dtype=np.float64))


def fit_steps_to_target(batch_sizes: np.ndarray, steps: np.ndarray) -> StepsToTargetFit:
    """Fit ``S(B) = S_min (1 + B_noise / B)`` to a batch-size sweep (steps each run needed to reach one
    target loss) by least squares on log S, parameters in log space (both positive)."""
    B = as_1d("batch_sizes", batch_sizes, positive=True)
    S = as_1d("steps", steps, positive=True)
    n = same_length(batch_sizes=B, steps=S)
    if n < 2 or len(np.unique(B)) < 2:
        raise ValueError(f"need >= 2 distinct batch sizes, got {len(np.unique(B))}")
    # initial guess from the linear form S = S_min + (S_min B_noise) / B
    slope, icpt = np.polyfit(1.0 / B, S, 1)
    s0 = icpt if icpt > 0 else S.min() / 2
    bn0 = slope / s0 if slope > 0 else np.median(B)

    def resid(p: np.ndarray) -> np.ndarray:
        return p[0] + np.log1p(np.exp(p[1]) / B) - np.log(S)

    res = least_squares(resid, [np.log(s0), np.log(bn0)], method="lm" if n >= 2 else "trf")
    return StepsToTargetFit(
        S_min=float(np.exp(res.x[0])),
        B_noise=float(np.exp(res.x[1])),
        rmse_log=float(np.sqrt(np.mean(res.fun**2))),
    )
