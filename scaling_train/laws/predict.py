"""Final-loss and remaining-curve prediction for one run, alone or with any other runs of its sweep.

Three candidate models, each a multi-power law (``curve.py``) fitted to different data:

- ``alone``: the target's own observed points, annealing shape from a calibrated prior
  (``NO_REF_PRIOR``): a constant-LR prefix says nothing about how much a cooldown will gain.
- ``same_size``: the target jointly with references of the same model size (other horizons, schedules or
  peak LRs): shared A, alpha, B, C, beta, gamma; L0 per run.
- ``sweep``: the sweep-level trajectory model over references of any size (``Curve.n_params`` and
  ``Curve.tokens_per_step`` given)::

      L_i(t) = E + K * N_i**(-a) + delta_i + (A + A_N * log(N_i / N_ref)) * D_i(t)**(-alpha) - B * LD_i(t)
      D_i(t) = tokens_per_step_i * S1_i(t)       (tokens weighted by the normalised LR: the forward area)

  with the annealing term LD of the multi-power law, every parameter shared except a per-run offset
  delta_i (ridge): nominally ~ N(0, (SIGMA_REF * loss)^2) for the references, which must follow the law (a
  looser ridge lets per-run offsets mimic any N-dependence with few sizes), ~ N(0, (SIGMA_DELTA * loss)^2)
  for the target; in the fit, sd / the per-point noise (``_fit_sweep``; docs/laws.md). A_N lets the data
  term's coefficient change with the size (N_ref: the references' geometric mean size; ridge: its effect at the
  curves' median last data term ~ N(0, (SIGMA_SIZE_SLOPE * loss)^2) per e-fold of N): with one A for every size
  a larger model was predicted to gain no more per token than the smaller ones, and the quickstart's largest
  sizes came out 4-7% too high from 40% of their runs (held-out ``qs@40`` sweep candidate: mean abs 4.4% ->
  0.8%; the lr_schedules ladders' held-out ``sweep@25`` / ``live@30``: 0.5-1.5% -> 0.3-1.1%). The Chinchilla form
  with the data term measured along each run's schedule: it predicts a run before it starts (delta = 0) and
  its prefix moves delta. Once the target has points of its own, its data
  term also gets its own extra coefficient (``SweepFit.slope``, ridge in loss units: its effect at T ~ N(0,
  (SIGMA_SLOPE * loss)^2)): runs of other shapes (Gemstone's depths and widths) or other data follow the law's
  D exponent but not its coefficient, and an offset alone carries the prefix's misfit to T. Measured
  (2026-12-04): Gemstone 1536x50 at 35% of a 26k-step run, sweep candidate +3.80% with the offset alone,
  +3.36% / +2.63% / +1.59% at SIGMA_SLOPE 0.0015 / 0.003 / 0.02; the quickstart's runs at 40%, mean abs
  2.95% -> 2.91% / 2.83% / 1.75%. The shipped 0.0015 was chosen on the calibration groups' live and sweep@25
  cases, where a looser prior follows the training loss's noise (``calibrate_laws.py``). The coefficient's
  posterior enters the candidate's scale (``v_fit``).

Every candidate sees the schedule as (lr / peak) ** LR_POWER (``curve._prepare``: the LR area and the drops;
1 is the multi-power law's own form). Profiled on the calibration groups' ``same_size`` cases, where the shared
shape must carry from one horizon or schedule of a model to another (``calibrate_laws.py`` step 0): with 1, a
cosine run's low-LR tail gained more than the law fitted on its prefix or on other horizons said (predictions
from 25% drifted high over the last 40% of the run, by up to 2% at 60k steps).

The interval is for the final loss as it will be read, not only the smooth curve: a noisy (training-loss)
curve's read off its last points scatters by its per-point noise x ~0.24 (``read_noise``, estimated from the
target's own points), which is added to the model's scale in quadrature; the calibration reads its quantiles
the same way.

Only finished references are used (``is_running``): a reference still training has not shown its own
annealing and its asymptote is unconstrained, and on real ladders (protocol settings ``live@30`` /
``live@50``: every other run of the sweep as far as it has trained) predictions that leaned on running
references were worse than the target alone (validation loss at 30%: 1.19% against 0.65% mean abs error on
held-out groups), while the finished ones alone match or beat it (0.67%; at 50%: 0.55% against 0.78%).
The running references are named in ``LossPrediction.ignored``.

A reference only ever enters through a candidate, and candidates are combined by inverse variance, where
a candidate's variance is its calibrated scale squared plus its squared error on a held-out tail of the
target's own prefix (``_backtest_error``): a reference model that does not describe the target's own points
loses its weight, and a lone ``alone`` candidate that does not describe them gets a wider interval.
Disagreement between the candidates widens the interval (``d`` below). A prefix extrapolated further than
the calibration cases that fitted the scales (``_beyond``: before ~18% of a constant-LR run) has its own-prefix
candidates' sd multiplied by a factor fitted on early prefixes of calibration runs; one extrapolated further
than those (before ~2% of a constant-LR run) is predicted as if not started. A target with 1-9 points of its own
multiplies every candidate's scale by 1 to 3 (``few_factor``): so few points do not pin its offset or its
extrapolation, the less so the more steeply they still fall (a tiny model early in its fall needs the full
3, a sparsely logged long run past its first quarter hardly any); the steepness of factor 1 (``FEW_SLOPE``) is
fitted on the calibration cases with so few points. The interval constants are fitted on calibration groups of
real curves by ``benchmarks/calibrate_laws.py`` and stored in ``_calibration.py`` with the list of groups
they came from. A blend's interval quantiles (in units of the scale) depend on the regime the predictor sees
(``interval_regime``: before or from 60% of the run; a smooth or a noisy read), each the widest over the
calibration settings in that regime.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from scipy.optimize import least_squares, nnls

from . import _calibration
from .curve import (
    _HI,
    _LO,
    NO_REF_PRIOR,
    Curve,
    MultiPowerFit,
    MultiPowerPrior,
    NotEnoughDataError,
    _as_fit,
    _checked_lr_power,
    _fit,
    _ld_basis,
    _ld_fit_basis,
    _prepare,
    _Prepared,
    fit_multipower,
    warmup_end,
)

CANDIDATES = ("alone", "same_size", "sweep")
FEW_POINTS = 10  # a target with fewer fitted points than this: every candidate's scale times few_factor
FEW_FACTOR = 3.0  # the most few_factor gives (and what a target with 1-2 points gets)
BACKTEST_POINTS = 12  # _backtest_error needs this many valid points
Z90 = 1.6448536269514722  # the standard normal 95% quantile: a Gaussian 90% interval is +-Z90 sd
READ_WINDOW = 40  # a noisy curve's final loss is read from its last READ_WINDOW points (read_noise)
_READ_X = np.vander(np.arange(READ_WINDOW) - (READ_WINDOW - 1) / 2, 3)
# standard error of a quadratic's value at the window's centre, per unit of per-point noise
_READ_FACTOR = float(np.sqrt(np.linalg.inv(_READ_X.T @ _READ_X)[-1, -1]))


def _point_noise(curve: Curve, last: int = 4 * READ_WINDOW) -> float | None:
    """Relative per-point noise of ``curve`` over its last ``last`` valid points: a robust sd (1.4826 MAD) of
    the second differences / sqrt(6), which a smooth trend barely moves; None under 8 points."""
    y = curve.losses[np.isfinite(curve.losses)][-last:]
    if len(y) < 8:
        return None
    d2 = np.diff(y, 2)
    sd = 1.4826 * float(np.median(np.abs(d2 - np.median(d2)))) / math.sqrt(6.0)
    return sd / float(np.median(np.abs(y)))


def read_noise(target: Curve, references: Sequence[Curve] = ()) -> float:
    """Relative standard error with which ``target``'s final loss will be measured: a curve logged every
    batch (a training loss) scatters by a few percent per point, and its final loss is read as the value at
    the centre of a quadratic fitted to its last ``READ_WINDOW`` points (as ``tests/fixtures/protocol.py``
    reads the truth): that read is off the smooth curve by the per-point noise x ``_READ_FACTOR`` (~0.24).
    The per-point noise comes from the target's own points, or the references' median before it has 8. On
    the lr_schedules training losses this estimate is 0.86-1.0x the truth's own standard error (median per
    protocol setting); on validation and Gemstone curves it is ~0.01-0.03%. The interval covers the read,
    not only the smooth curve: that scatter is the data order's, shared by every run at a step (a cooldown
    branch's residuals correlate 1.00 with its parent's), so no model of the curve can predict it."""
    sd = _point_noise(target)
    if sd is None:
        seen = [x for r in references if (x := _point_noise(r)) is not None]
        sd = float(np.median(seen)) if seen else 0.0
    return sd * _READ_FACTOR


@dataclass(frozen=True)
class LossPrediction:
    """Predicted loss at the last step T of the schedule with a 90% interval [low, high].

    ``n_used`` valid target points, ``n_dropped`` non-finite losses dropped, ``n_spikes`` spikes rejected,
    ``extrapolation`` = log(area(T) / area(last observed step)), ``fit`` the multi-power fit of the
    heaviest candidate (None for the sweep model). ``mode`` names the candidates used ("alone",
    "same_size", "sweep", joined by "+"); ``candidates`` their final-loss predictions and ``weights`` their
    weights. ``curve_steps`` / ``curve`` / ``curve_low`` / ``curve_high``: the predicted remaining curve
    and its 90% band from the last observed step to T (empty when no curve was asked for)."""

    loss: float
    low: float
    high: float
    n_used: int
    n_dropped: int
    n_spikes: int
    extrapolation: float
    fit: MultiPowerFit | None = field(default=None, repr=False)
    rel_scale: float = float("nan")  # uncalibrated relative scale u; interval = loss * (1 + q * u)
    read_noise: float = 0.0  # the part of u that is the final loss's measurement noise (``read_noise``)
    mode: str = ""
    scale_terms: tuple[float, ...] = field(default=(), repr=False)
    candidates: dict[str, float] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    curve_steps: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    curve: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    curve_low: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    curve_high: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    ignored: tuple[str, ...] = ()
    """Names of the references left out because they are still running (``is_running``)."""


# --------------------------------------------------------------------------------------------------
# the sweep-level model


_SW_LO = np.r_[_LO, np.log(0.05)]  # theta = (log alpha, log C, log beta, gamma, log a)
_SW_HI = np.r_[_HI, np.log(1.5)]


# prior mean of log a (the N exponent): a few-fold range of sizes does not identify it, so its mean is fitted
# on the calibration groups' before-start errors (empirical Bayes, benchmarks/calibrate_laws.py)
def _sw_prior() -> np.ndarray:
    return np.r_[np.log(0.5), np.log(2e-3), np.log(0.6), 0.5, _calibration.SWEEP_LOG_A]


_SW_PRIOR_SD = np.array([0.7, 2.0, 0.7, 0.4, 0.7])
_N_UNIT, _D_UNIT = 1e8, 1e9  # conditioning: N in units of 1e8 parameters, D in units of 1e9 tokens


@dataclass(frozen=True)
class SweepFit:
    """The sweep-level trajectory model (module docstring) fitted to several runs."""

    E: float
    K: float
    a: float
    A: float
    alpha: float
    B: float
    C: float
    beta: float
    gamma: float
    delta: tuple[float, ...]  # per run, in the order fitted
    sigma_delta: float  # prior sd of a run's offset (absolute loss units)
    rmse: float
    n_points: int
    theta: np.ndarray = field(repr=False)
    lr_power: float = 1.0  # the schedule's power in the fit's view (``curve._prepare``)
    slope: float = 0.0  # the target's own extra data-term coefficient (last curve fitted; 0 without one)
    A_N: float = 0.0  # the data-term coefficient's change per e-fold of N (A + A_N * log(N / N_ref))
    log_n_ref: float = 0.0  # log(N_ref / _N_UNIT): the references' mean log size

    def predict(self, curve: Curve, steps: np.ndarray, *, index: int | None = None) -> np.ndarray:
        """Loss of ``curve`` at ``steps`` (its fitted offset when ``index`` is given, else delta = 0)."""
        steps = np.asarray(steps, dtype=np.float64)
        p = _prepare(curve, max_points=0, n_bins=256, extra_t=steps, lr_power=self.lr_power)
        area = p.area[len(p.t) :]
        d = area * float(curve.tokens_per_step) / _D_UNIT
        off = self.delta[index] if index is not None else 0.0
        a_run = self.A + self.A_N * (math.log(float(curve.n_params) / _N_UNIT) - self.log_n_ref)
        a_run += self.slope if index is not None and index == len(self.delta) - 1 else 0.0
        return (
            self.E + self.K * (float(curve.n_params) / _N_UNIT) ** (-self.a) + off
            + a_run * d ** (-self.alpha) - self.B * _ld_basis(p, steps, area, self.C, self.beta, self.gamma)
        )  # fmt: skip


def _fit_sweep(
    curves: Sequence[Curve],
    preps: Sequence[_Prepared],
    *,
    sigma_rel: float,
    theta0: np.ndarray,
    target_sigma_rel: float | None = None,
    lr_power: float = 1.0,
    target_slope_rel: float | None = None,
    target_area_T: float | None = None,
    size_slope_rel: float = 0.0,
) -> SweepFit:
    """Variable projection: outer LS over theta, inner NNLS over (E, K, A, B, delta+_i, delta-_i) with a
    ridge row per offset (sd ``sigma_rel`` x the loss level; the last curve's ``target_sigma_rel`` when given:
    the references must follow the law, the target may deviate and its prefix says by how much) and a weak
    prior on theta. With ``target_slope_rel`` > 0 (and ``target_sigma_rel`` given) the last curve also gets its
    own extra data-term coefficient (+-, ridge: its effect at its last step T, whose LR area is ``target_area_T``,
    has sd ``target_slope_rel`` x the loss level, in loss units). With ``size_slope_rel`` > 0 and >= 2 sizes the
    data-term coefficient depends on the size, A + A_N log(N / N_ref) (N_ref: the references' geometric mean
    size; +-, ridge: A_N's effect at the curves' median last data term has sd ``size_slope_rel`` x the loss
    level per e-fold of N)."""
    n_c = len(preps)
    y = np.concatenate([p.y for p in preps])
    sw = np.sqrt(np.concatenate([p.w for p in preps]))
    level = float(np.median(y))
    noise = [float(np.std(np.diff(p.y))) for p in preps if len(p.y) > 2]
    scale = max(float(np.median(noise)) if noise else 0.01, 1e-3)  # ~ per-point noise
    sig = sigma_rel * level
    nrel = np.array([float(c.n_params) / _N_UNIT for c in curves])
    drel = np.array([float(c.tokens_per_step) / _D_UNIT for c in curves])
    slope = target_sigma_rel is not None and target_slope_rel is not None and target_slope_rel > 0
    if slope and not (target_area_T is not None and target_area_T > 0):
        raise ValueError(
            f"target_area_T={target_area_T} must be > 0 with target_slope_rel={target_slope_rel}"
        )
    n_refs = n_c - 1 if target_sigma_rel is not None and n_c > 1 else n_c
    log_n_ref = float(np.mean(np.log(nrel[:n_refs])))
    lnn = np.log(nrel) - log_n_ref
    inter = size_slope_rel > 0 and np.ptp(np.log(nrel)) > 0.01
    n_lin = 4 + 2 * n_c + 2 * inter + 2 * slope
    prior = _sw_prior()

    def design(theta: np.ndarray) -> np.ndarray:
        alpha, C, beta, gamma, a = (
            np.exp(theta[0]),
            np.exp(theta[1]),
            np.exp(theta[2]),
            theta[3],
            np.exp(theta[4]),
        )
        rows = []
        for c, p in enumerate(preps):
            x = np.zeros((len(p.t), n_lin))
            area = p.area[: len(p.t)]
            x[:, 0] = 1.0
            x[:, 1] = nrel[c] ** (-a)
            x[:, 2] = (area * drel[c]) ** (-alpha)
            x[:, 3] = -_ld_fit_basis(p, C, beta, gamma)
            x[:, 4 + 2 * c] = 1.0
            x[:, 5 + 2 * c] = -1.0
            if inter:
                x[:, 4 + 2 * n_c] = lnn[c] * x[:, 2]
                x[:, 5 + 2 * n_c] = -lnn[c] * x[:, 2]
            if slope and c == n_c - 1:
                x[:, -2] = x[:, 2]
                x[:, -1] = -x[:, 2]
            rows.append(x)
        return np.vstack(rows)

    ridge = np.zeros((2 * n_c + 2 * inter + 2 * slope, n_lin))
    sigs = np.full(n_c, sig)
    if target_sigma_rel is not None:
        sigs[-1] = target_sigma_rel * level
    # delta+- ridge rows of coef * scale / sig, beside data rows of residual / scale: the effective prior sd is
    # sig / scale (docs/laws.md), looser than sig; SIGMA_REF / SIGMA_DELTA were set with the rows as they are
    ridge[np.arange(2 * n_c), 4 + np.arange(2 * n_c)] = scale / np.repeat(sigs, 2)

    d_end = float(target_area_T) * drel[-1] if slope else 0.0  # the target's data term at its last step
    # the curves' median data term at their last fitted point: where A_N's prior sd is set
    d_typ = float(
        np.median([p.area[len(p.t) - 1] * drel[i] for i, p in enumerate(preps) if len(p.t)] or [1.0])
    )

    def inner(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if inter:  # A_N's effect at d_typ per e-fold of N ~ N(0, (size_slope_rel * level)^2)
            g = d_typ ** (-np.exp(theta[0]))
            ridge[2 * n_c, 4 + 2 * n_c] = ridge[2 * n_c + 1, 5 + 2 * n_c] = g / (size_slope_rel * level)
        if slope:  # its change in the data term at T ~ N(0, (target_slope_rel * level)^2)
            g = d_end ** (-np.exp(theta[0]))
            ridge[-2, -2] = ridge[-1, -1] = g / (target_slope_rel * level)
        x = np.vstack([design(theta) * sw[:, None] / scale, ridge])
        rhs = np.r_[y * sw / scale, np.zeros(len(ridge))]
        coef, _ = nnls(x, rhs, maxiter=400)
        return coef, x @ coef - rhs

    def resid(theta: np.ndarray) -> np.ndarray:
        _, r = inner(theta)
        return np.r_[r, 0.05 * (theta - prior) / _SW_PRIOR_SD]

    res = least_squares(
        resid, np.clip(theta0, _SW_LO + 1e-9, _SW_HI - 1e-9), bounds=(_SW_LO, _SW_HI), max_nfev=200
    )
    coef, r = inner(res.x)
    n_data = len(y)
    rmse = float(np.sqrt(np.sum((r[:n_data] * scale) ** 2) / np.sum(sw**2)))
    th = res.x
    return SweepFit(
        E=float(coef[0]), K=float(coef[1]), a=float(np.exp(th[4])), A=float(coef[2]), alpha=float(np.exp(th[0])),
        B=float(coef[3]), C=float(np.exp(th[1])), beta=float(np.exp(th[2])), gamma=float(th[3]),
        delta=tuple(float(coef[4 + 2 * c] - coef[5 + 2 * c]) for c in range(n_c)), sigma_delta=float(sigs[-1]),
        rmse=rmse, n_points=int(sum(p.n_valid for p in preps)), theta=th, lr_power=lr_power,
        slope=float(coef[-2] - coef[-1]) if slope else 0.0,
        A_N=float(coef[4 + 2 * n_c] - coef[5 + 2 * n_c]) if inter else 0.0, log_n_ref=log_n_ref,
    )  # fmt: skip


def fit_sweep(
    curves: Sequence[Curve],
    *,
    sigma_rel: float | None = None,
    max_points: int = 64,
    n_bins: int = 48,
    lr_power: float | None = None,
) -> SweepFit:
    """Fit the sweep-level trajectory model (module docstring) to ``curves``; every curve needs
    ``n_params`` and ``tokens_per_step``. ``lr_power``: the schedule's power in the fit's view (``curve._prepare``;
    default: the calibrated ``LR_POWER`` that ``predict_final_loss`` uses)."""
    if len(curves) == 0:
        raise ValueError("curves is empty; at least one curve is needed")
    for i, c in enumerate(curves):
        if c.n_params is None or c.tokens_per_step is None:
            raise ValueError(
                f"curves[{i}] ({c.name!r}) has n_params={c.n_params}, tokens_per_step={c.tokens_per_step}; "
                "the sweep model needs both"
            )
    lp = _checked_lr_power(_calibration.LR_POWER if lr_power is None else lr_power)
    preps = [_prepare(c, max_points=max_points, n_bins=n_bins, lr_power=lp) for c in curves]
    sr = _calibration.SIGMA_REF if sigma_rel is None else sigma_rel
    return _fit_sweep(
        curves,
        preps,
        sigma_rel=sr,
        theta0=_sw_prior(),
        lr_power=lp,
        size_slope_rel=_calibration.SIGMA_SIZE_SLOPE,
    )


# --------------------------------------------------------------------------------------------------
# candidates


@dataclass(frozen=True)
class _Candidate:
    name: str
    final: float  # predicted loss at T
    predict: object  # steps -> losses (callable)
    u: float  # calibrated relative scale (without the q quantiles)
    terms: tuple[float, ...]
    fit: object = None  # MultiPowerFit or SweepFit
    size_error: float = 0.0  # sweep: its rms relative error extrapolating this far in size (_size_backtest)


_FIT_CACHE: OrderedDict[tuple, object] = OrderedDict()  # reference-only fits, keyed by the curves' digests
_PREP_CACHE: OrderedDict[tuple, object] = OrderedDict()  # prepared curves


def _cached(cache: OrderedDict, size: int, key: tuple, make):
    """LRU memo: ``cache[key]``, computed by ``make()`` on a miss; at most ``size`` entries."""
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    val = cache[key] = make()
    if len(cache) > size:
        cache.popitem(last=False)
    return val


def _prep(curve: Curve, mp: int, nb: int, extra_t: Sequence[float] = ()) -> _Prepared:
    """``_prepare`` memoised by the curve's digest: a sweep's references are prepared once, not per call."""
    lp = _calibration.LR_POWER
    key = (curve.digest(), mp, nb, tuple(float(x) for x in extra_t), lp)
    return _cached(
        _PREP_CACHE, 512, key, lambda: _prepare(curve, max_points=mp, n_bins=nb, extra_t=extra_t, lr_power=lp)
    )


def _extrapolation(p: _Prepared) -> tuple[float, float]:
    """(area at the last fitted step, log(area(T) / that area)) of a curve prepared with T as its last extra step;
    with no fitted point, the area of a thousandth of T's stands in for the last one."""
    n_t = len(p.t)
    area_last = p.area[n_t - 1] if n_t else max(p.area[-1] * 1e-3, 1e-9)
    return area_last, float(np.log(p.area[-1] / area_last))


