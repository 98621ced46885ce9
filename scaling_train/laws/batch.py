"""Critical batch size: gradient noise scale, Kaplan's B_crit(L) and the steps-to-target law S(B)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy.optimize import least_squares

from ._validate import as_1d, check_range, same_length
from .chinchilla import ChinchillaFit, fit_chinchilla
from .noise_scale import GradientNoiseScale  # noqa: F401  (its home before noise_scale.py)


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


# --------------------------------------------------------------------------------------------------
# batch-size sweeps: S(B) per (size, target) with an interval, and the critical batch's scaling law


@dataclass(frozen=True)
class BatchSweep:
    """One (model size, target loss) cell of a batch-size sweep: the steps each batch size needed to
    reach ``target_loss`` (Zhang et al. 2024 measure them on an EWA-smoothed curve)."""

    n_params: float
    """Model parameters (the sweep's size coordinate; non-embedding in our runs)."""
    target_loss: float
    """The loss every run of this cell reached."""
    batch_sizes: tuple[float, ...]
    """Batch size of each run, in sequences."""
    steps: tuple[float, ...]
    """Optimizer steps each run needed to reach ``target_loss`` (may be fractional: interpolated)."""
    seq_len: int
    """Tokens per sequence: batch in tokens = batch in sequences x seq_len."""

    def __post_init__(self) -> None:
        where = f"BatchSweep(n_params={self.n_params}, target_loss={self.target_loss})"
        for name in ("n_params", "target_loss"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float, np.floating, np.integer)) and np.isfinite(v) and v > 0):
                raise ValueError(f"{where}: {name}={v!r} must be a finite number > 0")
        if (
            isinstance(self.seq_len, bool)
            or not isinstance(self.seq_len, (int, np.integer))
            or self.seq_len < 1
        ):
            raise ValueError(f"{where}: seq_len={self.seq_len!r} must be an integer >= 1")
        try:
            B = as_1d("batch_sizes", self.batch_sizes, positive=True, min_len=2)
            S = as_1d("steps", self.steps, positive=True, min_len=2)
            same_length(batch_sizes=B, steps=S)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        if len(np.unique(B)) != len(B):
            raise ValueError(
                f"{where}: batch_sizes={tuple(B.tolist())} repeat a value; give one steps entry per batch "
                "size (average repeated seeds first)"
            )
        object.__setattr__(self, "n_params", float(self.n_params))
        object.__setattr__(self, "target_loss", float(self.target_loss))
        object.__setattr__(self, "seq_len", int(self.seq_len))
        object.__setattr__(self, "batch_sizes", tuple(B.tolist()))
        object.__setattr__(self, "steps", tuple(S.tolist()))


@dataclass(frozen=True)
class BatchSweepFit:
    """``S(B) = S_min (1 + B_noise / B)`` fitted to one ``BatchSweep`` (McCandlish et al. 2018, eq. 2.11).

    * ``B_crit = B_noise``: the batch where steps and examples both pay a 2x overhead over their minima;
    * ``S_min``: the fewest steps (infinite batch); ``E_min = S_min B_noise``: the fewest sequences
      (infinitesimal batch), since ``E(B) = B S(B) = E_min (1 + B / B_noise)``;
    * ``B_20``: the 20%-overhead batch of Zhang et al. 2024, the largest batch whose steps exceed ideal
      linear scaling by at most 20%. Ideal linear scaling on the fitted curve is its small-batch limit
      ``S_lin(B) = E_min / B``, and ``S(B) / S_lin(B) = 1 + B / B_noise``, so ``B_20 = 0.2 B_noise``.
      (Zhang et al. extrapolate linear scaling from their smallest batch B_0; the two agree when
      B_0 << B_noise, otherwise theirs is ``1.2 B_0 + 0.2 B_noise``.)

    Batches are in sequences (``*_tokens`` properties multiply by ``seq_len``). ``B_crit_low`` /
    ``B_crit_high`` is the profile-likelihood interval at ``level``; ``0`` / ``inf`` where the data do
    not bound it (B_noise far below / above the swept batches)."""

    sweep: BatchSweep
    S_min: float
    B_noise: float
    B_crit_low: float
    B_crit_high: float
    rmse_log: float
    level: float

    @property
    def B_crit(self) -> float:
        return self.B_noise

    @property
    def E_min(self) -> float:
        return self.S_min * self.B_noise

    @property
    def B_20(self) -> float:
        return 0.2 * self.B_noise

    @property
    def B_20_low(self) -> float:
        return 0.2 * self.B_crit_low

    @property
    def B_20_high(self) -> float:
        return 0.2 * self.B_crit_high

    @property
    def bounded(self) -> bool:
        """True when the interval is finite on both sides (the sweep brackets the critical batch)."""
        return self.B_crit_low > 0 and np.isfinite(self.B_crit_high)

    @property
    def B_crit_tokens(self) -> float:
        return self.B_noise * self.sweep.seq_len

    @property
    def D_min(self) -> float:
        """The fewest tokens that reach the target at this size: ``E_min * seq_len``."""
        return self.E_min * self.sweep.seq_len

    def predict(self, B: np.ndarray | float) -> np.ndarray:
        """Steps to the target at batch ``B`` (sequences)."""
        return self.S_min * (1.0 + self.B_noise / np.asarray(B, dtype=np.float64))


