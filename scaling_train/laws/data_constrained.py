"""Data-constrained scaling law (Muennighoff et al. 2023): repeated tokens and excess parameters decay.

With ``N`` parameters trained on ``D`` tokens drawn from ``U`` unique tokens (``D / U`` epochs):

    U_D = min(U, D)                                    unique tokens actually seen
    R_D = D / U_D - 1                                  repetitions beyond the first epoch (0 if D <= U)
    R_D*(N) = R_D* * (N / 1e8)**(-rho)                 how many repetitions a token stays useful for, shorter
                                                       for a larger model (it memorises sooner); rho = 0 is
                                                       the paper's law, a single R_D* for every size
    D'  = U_D + U_D * R_D*(N) * (1 - exp(-R_D / R_D*(N)))
                                                       effective data: the k-th repetition is worth
                                                       exp(-k / R_D*(N)) of a fresh token; D' <= U_D (1 + R_D*(N))
    U_N = min(N, N_opt(U_D))                           "unique" parameters: the compute-optimal size for
                                                       U_D tokens under the base law below,
                                                       N_opt(U) = (alpha A / (beta B) * U**beta) ** (1/alpha)
    R_N = N / U_N - 1                                  excess parameters (0 if N <= U_N)
    N'  = U_N + U_N * R_N* * (1 - exp(-R_N / R_N*))    effective parameters

    L(N, D, U) = E + A / N'**alpha + B / D'**beta

With ``U >= D`` and ``N <= N_opt(D)`` this is the Chinchilla law ``E + A / N**alpha + B / D**beta``.
All eight parameters (E, A, B, alpha, beta, R_D*, R_N*, rho) are fitted jointly, as in Hoffmann et al.'s
approach 3: Huber loss on log L over a grid of starts, BFGS with the analytic gradient
(rho is held at 0, Muennighoff et al.'s seven-parameter law, when the repeated runs span fewer than
``MIN_RHO_SIZES`` model sizes, or with ``fit_rho=False``).

Why rho: on the datablations runs the number of epochs after which more repetition stops helping falls
with the model size (at 1e8 unique tokens: ~60 epochs at 146M parameters, ~27 at 421M, ~15 at 619M), and a
single R_D* fitted to all sizes lets the largest models gain too much from repeats. Chosen on the inner
split only (fit < 250M, predict the 250M-500M multi-epoch runs: MAE ratio to Chinchilla 0.79 -> 0.46),
then reported on the outer one (fit < 500M, predict 574M-2.2B: 0.63 -> 0.39; BENCHMARKS.md).

The law is non-increasing in D and U. With rho = 0 it is non-increasing in N too; with rho > 0 a larger
model gets less from each repeat, so at many epochs the loss can rise with N (what the datablations runs show),
but it never rises with more training. Real multi-epoch runs can end *worse* with more training (heavy
over-fitting, loss spikes, divergence); such runs are detected by an explicit rule (see ``find_diverged``),
excluded from the fit and reported on the result.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from scipy.special import logsumexp

from ._lse import LSEProblem, multistart
from ._validate import as_1d, check_range, same_length
from .chinchilla import hoffmann_grid

PARAM_NAMES = ("E", "A", "B", "alpha", "beta", "R_D_star", "R_N_star", "rho")
# R_D*(N) = R_D* (N / N_PIVOT)**(-rho): the fitted R_D* is that of a 1e8-parameter model
N_PIVOT = 1e8
_R_GRID = np.log([2.0, 5.0, 15.0, 50.0])  # log R_D*, log R_N* starts (paper's fit: R_D* ~ 15, R_N* ~ 5)
_RHO_GRID = (0.0, 0.5)  # rho starts
# sizes among the repeated runs (D > REPEATED_EPOCHS U) before rho is fitted: with 2 it trades off with alpha
MIN_RHO_SIZES = 3
# a run with D > REPEATED_EPOCHS U repeats its data: the fitter's metrics.config.REPEAT_EPOCHS, restated here
# because laws sits below metrics in the layers
REPEATED_EPOCHS = 1.05
_EXP_FLOOR = 1e-3  # alpha, beta floor inside N_opt(U) only (the grid holds 0 exponents)
_LOPT_RANGE = (0.0, 80.0)  # log N_opt(U) clipped to [1, e^80] parameters: finite at any grid point
_LOG_RSTAR_RANGE = (-7.0, 30.0)  # log R* clipped: R* in [1e-3, 1e13] (1e13 = no decay at all in practice)


@dataclass(frozen=True)
class DivergedRun:
    """One input run excluded from the fit, with the rule that excluded it."""

    index: int
    """Position in the input arrays."""
    N: float
    D: float
    U: float
    loss: float
    reason: str
    """``"near-uniform"`` or ``"worse-than-run-<j>"`` (see ``find_diverged``)."""


def find_diverged(
    N: np.ndarray,
    D: np.ndarray,
    U: np.ndarray,
    loss: np.ndarray,
    *,
    vocab_size: int | None = None,
    uniform_fraction: float = 0.9,
    rise_tolerance: float = 0.10,
) -> list[DivergedRun]:
    """Runs whose final loss no monotone law can describe. A run ``i`` is flagged when

    1. ``loss_i >= uniform_fraction * ln(vocab_size)`` (only when ``vocab_size`` is given): the model
       predicts barely better than a uniform distribution over the vocabulary (ln 50257 = 10.8 nats);
    2. or some other run ``j`` had no more parameters, tokens and unique tokens
       (``N_j <= N_i, D_j <= D_i, U_j <= U_i``, relative slack 1e-3) yet ended lower by more than
       ``rise_tolerance``: ``loss_i > (1 + rise_tolerance) * loss_j``. More resources ended worse; the
       law is non-increasing in N, D and U, so such a run has diverged or over-fitted badly.

    Both rules read only the data, never a fitted law. Returns one ``DivergedRun`` per flagged run.
    """
    N, D, U, loss = (np.asarray(x, dtype=np.float64) for x in (N, D, U, loss))
    check_range("uniform_fraction", uniform_fraction, 0.0, 1.0, lo_open=True)
    check_range("rise_tolerance", rise_tolerance, 0.0, np.inf)
    out: list[DivergedRun] = []
    ceiling = uniform_fraction * np.log(vocab_size) if vocab_size is not None else np.inf
    slack = 1.0 + 1e-3
    for i in range(len(loss)):
        reason = None
        if loss[i] >= ceiling:
            reason = "near-uniform"
        else:
            dominated = (N <= N[i] * slack) & (D <= D[i] * slack) & (U <= U[i] * slack)
            dominated[i] = False
            better = np.flatnonzero(dominated & (loss[i] > (1.0 + rise_tolerance) * loss))
            if better.size:
                reason = f"worse-than-run-{int(better[np.argmin(loss[better])])}"
        if reason is not None:
            out.append(DivergedRun(i, float(N[i]), float(D[i]), float(U[i]), float(loss[i]), reason))
    return out


def _effective(log_u: np.ndarray, log_x: np.ndarray, log_r_star: np.ndarray):
    """log of ``U + U R* (1 - exp(-R / R*))`` with ``R = X / U - 1`` (X >= U) and its partials.

    Returns (log_eff, d log_eff / d log R*, d log_eff / d log U at fixed X)."""
    log_rc = np.clip(log_r_star, *_LOG_RSTAR_RANGE)
    r_star = np.exp(log_rc)
    R = np.expm1(log_x - log_u)  # repetitions beyond the first
    x = R / r_star
    g = -np.expm1(-x)  # 1 - exp(-R/R*)
    denom = 1.0 + r_star * g
    log_eff = log_u + np.log(denom)
    d_rstar = np.where(log_rc == log_r_star, r_star * (g - x * np.exp(-x)) / denom, 0.0)
    d_logu = 1.0 - (R + 1.0) * np.exp(-x) / denom
    return log_eff, d_rstar, d_logu


def _log_nopt(a, b, al, be, log_u):
    """log N_opt(U) = (log(alpha/beta) + a - b + beta log U) / alpha, clipped; with its partials."""
    al_c, be_c = np.maximum(al, _EXP_FLOOR), np.maximum(be, _EXP_FLOOR)
    raw = (np.log(al_c / be_c) + a - b + be_c * log_u) / al_c
    lopt = np.clip(raw, *_LOPT_RANGE)
    live = (raw == lopt) & (al > _EXP_FLOOR) & (be > _EXP_FLOOR)  # gradient flows only when unclipped
    d_a = np.where(live, 1.0 / al_c, 0.0)
    d_alpha = np.where(live, (1.0 / al_c - raw) / al_c, 0.0)
    d_beta = np.where(live, (log_u - 1.0 / be_c) / al_c, 0.0)
    return lopt, d_a, d_alpha, d_beta


def _log_rd(rd, rho, ln):
    """log R_D*(N) = log R_D* - rho (log N - log N_PIVOT)."""
    return rd - rho * (ln - np.log(N_PIVOT))


def _log_effective_nd(theta: np.ndarray, log_x: np.ndarray):
    """(log N', log D') for parameter rows ``theta`` (..., 8) and data columns (log N, log D, log U)."""
    a, b, _, al, be, rd, rn, rho = (theta[..., k, None] for k in range(8))  # (..., 1)
    ln, ld, lu = log_x[:, 0], log_x[:, 1], log_x[:, 2]  # (n,)
    lud = np.minimum(lu, ld)  # log U_D
    log_dp, _, _ = _effective(lud, ld, _log_rd(rd, rho, ln))
    lopt, _, _, _ = _log_nopt(a, b, al, be, lud)
    log_np, _, _ = _effective(np.minimum(ln, lopt), ln, rn)
    return log_np, log_dp


def _terms(theta: np.ndarray, log_x: np.ndarray) -> np.ndarray:
    a, b, e, al, be = (theta[..., k, None] for k in range(5))
    log_np, log_dp = _log_effective_nd(theta, log_x)
    e_full = np.broadcast_to(e, log_np.shape)
    return np.stack([a - al * log_np, b - be * log_dp, e_full], axis=-1)  # (..., n, 3)


def _jac(theta: np.ndarray, log_x: np.ndarray) -> np.ndarray:
    a, b, _, al, be, rd, rn, rho = theta
    ln, ld, lu = log_x[:, 0], log_x[:, 1], log_x[:, 2]
    lud = np.minimum(lu, ld)
    log_dp, dd_rd, _ = _effective(lud, ld, _log_rd(rd, rho, ln))
    lopt, o_a, o_alpha, o_beta = _log_nopt(a, b, al, be, lud)
    active = lopt < ln  # U_N = N_opt(U) < N: excess parameters
    log_np, dn_rn, dn_lu = _effective(np.minimum(ln, lopt), ln, rn)
    dn_lopt = np.where(active, dn_lu, 0.0)  # d log N' / d log N_opt
    j = np.zeros((len(ln), 3, 8))  # d term_j / d (a, b, e, alpha, beta, log R_D*, log R_N*, rho)
    j[:, 0, 0] = 1.0 - al * dn_lopt * o_a
    j[:, 0, 1] = al * dn_lopt * o_a  # d lopt / d b = -d lopt / d a
    j[:, 0, 3] = -log_np - al * dn_lopt * o_alpha
    j[:, 0, 4] = -al * dn_lopt * o_beta
    j[:, 0, 6] = -al * dn_rn
    j[:, 1, 1] = 1.0
    j[:, 1, 4] = -log_dp
    j[:, 1, 5] = -be * dd_rd
    j[:, 1, 7] = be * dd_rd * (ln - np.log(N_PIVOT))  # d log R_D*(N) / d rho = -(log N - log N_PIVOT)
    j[:, 2, 2] = 1.0
    return j


def _to_natural(theta: np.ndarray) -> np.ndarray:
    # (..., 8) rows (a, b, e, alpha, beta, log R_D*, log R_N*, rho) -> PARAM_NAMES order
    t = np.array(theta, dtype=np.float64, copy=True)
    t[..., 5:7] = np.clip(t[..., 5:7], *_LOG_RSTAR_RANGE)  # the law only ever sees the clipped R*
    return np.stack(
        [
            np.exp(t[..., 2]),
            np.exp(t[..., 0]),
            np.exp(t[..., 1]),
            t[..., 3],
            t[..., 4],
            np.exp(t[..., 5]),
            np.exp(t[..., 6]),
            t[..., 7],
        ],
        axis=-1,
    )


def _to_theta(nat: np.ndarray) -> np.ndarray:
    E, A, B, al, be, rd, rn, rho = (nat[..., k] for k in range(8))
    return np.stack([np.log(A), np.log(B), np.log(E), al, be, np.log(rd), np.log(rn), rho], axis=-1)


def _law(nat: np.ndarray, N, D, U) -> np.ndarray:
    """Loss at (N, D, U) for parameter rows ``nat`` (..., 8) in PARAM_NAMES order -> (..., n)."""
    log_x = np.column_stack([np.log(N), np.log(D), np.log(U)])
    return np.exp(logsumexp(_terms(_to_theta(nat), log_x), axis=-1))


@dataclass(frozen=True)
class DataConstrainedFit:
    """Fitted ``L(N, D, U) = E + A / N'**alpha + B / D'**beta`` (law in the module docstring).

    ``ci`` maps each name of ``PARAM_NAMES`` to its bootstrap (low, high) interval at ``confidence``;
    ``diverged`` lists the input runs excluded from the fit and why; ``n_points`` counts fitted runs.
    """

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    R_D_star: float
    R_N_star: float
    objective: float
    n_points: int
    n_starts: int
    rho: float = 0.0
    """Exponent of the model size in the repetition half-life, R_D*(N) = R_D* (N / 1e8)**(-rho) (0: the
    paper's seven-parameter law)."""
    rho_reason: str = ""
    """Why rho was fitted or held at 0 (``fit_data_constrained``'s ``fit_rho``)."""
    diverged: tuple[DivergedRun, ...] = ()
    confidence: float = 0.9
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    draws: np.ndarray = field(default_factory=lambda: np.empty((0, 8)), repr=False)
    """(n_bootstrap, 8) bootstrap parameter draws in PARAM_NAMES order."""
    log_residuals: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)
    """log(observed / fitted) of the fitted runs (resampled into prediction intervals)."""

    @property
    def params(self) -> np.ndarray:
        return np.array([getattr(self, k) for k in PARAM_NAMES])

    def predict(self, N: np.ndarray | float, D: np.ndarray | float, U: np.ndarray | float) -> np.ndarray:
        """Loss of an ``N``-parameter model trained on ``D`` tokens out of ``U`` unique ones (broadcasting)."""
        N, D, U = np.broadcast_arrays(*(np.asarray(x, dtype=np.float64) for x in (N, D, U)))
        return _law(self.params, N.ravel(), D.ravel(), U.ravel()).reshape(N.shape)

    def effective(self, N, D, U) -> tuple[np.ndarray, np.ndarray]:
        """Effective parameters and tokens (N', D') of the law at (N, D, U)."""
        N, D, U = np.broadcast_arrays(*(np.asarray(x, dtype=np.float64) for x in (N, D, U)))
        log_x = np.column_stack([np.log(N.ravel()), np.log(D.ravel()), np.log(U.ravel())])
        log_np, log_dp = _log_effective_nd(_to_theta(self.params), log_x)
        return np.exp(log_np).reshape(N.shape), np.exp(log_dp).reshape(N.shape)

    def predict_interval(self, N, D, U, *, noise: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Two-sided ``confidence`` bootstrap interval (low, high) of the loss at (N, D, U).

        ``noise=False``: quantiles of the law over the bootstrap parameter draws (uncertainty of the
        fitted curve). ``noise=True``: every draw's prediction times every ``exp(log residual)`` of the
        fit (a residual-bootstrap prediction interval for one new run). Needs ``n_bootstrap > 0``."""
        if len(self.draws) == 0:
            raise ValueError("predict_interval needs bootstrap draws: fit with n_bootstrap > 0 (got 0)")
        N, D, U = np.broadcast_arrays(*(np.asarray(x, dtype=np.float64) for x in (N, D, U)))
        log_p = np.log(_law(self.draws, N.ravel(), D.ravel(), U.ravel()))  # (B, m)
        if noise and len(self.log_residuals):
            log_p = (log_p[:, None, :] + self.log_residuals[None, :, None]).reshape(-1, log_p.shape[-1])
        q = (1.0 - self.confidence) / 2.0
        lo, hi = np.exp(np.quantile(log_p, [q, 1.0 - q], axis=0))
        return lo.reshape(N.shape), hi.reshape(N.shape)

    def chinchilla_optimal_n(self, U: np.ndarray | float) -> np.ndarray:
        """N_opt(U) = (alpha A / (beta B) * U**beta) ** (1/alpha): the base law's compute-optimal size for U tokens."""
        U = np.asarray(U, dtype=np.float64)
        return (self.alpha * self.A / (self.beta * self.B) * U**self.beta) ** (1.0 / self.alpha)

    def optimal(
        self, C: np.ndarray | float, U: np.ndarray | float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Best allocation of ``C = 6 N D`` FLOPs when only ``U`` unique tokens exist.

        Minimises ``L(N, C / (6 N), U)`` over ``N`` (bounded 1-D search in log N over 1e-3..1e3 times
        the unconstrained Chinchilla optimum). Returns (N_opt, D_opt, epochs = D_opt / U, L_opt)."""
        C, U = np.broadcast_arrays(np.asarray(C, dtype=np.float64), np.asarray(U, dtype=np.float64))
        if np.any(~(C > 0)) or np.any(~(U > 0)):
            raise ValueError(f"C={C} and U={U} must be > 0")
        if self.alpha <= 0 or self.beta <= 0 or self.A <= 0 or self.B <= 0:
            raise ValueError(
                f"no finite optimum: alpha={self.alpha}, beta={self.beta}, A={self.A}, B={self.B} must all be > 0"
            )
        s = self.alpha + self.beta
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / s)
        n_out = np.empty(C.shape)
        for idx in np.ndindex(C.shape):
            c, u = float(C[idx]), float(U[idx])
            ln0 = np.log(g) + (self.beta / s) * np.log(c / 6.0)  # unconstrained Chinchilla log N_opt

            def f(ln: float, c=c, u=u) -> float:
                n = np.exp(ln)
                return float(
                    np.log(_law(self.params, np.array([n]), np.array([c / (6.0 * n)]), np.array([u]))[0])
                )

            lo, hi = ln0 - np.log(1e3), ln0 + np.log(1e3)
            grid = np.linspace(lo, hi, 121)  # coarse scan first: the loss in log N may have two basins
            k = int(np.argmin([f(x) for x in grid]))
            res = minimize_scalar(f, bounds=(grid[max(k - 1, 0)], grid[min(k + 1, 120)]), method="bounded")
            n_out[idx] = np.exp(res.x)
        d_out = C / (6.0 * n_out)
        return n_out, d_out, d_out / U, self.predict(n_out, d_out, U)


def _best_rows(f: np.ndarray, grid: np.ndarray, n_best: int) -> np.ndarray:
    """Indices of the ``n_best`` lowest ``f`` plus the lowest of every (alpha, beta) pair of ``grid``."""
    f = np.where(np.isfinite(f), f, np.inf)
    chosen = set(np.argsort(f, kind="stable")[:n_best].tolist())
    _, inverse = np.unique(grid[:, [3, 4]], axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    for k in range(int(inverse.max()) + 1):
        idx = np.flatnonzero(inverse == k)
        chosen.add(int(idx[np.argmin(f[idx])]))
    return np.array(sorted(chosen))


def _jac_rho_fixed(theta: np.ndarray, log_x: np.ndarray) -> np.ndarray:
    """``_jac`` with no gradient in rho: BFGS keeps rho where it started (``fit_rho=False``)."""
    j = _jac(theta, log_x)
    j[..., 7] = 0.0
    return j


def _starts(problem: LSEProblem, n_best: int, rhos: tuple[float, ...]) -> np.ndarray:
    """BFGS starts in two scoring passes (one vectorised call each):

    1. the Hoffmann grid (4500 rows of a, b, e, alpha, beta) at R_D* = 15, R_N* = 5 (the paper's fit), rho 0;
       keep the ``n_best`` best rows plus the best row of every (alpha, beta) pair (<= n_best + 25);
    2. those rows times log R_D*, log R_N* in ``_R_GRID`` x ``_R_GRID`` x rho in ``rhos`` (16 or 32
       triples); keep the same way.
    """
    h = hoffmann_grid()
    first = np.hstack([h, np.tile([np.log(15.0), np.log(5.0), 0.0], (len(h), 1))])
    kept = h[_best_rows(problem.objective_batch(first), first, n_best)]
    rr = np.array(list(itertools.product(_R_GRID, _R_GRID, rhos)))  # (16 x len(rhos), 3)
    second = np.hstack([np.repeat(kept, len(rr), axis=0), np.tile(rr, (len(kept), 1))])
    return second[_best_rows(problem.objective_batch(second), second, n_best)]


def fit_data_constrained(
    N: np.ndarray,
    D: np.ndarray,
    U: np.ndarray,
    L: np.ndarray,
    *,
    delta: float = 1e-3,
    n_best: int = 8,
    n_bootstrap: int = 0,
    confidence: float = 0.9,
    seed: int = 0,
    vocab_size: int | None = None,
    uniform_fraction: float = 0.9,
    rise_tolerance: float = 0.10,
    fit_rho: bool | None = None,
) -> DataConstrainedFit:
    """Fit ``L(N, D, U) = E + A / N'**alpha + B / D'**beta`` (Muennighoff et al. 2023, with the repetition
    half-life ``R_D*(N)`` falling with the model size as ``N**-rho``; see module docstring).

    ``N`` parameters, ``D`` training tokens, ``U`` unique tokens available (epochs = D / U), ``L`` final loss.
    Diverged runs (``find_diverged`` with ``vocab_size``, ``uniform_fraction``, ``rise_tolerance``) are
    excluded first and listed in ``fit.diverged``. Parametrisation ``A, B, E = exp(a, b, e)``,
    ``R_D*, R_N* = exp(rd, rn)``; objective ``sum_i Huber_delta(log L_hat_i - log L_i)``; the Hoffmann grid
    and then 4 x 4 x 2 values of (R_D*, R_N*, rho) are scored in two passes (see ``_starts``) and BFGS runs from the
    ``n_best`` best points plus the best of every (alpha, beta) pair. ``n_bootstrap > 0`` adds case-resampling bootstrap draws
    (each a BFGS refit started at the full-data optimum): ``ci`` per parameter and ``predict_interval``.
    ``fit_rho``: None (default) fits rho when the repeated runs (D > 1.05 U, not diverged) span at least
    ``MIN_RHO_SIZES`` distinct sizes and holds it at 0 otherwise (with one or two sizes it is not identified:
    it trades off with R_D* and alpha); True / False force it. ``fit.rho_reason`` says which and why.
    """
    N = as_1d("N", N, positive=True)
    D = as_1d("D", D, positive=True)
    U = as_1d("U", U, positive=True)
    L = as_1d("L", L, positive=True)
    n_all = same_length(N=N, D=D, U=U, L=L)
    check_range("delta", delta, 0.0, np.inf, lo_open=True)
    check_range("confidence", confidence, 0.0, 1.0, lo_open=True, hi_open=True)
    if n_best < 1:
        raise ValueError(f"n_best={n_best} must be >= 1")
    if vocab_size is not None and vocab_size < 2:
        raise ValueError(f"vocab_size={vocab_size} must be >= 2 (or None to skip the near-uniform rule)")
    diverged = find_diverged(
        N, D, U, L, vocab_size=vocab_size, uniform_fraction=uniform_fraction, rise_tolerance=rise_tolerance
    )
    keep = np.ones(n_all, dtype=bool)
    keep[[r.index for r in diverged]] = False
    n = int(keep.sum())
    rep_sizes = len(np.unique(np.round(np.log(N[keep & (D > REPEATED_EPOCHS * U)]), 3)))
    if fit_rho is None:
        fit_rho = rep_sizes >= MIN_RHO_SIZES
        rho_reason = f"the repeated runs span {rep_sizes} sizes" + (
            "" if fit_rho else f" (< {MIN_RHO_SIZES}): rho held at 0, the paper's law"
        )
    else:
        rho_reason = "fitted (fit_rho=True)" if fit_rho else "held at 0 (fit_rho=False), the paper's law"
    n_par = 8 if fit_rho else 7
    if n < n_par:
        raise ValueError(
            f"{n} runs left after excluding {len(diverged)} diverged of {n_all}; at least {n_par} are needed for "
            f"{n_par} parameters"
        )
    log_x = np.column_stack([np.log(N[keep]), np.log(D[keep]), np.log(U[keep])])
    jac = _jac if fit_rho else _jac_rho_fixed
    problem = LSEProblem(log_x, np.log(L[keep]), np.ones(n), delta, _terms, jac)
    starts = _starts(problem, n_best, _RHO_GRID if fit_rho else (0.0,))
    theta, f = multistart(problem, starts)
    nat = _to_natural(theta)
    resid = problem.log_y - logsumexp(_terms(theta, log_x), axis=-1)
    ci: dict[str, tuple[float, float]] = {}
    draws = np.empty((0, 8))
    if n_bootstrap > 0:
        draws = _to_natural(_bootstrap(problem, theta, n_bootstrap=n_bootstrap, seed=seed))
        q = (1.0 - confidence) / 2.0
        lo, hi = np.quantile(draws, [q, 1.0 - q], axis=0)
        ci = {name: (float(lo[k]), float(hi[k])) for k, name in enumerate(PARAM_NAMES)}
    return DataConstrainedFit(
        **{k: float(v) for k, v in zip(PARAM_NAMES, nat)},
        objective=f,
        n_points=n,
        n_starts=len(starts),
        rho_reason=rho_reason,
        diverged=tuple(diverged),
        confidence=confidence,
        ci=ci,
        draws=draws,
        log_residuals=resid,
    )


def _bootstrap(problem: LSEProblem, theta: np.ndarray, *, n_bootstrap: int, seed: int) -> np.ndarray:
    """Case-resampling bootstrap: multinomial weights, one BFGS refit from ``theta`` each -> (B, 8)."""
    rng = np.random.default_rng(seed)
    n = len(problem.log_y)
    scale = 1.0 / (problem.delta * n)
    out = np.empty((n_bootstrap, len(theta)))
    for k in range(n_bootstrap):
        w = rng.multinomial(n, np.full(n, 1.0 / n)).astype(np.float64)
        p = LSEProblem(problem.log_x, problem.log_y, w, problem.delta, problem.terms, problem.jac)

        def fun(th: np.ndarray, p=p) -> tuple[float, np.ndarray]:
            f, g = p.objective_and_grad(th)
            return f * scale, g * scale

        out[k] = minimize(fun, theta, jac=True, method="BFGS", options={"maxiter": 500, "gtol": 1e-8}).x
    return out