def own_extrapolation(target: Curve, mp: int = 64, nb: int = 48) -> float:
    """log(area(T) / area(last fitted step)) of ``target``'s own prefix (``inf`` without valid points): how far a
    candidate extrapolates it, in e-folds of the LR area (``LossPrediction.extrapolation``)."""
    p = _prep(target, mp, nb, [float(target.total_steps)])
    return _extrapolation(p)[1] if len(p.t) else math.inf


def _scale(cal: dict, few: float, extrap: float, v_fit: float, extra: float = 0.0) -> float:
    """u = few * sqrt(s0^2 + (s1 * extrap)^2 + v_fit + extra^2)."""
    return float(few * np.sqrt(cal["s0"] ** 2 + (cal["s1"] * extrap) ** 2 + v_fit + extra**2))


def steepness(p: _Prepared) -> float:
    """How steeply a target with few points of its own is still falling: |d log loss / d log step| over its last
    3 fitted points; 0 (no factor) with >= ``FEW_POINTS`` points, ``inf`` (the largest factor) with 0-2."""
    n_t = len(p.t)
    if n_t >= FEW_POINTS:
        return 0.0
    if n_t < 3:
        return math.inf
    t, y = p.t[-3:].astype(float), p.y[-3:].astype(float)
    if np.any(t <= 0) or np.any(y <= 0) or np.ptp(np.log(t)) <= 0:
        return math.inf
    return float(abs(np.polyfit(np.log(t), np.log(y), 1)[0]))