_PAD = 8.0  # the profile is searched over log B_noise in [log B_min - 8, log B_max + 8] (e^8 ~ 3000x)


def fit_batch_sweep(sweep: BatchSweep, *, level: float = 0.9) -> BatchSweepFit:
    """Fit ``log S = log S_min + log(1 + B_noise / B) + eps`` (eps iid normal) by least squares and
    give B_noise a profile-likelihood interval.

    For fixed ``b = log B_noise`` the best ``log S_min`` is the mean of ``log S - log(1 + e^b / B)``, so
    the residual sum of squares ``RSS(b)`` is a function of ``b`` alone; it is minimized on a grid and
    refined. The interval is ``{b : RSS(b) <= RSS_min (1 + F_{1,n-2}(level) / (n - 2))}``, the F form
    of the likelihood-ratio interval (exact for a linear model with unknown noise; the nonlinear case
    is checked by simulation in the tests). Needs >= 3 batch sizes."""
    from scipy.optimize import brentq, minimize_scalar
    from scipy.stats import f as f_dist

    if not isinstance(sweep, BatchSweep):
        raise TypeError(f"sweep must be a BatchSweep, got {type(sweep).__name__}")
    level = check_range("level", level, 0.0, 1.0, lo_open=True, hi_open=True)
    x = np.log(np.asarray(sweep.batch_sizes))
    y = np.log(np.asarray(sweep.steps))
    n = len(x)
    if n < 3:
        raise ValueError(
            f"BatchSweep(n_params={sweep.n_params:g}, target_loss={sweep.target_loss:g}) has {n} batch "
            "sizes; the fit with an interval needs >= 3"
        )

    def rss(b: float | np.ndarray) -> np.ndarray:
        r = y - np.logaddexp(0.0, np.subtract.outer(np.atleast_1d(b), x))  # (grid, n)
        return ((r - r.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)

    lo_b, hi_b = x.min() - _PAD, x.max() + _PAD
    grid = np.linspace(lo_b, hi_b, 801)  # step ~ (range + 16) / 800 in log B
    prof = rss(grid)
    k = int(np.argmin(prof))
    a, c = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
    opt = minimize_scalar(
        lambda b: float(rss(b)[0]), bounds=(a, c), method="bounded", options={"xatol": 1e-10}
    )
    b_hat = float(opt.x) if opt.fun <= prof[k] else float(grid[k])
    rss_min = max(float(rss(b_hat)[0]), 1e-30 * n)
    thresh = rss_min * (1.0 + f_dist.ppf(level, 1, n - 2) / (n - 2))

    def g(b: float) -> float:
        return float(rss(b)[0]) - thresh

    left, right = grid[grid < b_hat], grid[grid > b_hat]
    out_l = np.flatnonzero(rss(left) > thresh) if len(left) else np.array([], int)
    out_r = np.flatnonzero(rss(right) > thresh) if len(right) else np.array([], int)
    if len(out_l):
        i = out_l[-1]  # last grid point left of the optimum that is outside
        b_low = brentq(g, left[i], left[i + 1] if i + 1 < len(left) else b_hat)
        low = float(np.exp(b_low))
    else:
        low = 0.0
    if len(out_r):
        i = out_r[0]
        b_high = brentq(g, right[i - 1] if i > 0 else b_hat, right[i])
        high = float(np.exp(b_high))
    else:
        high = float("inf")
    a_hat = float(np.mean(y - np.logaddexp(0.0, b_hat - x)))
    return BatchSweepFit(
        sweep=sweep,
        S_min=float(np.exp(a_hat)),
        B_noise=float(np.exp(b_hat)),
        B_crit_low=low,
        B_crit_high=high,
        rmse_log=float(np.sqrt(rss_min / n)),
        level=level,
    )


# candidate laws: log B_crit = c0 + sum_j c_j log(feature_j); features of one sweep: loss, D_min, N
_CBS_FORMS: dict[str, tuple[str, ...]] = {
    "loss": ("loss",),
    "tokens": ("tokens",),
    "params": ("params",),
    "loss+params": ("loss", "params"),
    "tokens+params": ("tokens", "params"),
}


@dataclass(frozen=True)
class CBSPrediction:
    """A predicted critical batch: ``value`` in sequences with its ``level`` interval [low, high]."""

    value: float
    low: float
    high: float
    seq_len: int
    form: str
    level: float

    @property
    def tokens(self) -> float:
        return self.value * self.seq_len

    @property
    def low_tokens(self) -> float:
        return self.low * self.seq_len

    @property
    def high_tokens(self) -> float:
        return self.high * self.seq_len


@dataclass(frozen=True)
class CBSScalingFit:
    """The critical batch (``B_noise`` of each ``BatchSweep``) as a power law in the quantity the data
    support, chosen by leave-one-size-out error among ``form``s (Kaplan et al. 2020 write it in the
    loss; Zhang et al. 2024 and Bergsma et al. 2025 find it grows with data, not with model size at
    fixed data):

        loss:           B_crit = exp(c0) L**c1
        tokens:         B_crit = exp(c0) D**c1
        params:         B_crit = exp(c0) N**c1
        loss+params:    B_crit = exp(c0) L**c1 N**c2
        tokens+params:  B_crit = exp(c0) D**c1 N**c2

    with B_crit in sequences, L the target loss, N parameters and D = D_min = E_min * seq_len the fewest
    tokens that reach L at size N (a run at batch B reaches L after D (1 + B / B_crit) tokens, so ~2 D at
    the critical batch). Fitted by least squares in log space on the sweeps whose interval is bounded.
    Where the chosen form uses D and ``predict`` is not given ``tokens``, D comes from the auxiliary law
    ``L = E + A / N**alpha + B / D**beta`` (``tokens_law``) fitted on the same sweeps, its held-out error
    added in quadrature.

    Interval: ``t_k(1 - (1 - level) / 2) * s`` around the log prediction, with ``s`` the larger of
    the in-sample predictive sd and the chosen form's leave-one-size-out rmse (extrapolating to a new size
    is what a user does, so held-out error is the honest scale). ``k`` counts what that scale was estimated
    from: ``dof`` (sweeps - coefficients) for the in-sample sd, ``n_sizes`` (one held-out error per size: the
    cells of one size share a fold's coefficients and move together) for the leave-one-size-out rmse. With 2
    or 3 sizes the latter is a guess from 2 or 3 numbers; read with ``dof`` degrees of freedom it made those
    intervals 1.5x too narrow in log on the CPU bench (``benchmarks/results/cbs.md``)."""

    form: str
    coef: tuple[float, ...]
    features: tuple[str, ...]
    loso_rmse: dict[str, float]
    """Leave-one-size-out rmse of log B_crit, per candidate form that could be held out."""
    sigma_log: float
    dof: int
    seq_len: int
    level: float
    points: tuple[BatchSweepFit, ...]
    n_excluded: int
    """Sweeps left out of the law because their B_crit interval was unbounded."""
    xtx_inv: tuple[tuple[float, ...], ...]
    tokens_known: bool = False
    """Whether the form was chosen for predictions given ``tokens`` (``fit_cbs_scaling(tokens_known=)``)."""
    n_sizes: int = 0
    """Sizes held out in turn for ``loso_rmse`` (the degrees of freedom of that scale)."""

    @cached_property
    def tokens_law(self) -> tuple[ChinchillaFit, float]:
        """``L = E + A / N**alpha + B / D_min**beta`` (``fit_chinchilla``) over the bounded sweeps, and the
        sd of log D_min it predicts for a new size: the larger of its in-sample and leave-one-size-out
        rmse. Fitted on first use (one Chinchilla fit per size + 1, ~1 s each on a 2-core CPU)."""
        used = [f for f in self.points if f.bounded]
        N = np.array([f.sweep.n_params for f in used])
        D = np.array([f.D_min for f in used])
        L = np.array([f.sweep.target_loss for f in used])
        if len(np.unique(N)) < 3 or len(used) < 6:
            raise ValueError(
                f"form={self.form!r} needs tokens: pass tokens=... ({len(used)} bounded sweeps over "
                f"{len(np.unique(N))} sizes are too few for the law D_min(N, L); it needs >= 6 over >= 3 sizes)"
            )
        law = fit_chinchilla(N, D, L)
        sq = [np.mean((np.log(_tokens_at(law, N, L)) - np.log(D)) ** 2)]
        for n in np.unique(N):
            tr, te = N != n, N == n
            pred = _fold_tokens(used, np.flatnonzero(tr), np.flatnonzero(te))
            err = np.where(
                np.isfinite(pred), np.log(np.where(np.isfinite(pred), pred, 1.0)) - np.log(D[te]), 1.0
            )
            sq.append(np.mean(err**2))
        return law, float(np.sqrt(max(sq[0], np.mean(sq[1:]))))

    def predict(self, *, n_params: float, loss: float, tokens: float | None = None) -> CBSPrediction:
        """Critical batch (sequences) for a model of ``n_params`` at target ``loss``; ``tokens`` = D_min
        (see the class docstring) where known, otherwise estimated from (n_params, loss)."""
        from scipy.stats import t as t_dist

        n_params = check_range("n_params", n_params, 0.0, np.inf, lo_open=True, hi_open=True)
        loss = check_range("loss", loss, 0.0, np.inf, lo_open=True, hi_open=True)
        extra = 0.0
        feats = {"loss": np.log(loss), "params": np.log(n_params)}
        if "tokens" in self.features:
            if tokens is None:
                law, sd = self.tokens_law
                d = float(_tokens_at(law, np.array([n_params]), np.array([loss]))[0])
                if not np.isfinite(d):
                    reach = law.E + law.A / n_params**law.alpha
                    raise ValueError(
                        f"loss={loss} is below the loss {reach:.4g} that N={n_params:g} parameters reach with "
                        "unlimited data under the sweeps' law L(N, D_min); pass tokens=... or a higher loss"
                    )
                feats["tokens"] = np.log(d)
                extra = (self.coef[1 + self.features.index("tokens")] * sd) ** 2
            else:
                feats["tokens"] = np.log(
                    check_range("tokens", tokens, 0.0, np.inf, lo_open=True, hi_open=True)
                )
        x0 = np.array([1.0] + [feats[f] for f in self.features])
        mu = float(x0 @ np.asarray(self.coef))
        h0 = float(x0 @ np.asarray(self.xtx_inv) @ x0)
        v_in, v_loso = self.sigma_log**2 * (1.0 + h0), self.loso_rmse.get(self.form, 0.0) ** 2
        sd = np.sqrt(max(v_in, v_loso) + extra)
        k = self.dof if v_in >= v_loso or self.n_sizes < 1 else self.n_sizes
        q = float(t_dist.ppf(0.5 + self.level / 2, k))
        return CBSPrediction(
            value=float(np.exp(mu)),
            low=float(np.exp(mu - q * sd)),
            high=float(np.exp(mu + q * sd)),
            seq_len=self.seq_len,
            form=self.form,
            level=self.level,
        )


def _tokens_at(law: ChinchillaFit, N: np.ndarray, L: np.ndarray) -> np.ndarray:
    """D_min solving ``L = E + A / N**alpha + B / D**beta``; nan where L is at or below E + A / N**alpha."""
    gap = np.asarray(L, dtype=np.float64) - law.E - law.A / np.asarray(N, dtype=np.float64) ** law.alpha
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(gap > 0, (law.B / np.where(gap > 0, gap, 1.0)) ** (1.0 / law.beta), np.nan)


def _design(feats: dict[str, np.ndarray], names: tuple[str, ...], idx: np.ndarray) -> np.ndarray:
    return np.column_stack([np.ones(len(idx))] + [feats[f][idx] for f in names])


def _full_rank(X: np.ndarray) -> bool:
    return X.shape[0] > X.shape[1] and np.linalg.matrix_rank(X) == X.shape[1]


def fit_cbs_scaling(
    sweeps: list[BatchSweep] | tuple[BatchSweep, ...], *, level: float = 0.9, tokens_known: bool = False
) -> CBSScalingFit:
    """Fit each sweep's ``S(B)`` (``fit_batch_sweep``), then the power law of ``CBSScalingFit`` whose
    leave-one-size-out rmse of log B_crit is lowest (ties go to the form listed first: fewer features).
    A form is a candidate when every fold's design is full rank with a residual left over; needs sweeps
    of >= 2 sizes with one ``seq_len``.

    The held-out size is predicted the way ``predict`` will be called: with ``tokens_known`` (the caller
    passes ``tokens=D_min``) a D form sees the held-out cells' own D_min; without (the default, and the
    fitter's case) it sees the D_min that the fold's own ``L(N, D_min)`` law predicts for them (see
    ``tokens_law``), so a D form is a candidate only where every fold has >= 3 sizes and >= 6 cells to fit
    that law, and its held-out error includes the error of not knowing D (a nan D counts as a log error
    of 1)."""
    level = check_range("level", level, 0.0, 1.0, lo_open=True, hi_open=True)
    sweeps = list(sweeps)
    for i, s in enumerate(sweeps):
        if not isinstance(s, BatchSweep):
            raise TypeError(f"sweeps[{i}] must be a BatchSweep, got {type(s).__name__}")
    seq = sorted({s.seq_len for s in sweeps})
    if len(seq) != 1:
        raise ValueError(f"sweeps have seq_len in {seq}; fit sweeps of one sequence length together")
    fits = [fit_batch_sweep(s, level=level) for s in sweeps]
    used = [f for f in fits if f.bounded]
    sizes = np.array([f.sweep.n_params for f in used])
    if len(np.unique(sizes)) < 2:
        raise ValueError(
            f"{len(used)} of {len(fits)} sweeps bound their critical batch, over {len(np.unique(sizes))} "
            "size(s); the law needs bounded sweeps of >= 2 sizes (widen the batch range where B_crit is "
            "open-ended)"
        )
    y = np.log([f.B_noise for f in used])
    feats = {
        "loss": np.log([f.sweep.target_loss for f in used]),
        "tokens": np.log([f.D_min for f in used]),
        "params": np.log(sizes),
    }
    allidx = np.arange(len(used))
    loso: dict[str, float] = {}
    fold_d: dict[float, np.ndarray | None] = {}
    for form, names in _CBS_FORMS.items():
        if not _full_rank(_design(feats, names, allidx)):
            continue
        sq, ok = [], True
        for n in np.unique(sizes):
            tr, te = allidx[sizes != n], allidx[sizes == n]
            X = _design(feats, names, tr)
            if not _full_rank(X):
                ok = False
                break
            c = np.linalg.lstsq(X, y[tr], rcond=None)[0]
            held = dict(feats)
            if "tokens" in names and not tokens_known:
                if n not in fold_d:  # one L(N, D_min) law per fold, shared by the D forms; it needs
                    enough = len(np.unique(sizes[tr])) >= 3 and len(tr) >= 6  # >= 3 sizes, >= 6 cells
                    fold_d[n] = _fold_tokens(used, tr, te) if enough else None
                d_hat = fold_d[n]
                if d_hat is None:
                    ok = False
                    break
                held["tokens"] = feats["tokens"].copy()
                held["tokens"][te] = np.log(np.where(np.isfinite(d_hat), d_hat, 1.0))
                miss = ~np.isfinite(d_hat)
            else:
                miss = np.zeros(len(te), dtype=bool)
            err = _design(held, names, te) @ c - y[te]
            sq.append(np.mean(np.where(miss, 1.0, err**2)))
        if ok:
            loso[form] = float(np.sqrt(np.mean(sq)))  # each held-out size weighs the same
    if not loso:
        raise ValueError(
            f"no candidate law can be held out size by size with {len(used)} bounded sweeps over "
            f"{len(np.unique(sizes))} sizes; add target losses per size or sizes"
        )
    form = min(loso, key=lambda k: (loso[k], list(_CBS_FORMS).index(k)))
    names = _CBS_FORMS[form]
    X = _design(feats, names, allidx)
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    dof = len(y) - X.shape[1]
    sigma = float(np.sqrt(np.sum((y - X @ coef) ** 2) / dof))
    return CBSScalingFit(
        form=form,
        coef=tuple(float(v) for v in coef),
        features=names,
        loso_rmse=loso,
        sigma_log=sigma,
        dof=dof,
        seq_len=seq[0],
        level=level,
        points=tuple(fits),
        n_excluded=len(fits) - len(used),
        xtx_inv=tuple(tuple(float(v) for v in r) for r in np.linalg.inv(X.T @ X)),
        tokens_known=bool(tokens_known),
        n_sizes=len(np.unique(sizes)),
    )


def _fold_tokens(used: list[BatchSweepFit], tr: np.ndarray, te: np.ndarray) -> np.ndarray:
    """D_min of the cells ``te`` from ``L = E + A / N**alpha + B / D_min**beta`` fitted on the cells ``tr``
    (indices into ``used``; nan where that law cannot reach the cell's loss)."""
    N = np.array([used[i].sweep.n_params for i in tr])
    D = np.array([used[i].D_min for i in tr])
    L = np.array([used[i].sweep.target_loss for i in tr])
    try:
        law = fit_chinchilla(N, D, L)
    except FloatingPointError:  # the fold's cells do not identify the law: none of its cells is predicted
        return np.full(len(te), np.nan)
    return _tokens_at(
        law,
        np.array([used[i].sweep.n_params for i in te]),
        np.array([used[i].sweep.target_loss for i in te]),
    )


# --------------------------------------------------------------------------------------------------
# batch sweeps from training curves, and the noise scale calibrated against measured critical batches


def _smooth(steps: np.ndarray, y: np.ndarray, width: float) -> np.ndarray:
    """Local linear regression of the loss on log(step), Gaussian kernel of sd ``width`` in log(step).

    Runs at different batch sizes are, to first order, the same curve stretched in steps
    (``L_B(s) = f(s / c_B)``): in log(step) they are shifted copies, so a kernel of fixed width in
    log(step) smooths each the same way and shifts its crossings by the same factor, which leaves
    ``B_noise`` unbiased (it only rescales S_min a little). A fixed window in rows or an EWA would not:
    rows span more of a large-batch curve's bend (and a one-sided EWA lags by a 1/B-shaped amount)."""
    x = np.log(steps)
    out = y.copy()
    for i in range(len(x)):
        near = np.abs(x - x[i]) < 3 * width
        if near.sum() < 3:
            continue  # too few rows around it (the first rows, in log(step)): left as measured
        w = np.exp(-0.5 * ((x[near] - x[i]) / width) ** 2)
        dx = x[near] - x[i]
        sw, swx, swxx = w.sum(), (w * dx).sum(), (w * dx * dx).sum()
        swy, swxy = (w * y[near]).sum(), (w * dx * y[near]).sum()
        det = sw * swxx - swx * swx
        out[i] = (swxx * swy - swx * swxy) / det if det > 1e-12 * sw * sw else swy / sw
    return out


def steps_to_target(steps: np.ndarray, losses: np.ndarray, target: float, *, after: float = 0.0) -> float:
    """First step (linearly interpolated between rows) where the curve falls to ``target``, past step
    ``after``; nan when it never does."""
    s, lo = np.asarray(steps, dtype=np.float64), np.asarray(losses, dtype=np.float64)
    idx = np.flatnonzero((lo <= target) & (s > after))
    if not len(idx):
        return float("nan")
    i = int(idx[0])
    if i == 0 or s[i - 1] <= after or lo[i - 1] <= target:
        return float(s[i])
    f = (lo[i - 1] - target) / (lo[i - 1] - lo[i])
    return float(s[i - 1] + f * (s[i] - s[i - 1]))


def batch_sweeps_from_curves(
    curves: dict[int, tuple[np.ndarray, np.ndarray]],
    *,
    n_params: float,
    seq_len: int,
    n_targets: int = 4,
    width: float = 0.1,
    skip: float = 0.2,
) -> list[BatchSweep]:
    """``BatchSweep`` cells from the loss curves of one size at several batch sizes (Zhang et al. 2024):
    ``curves[B] = (steps, losses)`` (training-loss rows, steps >= 1). Each curve is smoothed in log(step)
    (``_smooth``: local linear, kernel sd ``width``, the same for every batch size);
    the targets are ``n_targets`` losses evenly spaced in log between the median of the curves' losses at
    ``skip`` of their steps (past the warmup transient) and the lowest loss every curve reaches; the steps
    to each target are interpolated between rows."""
    if len(curves) < 3:
        raise ValueError(f"{len(curves)} batch sizes {sorted(curves)}; a batch sweep needs >= 3")
    sm = {}
    for B, (s, lo) in curves.items():
        s, lo = np.asarray(s, dtype=np.float64), np.asarray(lo, dtype=np.float64)
        ok = np.isfinite(lo)
        if ok.sum() < 4:
            raise ValueError(f"batch {B}: {int(ok.sum())} finite rows; need >= 4")
        sm[B] = (s[ok], _smooth(s[ok], lo[ok], width))
    lo_all = max(float(v[1].min()) for v in sm.values())  # reached by every batch size
    hi_all = float(np.median([np.interp(skip * v[0][-1], v[0], v[1]) for v in sm.values()]))
    if not hi_all > lo_all:
        raise ValueError(
            f"no loss range is reached by every batch size: the median loss at {skip:.0%} of the runs "
            f"{hi_all:.4g} <= {lo_all:.4g}, the lowest loss every run reaches; train longer"
        )
    lo_t = lo_all + 1e-3 * (hi_all - lo_all)
    targets = np.geomspace(hi_all, lo_t, n_targets) if n_targets > 1 else np.array([lo_t])
    out = []
    for L in targets:
        Bs, S = [], []
        for B, (s, lo) in sorted(sm.items()):
            # first crossing after the curve passed its skip point (its early transient)
            st = steps_to_target(s, lo, float(L), after=0.0)
            if np.isfinite(st) and st > 0:
                Bs.append(float(B))
                S.append(st)
        if len(Bs) >= 3:
            out.append(BatchSweep(n_params, float(L), tuple(Bs), tuple(S), seq_len))
    return out


@dataclass(frozen=True)
class CalibratedCBS:
    """A critical batch predicted from the noise scale: ``value = ratio(L) x B_simple`` (tokens), with its
    ``level`` interval; ``source`` names what it rests on."""

    value: float
    low: float
    high: float
    loss: float
    ratio: float
    b_simple: float
    level: float
    source: str


@dataclass(frozen=True)
class CBSCalibration:
    """The measured critical batch over the simple noise scale at the same loss, as a power law in loss:

        log(B_crit_measured / B_simple) = c0 + c1 log(L / l_ref)        (form "loss")
        log(B_crit_measured / B_simple) = c0                             (form "constant")

    fitted by least squares over measurements along and across runs (branches and batch sweeps), the form
    chosen by leave-one-out error (``constant`` unless ``loss`` predicts held-out points better). The
    predicted critical batch at loss L is ``ratio(L) x B_simple(L)``: B_simple is the cheap signal logged
    every few steps, the ratio carries what the measurements say about it. McCandlish et al. 2018 expect
    ratio ~ 1 only for a well-conditioned Hessian; Merrill et al. 2025 measured far above 1.

    Interval: ``t_{dof}`` quantile of the log prediction with sd = sqrt(sigma^2 (1 + h0) + sd_b^2): sigma is
    the larger of the residual sd and the measurements' own log-sd (their intervals), h0 the leverage,
    sd_b the uncertainty of the B_simple it multiplies."""

    form: str
    coef: tuple[float, ...]
    l_ref: float
    sigma_log: float
    dof: int
    n_points: int
    loo_rmse: dict[str, float]
    level: float
    xtx_inv: tuple[tuple[float, ...], ...]
    sources: tuple[str, ...]

    def _x(self, loss: float) -> np.ndarray:
        return np.array([1.0] + ([np.log(loss / self.l_ref)] if self.form == "loss" else []))

    def log_ratio(self, loss: float) -> tuple[float, float]:
        """(mean, predictive sd) of log(measured / B_simple) at ``loss``."""
        x = self._x(check_range("loss", loss, 0.0, np.inf, lo_open=True, hi_open=True))
        h0 = float(x @ np.asarray(self.xtx_inv) @ x)
        return float(x @ np.asarray(self.coef)), float(self.sigma_log * np.sqrt(1.0 + h0))

    def predict(self, *, loss: float, b_simple: float, b_simple_sd_log: float = 0.0) -> CalibratedCBS:
        """Critical batch (same unit as ``b_simple``, tokens in our rows) at ``loss`` given the noise scale
        there (measured, or from a B_simple(L) law with its log-sd ``b_simple_sd_log``)."""
        from scipy.stats import t as t_dist

        b = check_range("b_simple", b_simple, 0.0, np.inf, lo_open=True, hi_open=True)
        mu, sd = self.log_ratio(loss)
        sd = float(np.hypot(sd, b_simple_sd_log))
        q = float(t_dist.ppf(0.5 + self.level / 2, self.dof))
        src = f"calibrated gns_b_simple (ratio form {self.form!r}, {self.n_points} measurements: {', '.join(self.sources)})"
        return CalibratedCBS(
            value=float(np.exp(mu) * b), low=float(np.exp(mu - q * sd) * b), high=float(np.exp(mu + q * sd) * b),
            loss=float(loss), ratio=float(np.exp(mu)), b_simple=float(b), level=self.level, source=src,
        )  # fmt: skip


def fit_cbs_calibration(
    losses: np.ndarray,
    measured: np.ndarray,
    b_simple: np.ndarray,
    *,
    measured_sd_log: np.ndarray | None = None,
    sources: tuple[str, ...] | list[str] = (),
    level: float = 0.9,
) -> CBSCalibration:
    """Fit ``CBSCalibration`` to measured critical batches ``measured`` at ``losses`` with the noise scale
    ``b_simple`` there (same unit). ``measured_sd_log``: each measurement's own log-sd (e.g. from its
    interval); it floors the scatter. Needs >= 1 point (>= 4 with distinct losses for the ``loss`` form)."""
    level = check_range("level", level, 0.0, 1.0, lo_open=True, hi_open=True)
    L = as_1d("losses", losses, positive=True)
    M = as_1d("measured", measured, positive=True)
    G = as_1d("b_simple", b_simple, positive=True)
    n = same_length(losses=L, measured=M, b_simple=G)
    sd_m = np.zeros(n) if measured_sd_log is None else np.asarray(measured_sd_log, dtype=np.float64)
    if sd_m.shape != (n,) or not np.all(np.isfinite(sd_m) & (sd_m >= 0)):
        raise ValueError(f"measured_sd_log must be {n} finite values >= 0, got {measured_sd_log!r}")
    y = np.log(M / G)
    l_ref = float(np.exp(np.mean(np.log(L))))
    x1 = np.log(L / l_ref)
    designs = {"constant": np.ones((n, 1)), "loss": np.column_stack([np.ones(n), x1])}
    loo: dict[str, float] = {}
    for form, X in designs.items():
        if n < X.shape[1] + 2 or not _full_rank(X):
            continue
        err = []
        for i in range(n):
            keep = np.arange(n) != i
            c = np.linalg.lstsq(X[keep], y[keep], rcond=None)[0]
            err.append(float(X[i] @ c - y[i]))
        loo[form] = float(np.sqrt(np.mean(np.square(err))))
    form = "loss" if "loss" in loo and loo["loss"] < loo.get("constant", np.inf) else "constant"
    X = designs[form]
    coef = np.linalg.lstsq(X, y, rcond=None)[0]
    dof = n - X.shape[1]
    resid_sd = float(np.sqrt(np.sum((y - X @ coef) ** 2) / dof)) if dof > 0 else 0.0
    sigma = max(resid_sd, float(np.sqrt(np.mean(sd_m**2))))
    if not sigma > 0:
        raise ValueError(
            f"{n} measurement(s) without their own uncertainty leave no scatter to estimate; pass "
            "measured_sd_log or more measurements"
        )
    return CBSCalibration(
        form=form, coef=tuple(float(v) for v in coef), l_ref=l_ref, sigma_log=sigma, dof=max(dof, 1),
        n_points=n, loo_rmse=loo, level=level,
        xtx_inv=tuple(tuple(float(v) for v in r) for r in np.linalg.inv(X.T @ X)),
        sources=tuple(sorted(set(sources))),
    )  # fmt: skip
