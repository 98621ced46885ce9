"""Over-training law (Gadre et al. 2024) and the downstream error law Err(L)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar

from ._lse import E_GRID, EXPONENT_GRID, SCALE_GRID, LSEProblem, fit_lse
from ._validate import as_1d, check_range, same_length


def _terms(theta: np.ndarray, log_x: np.ndarray) -> np.ndarray:
    a, b, e, eta = (theta[..., k, None] for k in range(4))
    ln, lm = log_x[:, 0], log_x[:, 1]  # log N, log M
    e_full = np.broadcast_to(e, np.broadcast_shapes(e.shape, ln.shape))
    # A N^-eta  and  B D^-eta = B (M N)^-eta
    return np.stack([a - eta * ln, b - eta * (lm + ln), e_full], axis=-1)  # (..., n, 3)


def _jac(theta: np.ndarray, log_x: np.ndarray) -> np.ndarray:
    n = len(log_x)
    j = np.zeros((n, 3, 4))
    j[:, 0, 0] = 1.0
    j[:, 0, 3] = -log_x[:, 0]
    j[:, 1, 1] = 1.0
    j[:, 1, 3] = -(log_x[:, 0] + log_x[:, 1])
    j[:, 2, 2] = 1.0
    return j


@dataclass(frozen=True)
class OvertrainingFit:
    """Fitted ``L(N, D) = E + (A + B * M**(-eta)) * N**(-eta)`` with M = D/N tokens per parameter.

    Equivalently (Gadre et al. 2024, eq. 4) ``L(C, M) = E + (a M**eta_c + b M**(-eta_c)) C**(-eta_c)``
    with C = 6 N D = 6 N**2 M, ``eta_c = eta / 2`` and ``a = A 6**eta_c``, ``b = B 6**eta_c``.

    ``predict(N, D)`` takes what ``fit_overtraining(N, D, loss)`` took (like ``ChinchillaFit.predict``);
    ``predict_multiplier(N, M)`` takes the token multiplier M = D/N, ``predict_compute(C, M)`` FLOPs.
    """

    E: float
    A: float
    B: float
    eta: float
    objective: float
    n_points: int

    @property
    def eta_c(self) -> float:
        return self.eta / 2.0

    @property
    def a(self) -> float:
        return self.A * 6.0**self.eta_c

    @property
    def b(self) -> float:
        return self.B * 6.0**self.eta_c

    def predict(self, N: np.ndarray | float, D: np.ndarray | float) -> np.ndarray:
        """Loss at N parameters trained on D tokens (the fit's own inputs)."""
        N = np.asarray(N, dtype=np.float64)
        D = np.asarray(D, dtype=np.float64)
        return self.predict_multiplier(N, D / N)

    def predict_multiplier(self, N: np.ndarray | float, M: np.ndarray | float) -> np.ndarray:
        """Loss at N parameters trained on M = D/N tokens per parameter (Gadre et al.'s token multiplier)."""
        N = np.asarray(N, dtype=np.float64)
        M = np.asarray(M, dtype=np.float64)
        return self.E + (self.A + self.B * M ** (-self.eta)) * N ** (-self.eta)

    def predict_compute(self, C: np.ndarray | float, M: np.ndarray | float) -> np.ndarray:
        """Loss at C = 6 N D FLOPs and M tokens per parameter (Gadre et al.'s form)."""
        C = np.asarray(C, dtype=np.float64)
        M = np.asarray(M, dtype=np.float64)
        return self.E + (self.a * M**self.eta_c + self.b * M ** (-self.eta_c)) * C ** (-self.eta_c)


def fit_overtraining(
    N: np.ndarray, D: np.ndarray, loss: np.ndarray, *, delta: float = 1e-3, n_best: int | None = 8
) -> OvertrainingFit:
    """Fit ``L(N, D) = E + (A + B M**(-eta)) N**(-eta)``, M = D/N, one exponent shared by N and D.

    Same estimator as ``fit_chinchilla`` (LSE parametrisation, Huber ``delta`` on log-loss residuals,
    BFGS with analytic gradient from a pruned grid over a, b in {0..25}, e in {-1..1}, eta in {0..2}).
    """
    N = as_1d("N", N, positive=True)
    D = as_1d("D", D, positive=True)
    loss = as_1d("loss", loss, positive=True)
    n = same_length(N=N, D=D, loss=loss)
    if n < 4:
        raise ValueError(f"len(N)={n} points cannot determine 4 parameters; at least 4 are needed")
    check_range("delta", delta, 0.0, np.inf, lo_open=True)
    log_x = np.column_stack([np.log(N), np.log(D / N)])
    problem = LSEProblem(log_x, np.log(loss), np.ones(n), delta, _terms, _jac)
    axes = (SCALE_GRID, SCALE_GRID, E_GRID, EXPONENT_GRID)  # 6 * 6 * 5 * 5 = 900 rows (a, b, e, eta)
    grid = np.array(list(itertools.product(*axes)))
    theta, f, _ = fit_lse(problem, grid, shape_cols=[3], n_best=n_best)
    return OvertrainingFit(
        E=float(np.exp(theta[2])),
        A=float(np.exp(theta[0])),
        B=float(np.exp(theta[1])),
        eta=float(theta[3]),
        objective=f,
        n_points=n,
    )


@dataclass(frozen=True)
class DownstreamFit:
    """Fitted downstream law ``Err(L) = eps - k * exp(-gamma * L)`` (Gadre et al. 2024, eq. 5)."""

    eps: float
    k: float
    gamma: float
    rmse: float

    def predict(self, loss: np.ndarray | float) -> np.ndarray:
        """Top-1 error at loss ``loss``."""
        return self.eps - self.k * np.exp(-self.gamma * np.asarray(loss, dtype=np.float64))

    def loss_for_error(self, err: np.ndarray | float) -> np.ndarray:
        """Inverse law: the loss at which the error reaches ``err`` (needs eps > err)."""
        err = np.asarray(err, dtype=np.float64)
        return -np.log((self.eps - err) / self.k) / self.gamma


def fit_downstream(
    loss: np.ndarray, err: np.ndarray, *, gamma_bounds: tuple[float, float] = (1e-3, 20.0)
) -> DownstreamFit:
    """Fit ``Err(L) = eps - k exp(-gamma L)`` by variable projection: for each gamma the law is linear in
    (eps, k), solved by least squares; gamma is found by bounded 1-D search in log space over
    ``gamma_bounds``. ``err`` is the downstream error in [0, 1] (e.g. 1 - accuracy)."""
    loss = as_1d("loss", loss, positive=True)
    err = as_1d("err", err)
    n = same_length(loss=loss, err=err)
    if n < 3:
        raise ValueError(f"len(loss)={n} points cannot determine 3 parameters; at least 3 are needed")
    lo, hi = gamma_bounds
    if not (0 < lo < hi):
        raise ValueError(f"gamma_bounds={gamma_bounds} must satisfy 0 < low < high")
    bad = np.flatnonzero((err < 0) | (err > 1))
    if bad.size:
        raise ValueError(f"err[{bad[0]}]={err[bad[0]]} must be in [0, 1]")

    def solve(log_gamma: float) -> tuple[float, np.ndarray]:
        x = np.column_stack([np.ones(n), -np.exp(-np.exp(log_gamma) * loss)])
        coef, *_ = np.linalg.lstsq(x, err, rcond=None)
        return float(np.sum((x @ coef - err) ** 2)), coef

    grid = np.linspace(np.log(lo), np.log(hi), 41)
    vals = [solve(g)[0] for g in grid]
    i = int(np.argmin(vals))
    bracket = (grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)])
    res = minimize_scalar(lambda g: solve(g)[0], bounds=bracket, method="bounded", options={"xatol": 1e-10})
    sse, (eps, k) = solve(res.x)
    return DownstreamFit(eps=float(eps), k=float(k), gamma=float(np.exp(res.x)), rmse=float(np.sqrt(sse / n)))