def few_factor(steep: float, slope: float | None = None) -> float:
    """Factor on every candidate's scale for a target with 1-9 points (``steepness`` > 0): its steepness over
    ``slope`` (``_calibration.FEW_SLOPE``, fitted on calibration groups: ``benchmarks/calibrate_laws.py`` step
    5a), between 1 and ``FEW_FACTOR``. A few points of a prefix that still falls steeply (a tiny model early in
    its fall, the first points of a short run) pin its extrapolation far less than a few points of a curve
    already in its slow power-law tail (a sparsely logged long run past its first quarter)."""
    if steep <= 0:
        return 1.0
    ref = _calibration.FEW_SLOPE if slope is None else slope
    return float(min(FEW_FACTOR, max(1.0, steep / ref)))


def _beyond(extrap: float, read: str) -> float:
    """Factor on the sd (scale and backtest error) of a candidate extrapolating the target's own prefix (``alone``,
    ``same_size``): 1 up to the largest extrapolation log(area(T) / area(last observed step)) of the calibration
    cases that fitted the scales (``EXTRAP_CALIBRATED``, ~18% of a constant-LR run), ``BEYOND_FACTOR`` past it,
    one per ``read_regime`` of the target's final read (``read``: "noisy" for a training loss, "smooth"). The scale grows linearly in the extrapolation, fitted where it is at most
    that; earlier prefixes (the ``early@`` settings, 3-15% of a run) miss more than that line says on the training
    loss (held-out coverage 54-72% at 3-10%), so the factor is fitted there, on calibration groups. Past
    ``EXTRAP_MAX`` (the earliest calibrated prefix) ``_candidates`` makes no own-prefix prediction at all."""
    if extrap <= _calibration.EXTRAP_CALIBRATED:
        return 1.0
    return _calibration.BEYOND_FACTOR[read]


