"""Schedule-aware loss curves: the multi-power law (Luo et al. 2025) and final-loss prediction.

    L(t) = L0 + A * (S1(t) + S_W)**(-alpha) - LD(t)
    S1(t) + S_W = sum_{tau <= t} eta_tau                      (forward area, warmup included)
    LD(t) = B * sum_{k <= t} (eta_{k-1} - eta_k) * G(eta_k**(-gamma) * S_k(t)),  S_k(t) = sum_{k <= tau <= t} eta_tau
    G(x) = 1 - (C x + 1)**(-beta)

LRs are normalised by the schedule's peak (eta = lr / max(lr)), so A, B, C are in "peak-LR step" units
and shared shape parameters transfer between runs of one model with different peak LRs only approximately.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np
from scipy.optimize import least_squares, nnls

from . import _calibration
from ._validate import as_1d, check_range


class NotEnoughDataError(ValueError):
    """Raised when a curve has too few valid points to predict anything (and no references help)."""


@dataclass(frozen=True, eq=False)
class Curve:
    """One training run: ``losses[i]`` measured at optimizer step ``steps[i]`` (1-based, increasing,
    irregular), and ``lr`` the full planned per-step schedule (length T = total steps; ``lr[k]`` is the
    LR of step k+1). Non-finite losses are kept here and dropped (and counted) by the fit."""

    steps: np.ndarray
    losses: np.ndarray
    lr: np.ndarray
    name: str = ""
    n_params: float | None = None
    """Parameters of the model (any fixed convention within a sweep; the fitter passes non-embedding N).
    With ``tokens_per_step`` it lets runs of other sizes and budgets serve as references."""
    tokens_per_step: float | None = None
    """Tokens per optimizer step (batch size x sequence length)."""
    batch_size: float | None = None
    """Sequences per optimizer step (informational; the batch enters the law through ``tokens_per_step``)."""
    lr_absolute: bool = True
    """Whether ``lr`` holds the real learning rates. False for a normalised shape (e.g. peak 1) whose real LR is
    unknown: the ``alone`` prediction then takes the annealing prior calibrated on runs of unknown LR, since
    how much a cooldown gains grows with the peak LR (``MultiPowerPrior.b_lr_exponent``)."""
    burn_in: float = 0.0
    """Points before this step are left out of every fit, on top of the warmup rule (``_burn_in``): for a run
    whose early transient outlasts its warmup (``metrics.law_burn_in``). A fit still keeps the later half of the
    observed steps and at least 3 points."""

    def __post_init__(self) -> None:
        steps = np.asarray(self.steps, dtype=np.float64).reshape(-1)
        losses = np.asarray(self.losses, dtype=np.float64).reshape(-1)
        lr = as_1d(f"lr (curve {self.name!r})", self.lr, min_len=1)
        if len(steps) != len(losses):
            raise ValueError(f"len(steps)={len(steps)} != len(losses)={len(losses)} (curve {self.name!r})")
        if np.any(~np.isfinite(steps)):
            i = int(np.flatnonzero(~np.isfinite(steps))[0])
            raise ValueError(f"steps[{i}]={steps[i]} must be finite (curve {self.name!r})")
        if len(steps) and (steps[0] < 1 or steps[-1] > len(lr)):
            raise ValueError(
                f"steps must lie in [1, T={len(lr)}] (T = len(lr)); got [{steps[0]:g}, {steps[-1]:g}] (curve {self.name!r})"
            )
        if np.any(np.diff(steps) <= 0):
            i = int(np.flatnonzero(np.diff(steps) <= 0)[0]) + 1
            raise ValueError(
                f"steps[{i}]={steps[i]:g} must be > steps[{i - 1}]={steps[i - 1]:g} (curve {self.name!r})"
            )
        if np.any(lr < 0):
            i = int(np.flatnonzero(lr < 0)[0])
            raise ValueError(f"lr[{i}]={lr[i]} must be >= 0 (curve {self.name!r})")
        if lr.max() <= 0:
            raise ValueError(f"max(lr)={lr.max()} must be > 0 (curve {self.name!r})")
        if not (np.isfinite(self.burn_in) and self.burn_in >= 0):
            raise ValueError(f"burn_in={self.burn_in} must be a finite step >= 0 (curve {self.name!r})")
        for key in ("n_params", "tokens_per_step", "batch_size"):
            v = getattr(self, key)
            if v is not None and not (np.isfinite(v) and v > 0):
                raise ValueError(f"{key}={v} must be a finite number > 0 or None (curve {self.name!r})")
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "losses", losses)
        object.__setattr__(self, "lr", lr)

    @property
    def total_steps(self) -> int:
        return len(self.lr)

    def truncated(self, fraction: float) -> Curve:
        """The same run observed only up to step ``fraction * T`` (for backtests)."""
        check_range("fraction", fraction, 0.0, 1.0)
        return self.observed_until(fraction * self.total_steps)

    def observed_until(self, step: float) -> Curve:
        """The same run with only the points at steps <= ``step`` (the planned schedule unchanged)."""
        keep = self.steps <= step
        return Curve(
            self.steps[keep], self.losses[keep], self.lr, self.name,
            n_params=self.n_params, tokens_per_step=self.tokens_per_step, batch_size=self.batch_size,
            lr_absolute=self.lr_absolute, burn_in=self.burn_in,
        )  # fmt: skip

    def digest(self) -> str:
        """sha1 of the data (cached on the instance: the arrays are not meant to be mutated)."""
        cached = self.__dict__.get("_digest")
        if cached is not None:
            return cached
        h = hashlib.sha1()
        for a in (self.steps, self.losses, self.lr):
            h.update(np.ascontiguousarray(a).tobytes())
        h.update(repr((self.n_params, self.tokens_per_step, self.lr_absolute, float(self.burn_in))).encode())
        object.__setattr__(self, "_digest", h.hexdigest())
        return self.__dict__["_digest"]


def schedule_from_samples(
    steps: np.ndarray, lr: np.ndarray, *, total_steps: int, warmup: str = "linear"
) -> np.ndarray:
    """Reconstruct a full per-step schedule (length ``total_steps``) from LRs logged at some steps:
    linear interpolation between logged steps, the last logged LR held to the end, and before the first
    logged step a linear warmup from 0 (``warmup="linear"``) or the first LR held (``"constant"``)."""
    steps = as_1d("steps", steps, positive=True)
    lr = as_1d("lr", lr)
    if len(steps) != len(lr):
        raise ValueError(f"len(steps)={len(steps)} != len(lr)={len(lr)}")
    if total_steps < steps[-1]:
        raise ValueError(f"total_steps={total_steps} must be >= the last logged step {steps[-1]:g}")
    if warmup not in ("linear", "constant"):
        raise ValueError(f"warmup={warmup!r} must be 'linear' or 'constant'")
    t = np.arange(1, total_steps + 1, dtype=np.float64)
    out = np.interp(t, steps, lr)
    if warmup == "linear":
        pre = t < steps[0]
        out[pre] = lr[0] * t[pre] / steps[0]
    return out


# --------------------------------------------------------------------------------------------------
# law evaluation on a compressed schedule


@dataclass(frozen=True)
class _Prepared:
    """A cleaned, downsampled curve with the schedule compressed into drop bins."""

    t: np.ndarray  # (n,) evaluation steps (1-based)
    y: np.ndarray  # (n,) losses (bin means)
    w: np.ndarray  # (n,) weights (points per bin)
    area: np.ndarray  # (n,) forward area S1(t) + S_W in peak-LR steps
    bin_drop: np.ndarray  # (M,) total normalised LR drop in the bin
    bin_eta: np.ndarray  # (M,) drop-weighted LR after the drop
    bin_cs: np.ndarray  # (M,) drop-weighted forward area just before the drop
    bin_end: np.ndarray  # (M,) last step of the bin
    n_dropped: int  # non-finite losses dropped
    n_spikes: int  # spikes rejected
    n_valid: int

    @cached_property
    def fit_pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(rows, bins, area after the bin's drop, drop) of the (point, bin) pairs that enter the annealing
        term at the fit's own points (``_ld_basis(self, t, area[:n], ...)``): the bin has ended by the point
        and the point lies past it in area. Every other pair contributes exactly 0; the fits evaluate the
        term hundreds of times per call, so only these pairs are computed (``_ld_fit_basis``)."""
        n = len(self.t)
        gap = self.area[:n, None] - self.bin_cs[None, :]
        rows, bins = np.nonzero((gap > 0) & (self.bin_end[None, :] <= self.t[:, None]))
        return rows, bins, gap[rows, bins], self.bin_drop[bins]