def _alone(
    target: Curve,
    p: _Prepared,
    prior: MultiPowerPrior,
    T: float,
    area_T: float,
    n_t: int,
    extrap: float,
    cal: dict,
):
    if n_t < 3:
        return None
    prior = prior.for_curve(target)
    theta, coef, rmse = _fit([p], prior=prior, prior_weight=1.0, theta0=np.array(prior.theta))
    fit = _as_fit(theta, coef, rmse, 1, p.n_valid, _calibration.LR_POWER)
    ld = _ld_basis(p, np.array([T]), np.array([area_T]), fit.C, fit.beta, fit.gamma)[0]
    loss = fit.L0[0] + fit.A * area_T ** (-fit.alpha) - fit.B * ld
    steep = steepness(p)
    few = few_factor(steep)
    v_fit = (fit.rmse / loss) ** 2 / max(n_t, 1)
    g = float(fit.B * ld / loss)  # the annealing gain rests on the prior
    u = _scale(cal, few, extrap, v_fit, cal.get("r", 0.0) * g)
    return _Candidate(
        "alone",
        float(loss),
        lambda s, f=fit: f.predict(target, s, index=0),
        u,
        (few, extrap, v_fit, g, steep),
        fit,
    )


def _same_size(
    target: Curve, p: _Prepared, refs: Sequence[Curve], T: float, area_T: float, n_t: int, extrap: float, cal: dict,
    mp: int, nb: int,
):  # fmt: skip
    if not refs:
        return None
    lp = _calibration.LR_POWER
    key = ("mp",) + tuple(c.digest() for c in refs) + (mp, nb, lp)
    ref_fit = _cached(
        _FIT_CACHE,
        32,
        key,
        lambda: fit_multipower(refs, prior_weight=0.05, max_points=mp, n_bins=nb, lr_power=lp),
    )
    steep = steepness(p)
    few = few_factor(steep)
    if n_t >= 3:
        preps = [_prep(c, mp, nb) for c in refs] + [p]
        theta, coef, rmse = _fit(preps, prior=MultiPowerPrior(), prior_weight=0.05, theta0=ref_fit.theta)
        fit = _as_fit(theta, coef, rmse, len(preps), ref_fit.n_points + p.n_valid, lp)
        extra = 0.0
    else:  # no usable target points: the references' mean L0, their spread and 5% of it as the uncertainty
        l0 = np.array(ref_fit.L0)
        fit = MultiPowerFit(
            L0=(*ref_fit.L0, float(l0.mean())), A=ref_fit.A, alpha=ref_fit.alpha, B=ref_fit.B, C=ref_fit.C,
            beta=ref_fit.beta, gamma=ref_fit.gamma, rmse=ref_fit.rmse, n_points=ref_fit.n_points, theta=ref_fit.theta,
            lr_power=ref_fit.lr_power,
        )  # fmt: skip
        extra = float(np.sqrt(np.var(l0) + (0.05 * l0.mean()) ** 2))
    idx = len(fit.L0) - 1
    ld = _ld_basis(p, np.array([T]), np.array([area_T]), fit.C, fit.beta, fit.gamma)[0]
    loss = fit.L0[idx] + fit.A * area_T ** (-fit.alpha) - fit.B * ld
    v_fit = (fit.rmse / loss) ** 2 / max(n_t, 1) + (extra / loss) ** 2
    u = _scale(cal, few, extrap, v_fit)
    return _Candidate(
        "same_size",
        float(loss),
        lambda s, f=fit, i=idx: f.predict(target, s, index=i),
        u,
        (few, extrap, v_fit, 0.0, steep),
        fit,
    )


def _sweep(
    target: Curve,
    p: _Prepared,
    refs: Sequence[Curve],
    T: float,
    n_t: int,
    extrap: float,
    cal: dict,
    mp: int,
    nb: int,
):
    if len(refs) < 2 or target.n_params is None or target.tokens_per_step is None:
        return None
    sizes = {round(float(c.n_params), -3) for c in refs}
    # references of one size do not identify N; a target of another size with points of its own still gains
    # the references' shape (data term, annealing, horizon) while its offset takes its level (a sweep's first run
    # of a new size beside the finished runs of one smaller size: lr_schedules' 53M short runs from 25%,
    # held-out sweep@25 validation -2.9% -> -1.9% on run183); of the references' own size, same_size covers it
    if len(sizes) < 2 and (n_t < 1 or same_size_refs(target, refs)):
        return None
    sr = _calibration.SIGMA_DELTA
    lp = _calibration.LR_POWER
    key = (
        ("sw",)
        + tuple(c.digest() for c in refs)
        + (mp, nb, _calibration.SIGMA_REF, _calibration.SWEEP_LOG_A, lp, _calibration.SIGMA_SIZE_SLOPE)
    )
    ref_preps = [_prep(c, mp, nb) for c in refs]
    base = _cached(
        _FIT_CACHE,
        32,
        key,
        lambda: _fit_sweep(
            refs,
            ref_preps,
            sigma_rel=_calibration.SIGMA_REF,
            theta0=_sw_prior(),
            lr_power=lp,
            size_slope_rel=_calibration.SIGMA_SIZE_SLOPE,
        ),  # fmt: skip
    )
    slope_rel = _calibration.SIGMA_SLOPE
    # the target's LR area at T (memoised: the prep every caller passes as p)
    area_T = float(_prep(target, mp, nb, [T]).area[-1])
    if n_t >= 1:
        fit = _fit_sweep(
            [*refs, target],
            [*ref_preps, p],
            sigma_rel=_calibration.SIGMA_REF,
            theta0=base.theta,
            target_sigma_rel=sr,
            lr_power=lp,
            target_slope_rel=slope_rel,
            target_area_T=area_T,
            size_slope_rel=_calibration.SIGMA_SIZE_SLOPE,
        )
        idx = len(refs)
    else:
        fit, idx = base, None
    loss = float(fit.predict(target, np.array([T]), index=idx)[0])
    v_fit = _own_terms_variance(fit, p, target, n_t, loss, sr, slope_rel, area_T) / loss**2
    steep = steepness(p) if n_t >= 1 else 0.0  # not started: the references' law alone, no factor
    few = few_factor(steep)
    # extrapolation beyond the references: in time (the target's own area ratio) plus in size and in
    # tokens (log of the target's N and total tokens over the largest among the references)
    n_max = max(float(c.n_params) for c in refs)
    d_max = max(float(c.tokens_per_step) * c.total_steps for c in refs)
    beyond = max(0.0, np.log(float(target.n_params) / n_max))
    beyond += max(0.0, np.log(float(target.tokens_per_step) * target.total_steps / d_max))
    extrap = (extrap if n_t else 0.0) + beyond  # no own points: no time extrapolation of its own
    u = _scale(cal, few, extrap, v_fit)
    return _Candidate(
        "sweep",
        loss,
        lambda s, f=fit, i=idx: f.predict(target, s, index=i),
        u,
        (few, extrap, v_fit, 0.0, steep),
        fit,
    )