def _clean(steps: np.ndarray, losses: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    finite = np.isfinite(losses) & (losses > 0)
    n_dropped = int((~finite).sum())
    s, y = steps[finite], losses[finite]
    n_spikes = 0
    if len(y) >= 7:
        # spikes: points far above a running median (7 points), scale by the MAD of the deviations
        pad = np.pad(y, 3, mode="edge")
        med = np.median(np.lib.stride_tricks.sliding_window_view(pad, 7), axis=1)
        dev = y - med
        mad = 1.4826 * np.median(np.abs(dev - np.median(dev))) + 1e-12
        keep = dev < 6 * mad
        n_spikes = int((~keep).sum())
        s, y = s[keep], y[keep]
    return s, y, n_dropped, n_spikes


BURN_IN_WARMUPS = 3.0  # points before this many warmup lengths are left out (the early transient)
BURN_IN_CAP = 0.5  # ... but never past this fraction of the last observed step


def warmup_end(curve: Curve) -> float:
    """The first step at the schedule's peak LR (the end of the warmup)."""
    return float(np.argmax(curve.lr >= curve.lr.max() * (1 - 1e-9)) + 1)


def _burn_in(curve: Curve, s: np.ndarray) -> float:
    """First step fitted: BURN_IN_WARMUPS x the warmup length (the early transient is not a power law in the
    LR area) or the curve's own ``burn_in``, whichever is later, capped at BURN_IN_CAP x the last observed step
    so a short prefix keeps its later points."""
    if len(s) == 0:
        return 0.0
    first = max(BURN_IN_WARMUPS * warmup_end(curve), float(curve.burn_in))  # burn_in >= 0 (Curve checks)
    return min(first, BURN_IN_CAP * float(s[-1]))


def _prepare(
    curve: Curve, *, max_points: int, n_bins: int, extra_t: Sequence[float] = (), lr_power: float = 1.0
) -> _Prepared:
    """The fit's view of ``curve``: valid points after the burn-in (binned past ``max_points``), the LR area at
    them and at ``extra_t``, and the schedule's drops in ``n_bins`` bins. ``lr_power`` p: the schedule enters as
    (lr / peak) ** p (the area is the sum of that, the drops are its drops); 1 is the multi-power law's own form."""
    s, y, n_dropped, n_spikes = _clean(curve.steps, curve.losses)
    keep = s >= _burn_in(curve, s)
    keep[len(s) - min(len(s), 3) :] = True  # the burn-in never leaves fewer than 3 points
    s, y = s[keep], y[keep]
    n_valid = len(y)
    if len(y) > max_points:  # equal-count bins along the curve: mean step, mean loss
        edges = np.linspace(0, len(y), max_points + 1).round().astype(int)
        counts = np.diff(edges)
        s = np.add.reduceat(s, edges[:-1]) / counts
        y = np.add.reduceat(y, edges[:-1]) / counts
        w = counts.astype(np.float64)
    else:
        w = np.ones(len(y))
    eta = curve.lr / curve.lr.max()  # (T,) normalised schedule
    if lr_power != 1.0:
        eta = eta**lr_power
    cs = np.concatenate([[0.0], np.cumsum(eta)])  # cs[t] = area of steps 1..t
    t_all = np.concatenate([s, np.asarray(extra_t, dtype=np.float64)])
    area = np.interp(t_all, np.arange(len(cs)), cs)
    # drops after the peak: delta_k = eta_{k-1} - eta_k for step k (1-based) = index k-1
    peak = int(np.argmax(eta))
    delta = np.zeros_like(eta)
    delta[1:] = eta[:-1] - eta[1:]
    delta[: peak + 1] = 0.0
    ks = np.flatnonzero(delta != 0)  # 0-based step indices of drops
    if ks.size == 0:
        empty = np.zeros(0)
        return _Prepared(s, y, w, area, empty, empty, empty, empty, n_dropped, n_spikes, n_valid)
    cum = np.cumsum(np.abs(delta[ks]))
    q = np.searchsorted(cum, np.linspace(0, cum[-1], n_bins + 1)[1:-1])  # equal-drop quantile edges
    # bins must not straddle an evaluation step: add those steps as edges
    ev = np.searchsorted(ks + 1, np.unique(np.floor(t_all)), side="right")
    cut = np.unique(np.concatenate([q, ev, [len(ks)]]))
    cut = cut[(cut > 0) & (cut <= len(ks))]
    starts = np.concatenate([[0], cut[:-1]])
    d = delta[ks]
    bin_drop = np.add.reduceat(d, starts)
    wabs = np.abs(d)
    wsum = np.add.reduceat(wabs, starts)
    bin_eta = np.add.reduceat(wabs * eta[ks], starts) / wsum
    bin_cs = np.add.reduceat(wabs * cs[ks], starts) / wsum  # cs[k] with k 0-based = area before step k+1
    bin_end = (ks[cut - 1] + 1).astype(np.float64)
    return _Prepared(s, y, w, area, bin_drop, bin_eta, bin_cs, bin_end, n_dropped, n_spikes, n_valid)


def _anneal_response(x: np.ndarray, beta: float) -> np.ndarray:
    """G(x) = 1 - (1 + x)**-beta, the share of a drop's gain realised after scaled area x (``_ld_basis``)."""
    return -np.expm1(-beta * np.log1p(x))


def _ld_basis(
    p: _Prepared, t: np.ndarray, area: np.ndarray, C: float, beta: float, gamma: float
) -> np.ndarray:
    """sum_bins drop * G(eta**-gamma * S_k(t)) for each t (LD / B)."""
    if p.bin_drop.size == 0:
        return np.zeros(len(t))
    # a schedule that ends at exactly 0 (WSD or cosine to zero) has a last bin of eta 0 and no area after it:
    # 0**-gamma * 0 would be nan; floored, that bin's term is 0 there (the drop has had no steps to act)
    eta = np.maximum(p.bin_eta, ETA_FLOOR)
    x = eta[None, :] ** (-gamma) * np.maximum(area[:, None] - p.bin_cs[None, :], 0.0)  # (n, M)
    g = _anneal_response(C * x, beta)
    g = np.where(p.bin_end[None, :] <= t[:, None], g, 0.0)
    return g @ p.bin_drop


_LD_MEMO_SIZE = 4  # shape triples remembered per prepared curve (see _ld_fit_basis)


def _ld_fit_basis(p: _Prepared, C: float, beta: float, gamma: float) -> np.ndarray:
    """``_ld_basis(p, p.t, p.area[: len(p.t)], C, beta, gamma)`` over the pairs that are not 0 only (read-only).

    The last few (C, beta, gamma) are remembered on ``p``: a fit's numeric Jacobian steps alpha (and the
    sweep model's a) with the annealing shape unchanged, so those steps reuse the costly term."""
    memo = p.__dict__.setdefault("_ld_memo", {})
    key = (float(C), float(beta), float(gamma))
    out = memo.get(key)
    if out is not None:
        return out
    rows, bins, gap, drop = p.fit_pairs
    if rows.size == 0:
        out = np.zeros(len(p.t))
    else:
        x = (C * np.maximum(p.bin_eta, ETA_FLOOR) ** (-gamma))[bins] * gap  # per bin first: M powers, not nnz
        g = _anneal_response(x, beta)
        out = np.bincount(rows, weights=g * drop, minlength=len(p.t))
    out.flags.writeable = False
    if len(memo) >= _LD_MEMO_SIZE:
        memo.pop(next(iter(memo)))
    memo[key] = out
    return out


ETA_FLOOR = 1e-6  # the smallest normalised LR of a drop bin in the annealing term (_ld_basis)

# nonlinear parameters theta = (log alpha, log C, log beta, gamma)
_LO = np.array([np.log(0.02), np.log(1e-7), np.log(0.02), 0.0])
_HI = np.array([np.log(3.0), np.log(10.0), np.log(5.0), 1.5])


@dataclass(frozen=True)
class MultiPowerPrior:
    """Weak Gaussian prior on the shape parameters (in the fit's coordinates) and on B relative to the
    loss level: B ~ N(b_rel * loss_last, (b_rel_sd * loss_last)**2). The defaults are the generic weak
    regulariser of ``fit_multipower`` and of the with-references fit (weight 0.05; chosen by hand).
    Without references a constant-LR prefix cannot identify the annealing term and the prior decides it:
    that case uses ``NO_REF_PRIOR``, whose constants are fitted on calibration curves (empirical Bayes,
    ``benchmarks/calibrate_laws.py``, constants in ``_calibration.py``). There the B mean grows with the
    run's peak LR: ``b_rel * (peak / b_lr_ref) ** b_lr_exponent``, the peak clipped to ``b_lr_range`` (the
    LRs the exponent was fitted on); a curve whose LR scale is unknown (``Curve.lr_absolute`` False) takes
    ``b_rel_unknown_lr`` (``b_rel`` when None). With a known LR and ``Curve.n_params`` the mean also changes with
    the model's size, times ``(N / b_n_ref) ** b_n_exponent`` with N clipped to ``b_n_range`` (the sizes that
    exponent was fitted on, all of them runs with a known LR): a larger model gains more of its loss from the same
    relative LR drop (on lr_schedules a size-blind prior left the cooldowns and cosine tails of the 124M-360M runs
    predicted 0.5-1.5% too high, those of the 33M-93M cosine runs too low). ``for_curve`` resolves them."""

    theta: tuple[float, float, float, float] = (np.log(0.5), np.log(2e-3), np.log(0.6), 0.5)
    theta_sd: tuple[float, float, float, float] = (0.7, 2.0, 0.7, 0.4)
    b_rel: float = 0.035
    b_rel_sd: float = 0.02
    b_lr_exponent: float = 0.0
    b_lr_ref: float = 1e-3
    b_lr_range: tuple[float, float] = (1e-4, 3e-3)
    b_rel_unknown_lr: float | None = None
    b_n_exponent: float = 0.0
    b_n_ref: float = 1e8
    b_n_range: tuple[float, float] = (1e7, 1e10)

    def __post_init__(self) -> None:
        for name in ("b_rel", "b_rel_sd", "b_lr_ref", "b_n_ref"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"MultiPowerPrior.{name}={v} must be finite and > 0")
        for name in ("b_lr_exponent", "b_n_exponent"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"MultiPowerPrior.{name}={getattr(self, name)} must be finite")
        for name in ("b_lr_range", "b_n_range"):
            lo, hi = getattr(self, name)
            if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
                raise ValueError(f"MultiPowerPrior.{name}=({lo}, {hi}) must be finite with 0 < low <= high")
        u = self.b_rel_unknown_lr
        if u is not None and not (math.isfinite(u) and u > 0):
            raise ValueError(f"MultiPowerPrior.b_rel_unknown_lr={u} must be None or finite and > 0")

    def for_curve(self, curve: Curve) -> MultiPowerPrior:
        """This prior with the B mean (and its sd, in proportion) resolved for ``curve``'s peak LR and size."""
        if not curve.lr_absolute:
            b = self.b_rel if self.b_rel_unknown_lr is None else self.b_rel_unknown_lr
        elif self.b_lr_exponent == 0.0:
            b = self.b_rel
        else:
            peak = float(np.clip(curve.lr.max(), *self.b_lr_range))
            b = self.b_rel * (peak / self.b_lr_ref) ** self.b_lr_exponent
        if self.b_n_exponent != 0.0 and curve.n_params is not None and curve.lr_absolute:
            b *= (float(np.clip(curve.n_params, *self.b_n_range)) / self.b_n_ref) ** self.b_n_exponent
        return replace(
            self, b_rel=b, b_rel_sd=self.b_rel_sd * b / self.b_rel, b_lr_exponent=0.0, b_n_exponent=0.0
        )


NO_REF_PRIOR = MultiPowerPrior(
    theta=(np.log(0.5), _calibration.NO_REF_LOG_C, np.log(0.6), 0.5),
    b_rel=_calibration.NO_REF_B_REL,
    b_rel_sd=_calibration.NO_REF_B_REL * _calibration.NO_REF_B_SD_FACTOR,
    b_lr_exponent=_calibration.NO_REF_B_LR_EXPONENT,
    b_lr_range=_calibration.NO_REF_B_LR_RANGE,
    b_rel_unknown_lr=_calibration.NO_REF_B_REL_UNKNOWN_LR,
    b_n_exponent=_calibration.NO_REF_B_N_EXPONENT,
    b_n_range=_calibration.NO_REF_B_N_RANGE,
)


@dataclass(frozen=True)
class MultiPowerFit:
    """Multi-power law fitted to one or more curves: shared A, alpha, B, C, beta, gamma; L0 per curve."""

    L0: tuple[float, ...]
    A: float
    alpha: float
    B: float
    C: float
    beta: float
    gamma: float
    rmse: float
    n_points: int
    theta: np.ndarray = field(repr=False)
    lr_power: float = 1.0  # the schedule's power in the fit's view (``_prepare``)

    def predict(self, curve: Curve, steps: np.ndarray, *, index: int = 0) -> np.ndarray:
        """Loss of ``curve`` (fitted as number ``index``) at ``steps`` under its schedule."""
        steps = np.asarray(steps, dtype=np.float64)
        p = _prepare(curve, max_points=0, n_bins=256, extra_t=steps, lr_power=self.lr_power)
        area = p.area[len(p.t) :]
        return (
            self.L0[index]
            + self.A * area ** (-self.alpha)
            - self.B * _ld_basis(p, steps, area, self.C, self.beta, self.gamma)
        )


def _fit(
    preps: Sequence[_Prepared],
    *,
    prior: MultiPowerPrior,
    prior_weight: float,
    theta0: np.ndarray,
    own_amplitude: bool = False,
    curve_weights: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Variable projection: outer least squares over theta, inner non-negative LS over (L0_c.., A, B)."""
    n_c = len(preps)
    n_a = n_c if own_amplitude else 1
    y = np.concatenate([p.y for p in preps])
    cw = np.ones(n_c) if curve_weights is None else np.asarray(curve_weights, float)
    sw = np.sqrt(np.concatenate([p.w * cw[i] for i, p in enumerate(preps)]))
    level = float(np.average(preps[-1].y[-3:]))
    scale = max(float(np.std(np.diff(y))) if len(y) > 2 else 0.01, 1e-3)  # ~ noise level
    pth = np.array(prior.theta)
    psd = np.array(prior.theta_sd)
    b_mu, b_sd = prior.b_rel * level, prior.b_rel_sd * level

    def design(theta: np.ndarray) -> np.ndarray:
        alpha, C, beta, gamma = np.exp(theta[0]), np.exp(theta[1]), np.exp(theta[2]), theta[3]
        cols = []
        for c, p in enumerate(preps):
            x = np.zeros((len(p.t), n_c + n_a + 1))
            x[:, c] = 1.0
            x[:, n_c + (c if own_amplitude else 0)] = p.area[: len(p.t)] ** (-alpha)
            x[:, n_c + n_a] = -_ld_fit_basis(p, C, beta, gamma)
            cols.append(x)
        return np.vstack(cols)

    def inner(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = design(theta) * sw[:, None] / scale
        rhs = y * sw / scale
        # prior row on B (weight prior_weight), as a pseudo-observation
        prow = np.zeros(n_c + n_a + 1)
        prow[n_c + n_a] = prior_weight / b_sd
        x2 = np.vstack([x, prow])
        rhs2 = np.concatenate([rhs, [prior_weight * b_mu / b_sd]])
        coef, _ = nnls(x2, rhs2, maxiter=200)  # L0_c >= 0, A >= 0, B >= 0 (the LD column is -LD)
        return coef, x2 @ coef - rhs2  # data residuals and the B prior row

    def resid(theta: np.ndarray) -> np.ndarray:
        _, r = inner(theta)
        return np.concatenate([r, prior_weight * (theta - pth) / psd])

    res = least_squares(
        resid, np.clip(theta0, _LO + 1e-9, _HI - 1e-9), bounds=(_LO, _HI), x_scale=1.0, max_nfev=200
    )
    coef, r = inner(res.x)
    rmse = float(np.sqrt(np.sum((r[:-1] * scale) ** 2) / np.sum(sw**2)))
    return res.x, coef, rmse


def fit_multipower(
    curves: Sequence[Curve],
    *,
    prior: MultiPowerPrior | None = None,
    prior_weight: float = 1.0,
    max_points: int = 64,
    n_bins: int = 48,
    lr_power: float = 1.0,
) -> MultiPowerFit:
    """Fit the multi-power law (module docstring) jointly to ``curves``: one L0 per curve, all other
    parameters shared. ``prior_weight`` scales the weak prior (0 disables it). ``lr_power`` != 1 fits the
    schedule as (lr / peak) ** lr_power (``_prepare``; ``predict_final_loss`` uses its calibrated
    ``LR_POWER``)."""
    if len(curves) == 0:
        raise ValueError("curves is empty; at least one curve is needed")
    prior = prior or MultiPowerPrior()
    lr_power = _checked_lr_power(lr_power)
    preps = [_prepare(c, max_points=max_points, n_bins=n_bins, lr_power=lr_power) for c in curves]
    for c, p in zip(curves, preps):
        if len(p.y) < 3:
            raise NotEnoughDataError(f"curve {c.name!r} has {len(p.y)} valid points; at least 3 are needed")
    theta, coef, rmse = _fit(preps, prior=prior, prior_weight=prior_weight, theta0=np.array(prior.theta))
    return _as_fit(theta, coef, rmse, len(curves), sum(p.n_valid for p in preps), lr_power)


def _checked_lr_power(lr_power: float) -> float:
    """``lr_power`` as a float, or ValueError naming it and its range (0, 2]."""
    if not (math.isfinite(lr_power) and 0.0 < lr_power <= 2.0):
        raise ValueError(f"lr_power={lr_power} must be in (0, 2]")
    return float(lr_power)


def _as_fit(
    theta: np.ndarray, coef: np.ndarray, rmse: float, n_c: int, n_points: int, lr_power: float = 1.0
) -> MultiPowerFit:
    return MultiPowerFit(
        L0=tuple(float(v) for v in coef[:n_c]),
        A=float(coef[n_c]),
        alpha=float(np.exp(theta[0])),
        B=float(coef[n_c + 1]),
        C=float(np.exp(theta[1])),
        beta=float(np.exp(theta[2])),
        gamma=float(theta[3]),
        rmse=rmse,
        n_points=n_points,
        theta=theta,
        lr_power=lr_power,
    )