def _own_terms_variance(
    fit: SweepFit, p: _Prepared, target: Curve, n_t: int, loss: float, sr: float, slope: float, area_T: float
) -> float:
    """Posterior variance (loss units squared) of the target's own terms at T, the shared parameters held
    fixed: its offset (prior sd ``sr`` x the loss) and, once it has points, its extra data-term coefficient
    (prior sd of its effect at T, whose LR area is ``area_T``: ``slope`` x the loss, as ``_fit_sweep`` was
    given it), each of its ``n_t`` points read with the fit's rmse as noise."""
    if slope <= 0 or n_t < 1:  # the offset alone
        return 1.0 / (1.0 / (sr * loss) ** 2 + n_t / max(fit.rmse, 1e-4) ** 2)
    d = np.r_[p.area[:n_t], area_T] * float(target.tokens_per_step) / _D_UNIT  # its points, then T
    g = d ** (-fit.alpha)
    prec = np.diag([1.0 / (sr * loss) ** 2, (g[-1] / (slope * loss)) ** 2])
    x = np.column_stack([np.ones(n_t), g[:n_t]])
    prec = prec + x.T @ x / max(fit.rmse, 1e-4) ** 2
    x_t = np.array([1.0, g[-1]])
    return float(x_t @ np.linalg.solve(prec, x_t))


def _backtest_error(target: Curve, build) -> float:
    """Relative mean error of a candidate, refitted on the first 2/3 of the target's observed steps, on the
    last 1/3 (0 when the prefix is too short to split): how well it describes the target's own points."""
    s = target.steps[np.isfinite(target.losses)]
    if len(s) < BACKTEST_POINTS:
        return 0.0
    cut = s[0] + (s[-1] - s[0]) * 2.0 / 3.0
    part = target.observed_until(cut)
    cand = build(part)
    if cand is None:
        return 0.0
    tail = (target.steps > cut) & np.isfinite(target.losses)
    obs = target.losses[tail]
    pred = np.asarray(cand.predict(target.steps[tail]))
    return float(np.mean(pred - obs) / np.mean(obs))


_SIZE_BT_CACHE: OrderedDict[tuple, float] = OrderedDict()
SIZE_BT_WINDOW = 0.05  # _size_backtest: a held-out run's end = its points in this last fraction of its steps


def _size_backtest(target: Curve, refs: Sequence[Curve], mp: int, nb: int) -> float:
    """How far the sweep candidate is off when it extrapolates in size as far as it must for ``target``, on
    this sweep's own runs: for a target larger than every reference, the references of the largest size are
    held out and each is predicted by the sweep candidate from the smaller sizes, at the fraction of its steps
    the target has reached; their rms relative error (each over its points in the last ``SIZE_BT_WINDOW`` of its
    steps, so a noisy training loss is not read as a size error), scaled by the target's log-size extrapolation over
    theirs. 0 when the target lies within the references' sizes or fewer than 3 sizes are finished (nothing
    to hold out and still fit N). The ``sweep`` scale's calibration cannot show this error: its calibration
    sweeps extrapolate too little in size (``benchmarks/calibrate_laws.py``)."""
    refs = [r for r in refs if not is_running(r)]
    if target.n_params is None or len(refs) < 3:
        return 0.0
    sizes = sorted({round(float(r.n_params), -3) for r in refs})
    n_max = max(float(r.n_params) for r in refs)
    beyond = math.log(float(target.n_params) / n_max)
    if len(sizes) < 3 or beyond <= 0.01:
        return 0.0
    top = [r for r in refs if abs(float(r.n_params) / n_max - 1) < 0.01]
    rest = [r for r in refs if abs(float(r.n_params) / n_max - 1) >= 0.01]
    beyond_top = math.log(n_max / max(float(r.n_params) for r in rest))
    fin = target.steps[np.isfinite(target.losses)]
    frac = round(float(fin[-1]) / target.total_steps, 2) if len(fin) else 0.0
    cal = (
        _calibration.LR_POWER, _calibration.SIGMA_REF, _calibration.SWEEP_LOG_A, _calibration.SIGMA_SLOPE,
        _calibration.SIGMA_SIZE_SLOPE,
    )  # fmt: skip
    key = tuple(r.digest() for r in refs) + (frac, mp, nb, *cal)

    def measure() -> float:
        errs = []
        for h in top:
            ok = np.isfinite(h.losses)
            if not ok.any():
                continue
            at = h.observed_until(frac * h.total_steps)
            p = _prep(at, mp, nb, [float(h.total_steps)])
            n_t = len(p.t)
            c = _sweep(at, p, rest, float(h.total_steps), n_t, _extrapolation(p)[1],
                       _calibration.INTERVAL["sweep"], mp, nb)  # fmt: skip
            if c is not None and math.isfinite(c.final):
                # against its points in the last SIZE_BT_WINDOW of its steps, the prediction read at the same
                # steps: one training-loss point is one batch (~4% noise on the lr_schedules runs), which read
                # as a size error 2-3x that of the same runs' validation loss
                s_ok = h.steps[ok].astype(float)
                tail = s_ok >= s_ok[-1] - SIZE_BT_WINDOW * h.total_steps
                pred = np.asarray(c.predict(s_ok[tail]), float)
                if np.all(np.isfinite(pred)):
                    errs.append(float(np.mean(pred) / np.mean(h.losses[ok][tail]) - 1))
        return float(np.sqrt(np.mean(np.square(errs)))) if errs else 0.0

    return _cached(_SIZE_BT_CACHE, 64, key, measure) * beyond / max(beyond_top, 1e-9)


# --------------------------------------------------------------------------------------------------
# the public entry point


def predict_final_loss(
    target: Curve,
    references: Sequence[Curve] = (),
    *,
    max_points: int = 64,
    n_bins: int = 48,
    prior: MultiPowerPrior | None = None,
    curve_points: int = 0,
    backtest: bool = True,
) -> LossPrediction:
    """Predict the loss of ``target`` at its last step T = len(target.lr), with a calibrated 90% interval.

    ``references`` are other runs of the sweep, finished or running; the running ones are left out (module
    docstring) and named in ``ignored``. Those of the target's size (equal
    ``n_params``, or every reference when the target's size is unknown) feed the ``same_size`` candidate;
    when sizes and ``tokens_per_step`` are known and the references hold at least two sizes, all of them
    feed the sweep-level model, which also predicts a run that has not started (no observed points); with
    references of one size it serves a target of another size that has points of its own.
    Candidates are weighed by their calibrated variance plus their error on the held-out tail of the
    target's own prefix (``backtest``; module docstring). ``curve_points`` > 0 also returns the predicted
    remaining curve at that many steps from the last observed step to T, with its band.

    Raises ``NotEnoughDataError`` when nothing can predict the target (< 3 valid points and no usable
    references). ``prior`` replaces ``NO_REF_PRIOR`` in the ``alone`` fit (the calibration script uses it).
    """
    prior = prior or NO_REF_PRIOR
    if not isinstance(target, Curve):
        raise TypeError(f"target must be a Curve, got {type(target).__name__}")
    refs = list(references)
    for i, r in enumerate(refs):
        if not isinstance(r, Curve):
            raise TypeError(f"references[{i}] must be a Curve, got {type(r).__name__}")
    if curve_points < 0:
        raise ValueError(f"curve_points={curve_points} must be >= 0")
    running = [is_running(r) for r in refs]
    ignored = tuple(r.name for r, run in zip(refs, running) if run)
    refs = [r for r, run in zip(refs, running) if not run]
    cands = _candidates(target, refs, prior, max_points, n_bins, backtest)
    if not cands:
        p = _prepare(target, max_points=max_points, n_bins=n_bins, lr_power=_calibration.LR_POWER)
        x = own_extrapolation(target, max_points, n_bins)
        early = (
            f"; its prefix would be extrapolated {x:.2f} e-folds of its LR area to its last step, past the "
            f"{_calibration.EXTRAP_MAX:.2f} of the earliest calibrated prefix (own-prefix predictions start later)"
            if len(p.t) >= 3 and math.isfinite(x) and x > _calibration.EXTRAP_MAX
            else ""
        )
        raise NotEnoughDataError(
            f"target {target.name!r} has {len(p.t)} valid points (dropped {p.n_dropped} non-finite, "
            f"{p.n_spikes} spikes) and no usable references; at least 3 points are needed without references "
            f"(or references of >= 2 sizes with n_params and tokens_per_step for a run not yet started){early}"
        )
    return replace(_combine(target, refs, cands, max_points, n_bins, curve_points), ignored=ignored)


def same_size_refs(target: Curve, refs: Sequence[Curve]) -> list[Curve]:
    """The references the ``same_size`` candidate fits jointly with ``target``: those within 1% of its size
    (every one when its size is unknown; one of unknown size counts as the same size)."""
    n = target.n_params
    return [r for r in refs if n is None or r.n_params is None or abs(float(r.n_params) / n - 1) < 0.01]


def _candidates(
    target: Curve, refs: list[Curve], prior, mp: int, nb: int, backtest: bool
) -> list[tuple[_Candidate, float]]:
    """[(candidate, backtest error)] for every candidate the data allow. A target with fewer than 2 points
    past its warmup counts as not started: points in the warmup transient would only mislead the fits, and
    its prediction comes from the references alone (none without references). So does one whose prefix
    would be extrapolated further than any calibration case was (``own_extrapolation`` > ``EXTRAP_MAX``)."""
    fin = target.steps[np.isfinite(target.losses)]
    T = float(target.total_steps)
    if len(fin) and (
        np.sum(fin >= warmup_end(target)) < 2 or own_extrapolation(target, mp, nb) > _calibration.EXTRAP_MAX
    ):
        target = target.observed_until(0)
    same = same_size_refs(target, refs)
    sized = [r for r in refs if r.n_params is not None and r.tokens_per_step is not None]

    def build(tc: Curve, which: str):
        p = _prep(tc, mp, nb, [T])
        n_t = len(p.t)
        area_T = p.area[-1]
        extrap = _extrapolation(p)[1]
        if which == "alone":
            return _alone(tc, p, prior, T, area_T, n_t, extrap, _calibration.INTERVAL["alone"])
        if which == "same_size":
            return _same_size(tc, p, same, T, area_T, n_t, extrap, _calibration.INTERVAL["same_size"], mp, nb)
        return _sweep(tc, p, sized, T, n_t, extrap, _calibration.INTERVAL["sweep"], mp, nb)

    read = read_regime(read_noise(target, refs))
    out, bad = [], []
    for which in CANDIDATES:
        c = build(target, which)
        if c is not None and not (math.isfinite(c.final) and math.isfinite(c.u)):
            bad.append(f"{which} gave {c.final} (scale {c.u})")  # never a nan prediction
            continue
        if c is None:
            continue
        # the own-prefix backtest of every candidate, the alone one without references too: on a curve that the
        # model does not describe (tiny runs still in their early fall) it is what widens the interval
        b = _backtest_error(target, lambda tc, w=which: build(tc, w)) if backtest else 0.0
        if which == "sweep" and backtest:
            c = replace(c, size_error=_size_backtest(target, sized, mp, nb))
        if which != "sweep":
            # past the calibrated extrapolation: the whole sd (scale and backtest)
            f = _beyond(c.terms[1], read)
            c, b = replace(c, u=c.u * f), b * f
        out.append((c, b))
    if bad and not out:
        raise FloatingPointError(f"no finite prediction for {target.name!r}: " + "; ".join(bad))
    return out


def blend(
    finals: np.ndarray, us: np.ndarray, backtests: np.ndarray, d: float
) -> tuple[float, float, np.ndarray]:
    """Inverse-variance combination of candidate final losses: variance_m = u_m^2 + backtest_m^2 (relative).
    Returns (loss, relative scale u, weights); u adds ``d`` x the weighted relative disagreement."""
    var = np.asarray(us, float) ** 2 + np.asarray(backtests, float) ** 2
    var = np.maximum(var, 1e-12)
    w = (1.0 / var) / np.sum(1.0 / var)
    finals = np.asarray(finals, float)
    loss = float(np.sum(w * finals))
    spread = float(np.sqrt(np.sum(w * (finals / loss - 1) ** 2)))
    u = float(np.sqrt(1.0 / np.sum(1.0 / var) + (d * spread) ** 2))
    return loss, u, w


RUNNING_GAP = 0.02  # a curve whose last valid point is further from its end than this fraction is running ...


def is_running(curve: Curve) -> bool:
    """Whether ``curve`` has not reached the end of its schedule (a running reference): its last valid point
    lies more than ``RUNNING_GAP`` of the schedule and more than two of its own logging intervals before T
    (a finished run logged every k steps may end up to k steps before T)."""
    fin = curve.steps[np.isfinite(curve.losses)]
    if not len(fin):
        return True
    gap = curve.total_steps - fin[-1]
    spacing = float(np.median(np.diff(fin[-6:]))) if len(fin) > 1 else 0.0
    return gap > max(RUNNING_GAP * curve.total_steps, 2 * spacing)


def interval_key(names: Sequence[str]) -> str:
    """Which calibrated quantiles apply: a single candidate's own, or the blend's."""
    return names[0] if len(names) == 1 else "blend"


LATE_FRACTION = 0.6
"""A target observed to this fraction of its schedule or beyond is predicted in the ``late`` regime."""
NOISY_READ = 0.002
"""``read_noise`` above which a curve counts as ``noisy``: the lr_schedules training losses read 0.3-1.2%, their
validation losses and the Gemstone, multipower and quickstart curves under 0.25%."""
REGIMES = ("mid/smooth", "mid/noisy", "late/smooth", "late/noisy")
REGIME_KEYS = ("blend",)
"""Interval keys calibrated per regime. A single candidate's key keeps one set: split, its cells held too few
settings (the ``alone`` key's upper quantile fell to the Gaussian floor in two of them and the held-out
multipower runs at 50% were covered 4 of 6)."""


def read_regime(rn: float) -> str:
    """ "noisy" when a final read's noise ``rn`` (``read_noise``) exceeds ``NOISY_READ`` (a training loss), else
    "smooth"."""
    return "noisy" if rn > NOISY_READ else "smooth"


def interval_regime(target: Curve, rn: float) -> str:
    """The regime whose calibrated quantiles an interval takes (``calibrate_laws.py`` step 4), from what the
    predictor sees: how far the target has run (before / from ``LATE_FRACTION`` of its schedule) and whether its
    final read is noisy (``read_regime`` of ``rn`` = ``read_noise``). One set of quantiles for every case had to
    cover the hardest calibration setting (late validation-loss predictions with running references), so the
    easier ones were covered 96-100% (docs/laws.md)."""
    fin = target.steps[np.isfinite(target.losses)]
    frac = float(fin[-1]) / target.total_steps if len(fin) else 0.0
    return f"{'late' if frac >= LATE_FRACTION else 'mid'}/{read_regime(rn)}"


def interval_quantiles(key: str, regime: str) -> tuple[float, float]:
    """(q_lo, q_hi) of interval key ``key`` (``interval_key``) in ``regime`` (``interval_regime``): the regime's
    calibrated quantiles (``_calibration.QUANTILES``, keys of ``REGIME_KEYS``), else the key's own (``INTERVAL``)."""
    q = _calibration.QUANTILES.get(key, {}).get(regime)
    if q is None:
        return _calibration.INTERVAL[key]["q_lo"], _calibration.INTERVAL[key]["q_hi"]
    return float(q[0]), float(q[1])


def _combine(
    target: Curve,
    refs: list[Curve],
    cands: list[tuple[_Candidate, float]],
    mp: int,
    nb: int,
    curve_points: int,
) -> LossPrediction:
    cal = _calibration.INTERVAL
    finals = np.array([c.final for c, _ in cands])
    loss, u, w = blend(finals, [c.u for c, _ in cands], [b for _, b in cands], cal["blend"]["d"])
    mode = "+".join(c.name for c, _ in cands)
    key = interval_key([c.name for c, _ in cands])
    rn = read_noise(target, refs)
    q_lo, q_hi = interval_quantiles(key, interval_regime(target, rn))
    # the sweep candidate's error when extrapolating in size, measured on this sweep (an rms error: a Gaussian
    # sd, whose 90% half-width is Z90 x it, in the units of u that the key's quantiles widen): it widens the
    # interval by its share of the blend (not the weights: the held-out sizes' error does not say which
    # candidate is right for the target)
    size_sd = sum(wi * c.size_error for (c, _), wi in zip(cands, w))
    u = float(np.hypot(u, size_sd * Z90 / (0.5 * (q_hi - q_lo))))
    u_all = float(np.hypot(u, rn))  # the measured final loss: the model's scale and the read's noise
    p = _prep(target, mp, nb, [float(target.total_steps)])
    n_t = len(p.t)
    area_last, extrap = _extrapolation(p)
    cs = cv = cl = ch = np.zeros(0)
    if curve_points > 0:
        last = float(target.steps[np.isfinite(target.losses)][-1]) if n_t else 1.0
        cs = np.unique(np.linspace(last, target.total_steps, curve_points).round())
        preds = np.array([np.asarray(c.predict(cs)) for c, _ in cands])  # (n_cand, n)
        cv = np.sum(w[:, None] * preds, axis=0)
        # band: the final-loss scale, shrunk with the remaining extrapolation (0 at the last observed step)
        pc = _prepare(target, max_points=mp, n_bins=nb, extra_t=cs, lr_power=_calibration.LR_POWER)
        ex = np.log(pc.area[len(pc.t) :] / area_last) if n_t else np.full(len(cs), extrap)
        frac = np.sqrt(np.clip(ex / max(extrap, 1e-12), 0.0, 1.0)) if extrap > 0 else np.ones(len(cs))
        cv = cv + (loss - cv[-1]) * frac  # ends at the combined final loss, starts where the candidates do
        ub = np.hypot(u * frac, rn)  # a read at step t: the model's scale shrunk with the extrapolation left
        cl, ch = cv * (1 + q_lo * ub), cv * (1 + q_hi * ub)
    heavy = cands[int(np.argmax(w))][0]
    return LossPrediction(
        loss=loss, low=float(loss * (1 + q_lo * u_all)), high=float(loss * (1 + q_hi * u_all)), n_used=p.n_valid,
        n_dropped=p.n_dropped, n_spikes=p.n_spikes, extrapolation=extrap,
        fit=heavy.fit if isinstance(heavy.fit, MultiPowerFit) else None, rel_scale=u_all, read_noise=rn, mode=mode,
        scale_terms=heavy.terms, candidates={c.name: c.final for c, _ in cands},
        weights={c.name: float(wi) for (c, _), wi in zip(cands, w)},
        curve_steps=cs, curve=cv, curve_low=cl, curve_high=ch,
    )  # fmt: skip
