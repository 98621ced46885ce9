"""Data pools of different quality (Goyal et al. 2024, "Scaling laws for data filtering — data curation
cannot be compute agnostic"): each pool's utility decays as its tokens repeat; mixtures add the pools' parts.

A run trains an ``N``-parameter model on ``D`` tokens drawn from a mixture of pools with weights ``w_p``
(sum 1); pool ``p`` holds ``U_p`` unique tokens and receives ``D_p = w_p D`` tokens, ``e_p = D_p / U_p``
epochs. Per pool there are three numbers:

* utility ``q_p``: what one fresh token of the pool is worth in tokens of the *reference* pool (``q = 1``);
* half-life ``tau_p`` (in epochs): the k-th pass over the pool is worth ``2**(-(k - 1) / tau_p)`` of the first,
  so a pool loses half of its utility every ``tau_p`` repetitions (Goyal et al.'s decaying utility);
* floor ``delta_p`` (nats): the shift of the attainable loss from training on the pool's distribution instead
  of the reference's (noisy text teaches the model to expect noise, which costs on clean held-out text at
  any compute; ``delta = 0`` for the reference, and for every pool with ``floor=False``).

In continuous epochs the pool's effective tokens are ``U_p q_p g(e_p; tau_p)`` with

    g(e; tau) = e                                             e <= 1   (every token fresh)
              = 1 + tau / ln 2 * (1 - 2**(-(e - 1) / tau))    e > 1    (the integral of the decaying worth)

which saturates at ``U_p q_p (1 + tau_p / ln 2)``: Muennighoff et al.'s ``R* = tau / ln 2``. A mixture adds
the pools' effective tokens and averages their floors by the sampling weights:

    D' = sum_p q_p U_p g(w_p D / U_p; tau_p)
    L(N, D; w) = E + sum_p w_p delta_p + A / N**alpha + B / D'**beta

A single reference pool never repeated is the Chinchilla law. The quality-quantity trade-off follows: a
small clean pool has the lowest loss while it is fresh, but its ``D'`` saturates, so past some compute a
larger pool of lower utility (or a mix) wins; ``DataPoolsFit.best`` and ``.crossover`` give that compute.

Fit: Huber loss on ``log L`` (``scipy.optimize.least_squares``, bounded) from the best starts of a grid
over (alpha, beta, tau, q) whose linear part (E, A, B) is solved by non-negative least squares. Floors are off by default (``floor=False``): with one
pool's runs spread over less than a decade of D, ``q_p`` and ``delta_p`` trade off (on the pools-cpu sweep,
4 budgets x 2 sizes per pool, the floor fit went to q = 44, delta = +3.8 nats and mispredicted the mixes by
20%; without floors, 5%). A pool whose
runs never go past ``min_repeat_epochs`` epochs has no identified half-life: it takes the geometric mean of
the identified ones (``half_life_prior`` when none is), and ``identified`` says so. ``n_bootstrap > 0`` adds
case-resampling draws (each refit from the optimum): ``ci`` per parameter and ``predict_interval``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import brentq, least_squares, minimize_scalar, nnls

from ._validate import as_1d, check_range, same_length

LN2 = math.log(2.0)
_BOUNDS = {  # (low, high) of each kind of parameter in the fit's space
    "log_E": (math.log(1e-3), math.log(1e3)),
    "log_A": (-20.0, 80.0),
    "alpha": (0.01, 3.0),
    "log_B": (-20.0, 80.0),
    "beta": (0.01, 3.0),
    "log_q": (math.log(1e-4), math.log(1e4)),
    "delta": (-5.0, 5.0),
    "log_tau": (math.log(1e-2), math.log(1e4)),
}


def as_mix(mix: str | Mapping[str, float], *, where: str = "mix") -> dict[str, float]:
    """A mixture as {pool: weight} normalised to sum 1: a mapping, or ``"clean"`` / ``"clean:0.5+noisy:0.5"``."""
    if isinstance(mix, str):
        raw: dict[str, float] = {}
        for part in mix.split("+"):
            name, _, w = part.strip().partition(":")
            if not name or name in raw:
                raise ValueError(
                    f"{where}={mix!r}: {part!r} is empty or repeated; write 'a' or 'a:0.5+b:0.5'"
                )
            try:
                raw[name] = float(w) if w else 1.0
            except ValueError:
                raise ValueError(f"{where}={mix!r}: weight {w!r} of pool {name!r} is not a number") from None
    else:
        raw = {str(k): float(v) for k, v in dict(mix).items()}
    if not raw or any(not (math.isfinite(v) and v > 0) for v in raw.values()):
        raise ValueError(f"{where}={mix!r}: give at least one pool, every weight finite and > 0")
    total = sum(raw.values())
    return {k: v / total for k, v in raw.items()}


def half_life_worth(epochs: np.ndarray, half_life: np.ndarray) -> np.ndarray:
    """``g(e; tau)`` of the module docstring: effective passes after ``e`` epochs with half-life ``tau``."""
    e, tau = np.asarray(epochs, dtype=np.float64), np.asarray(half_life, dtype=np.float64)
    extra = np.maximum(e - 1.0, 0.0)
    return np.minimum(e, 1.0) + tau / LN2 * -np.expm1(-LN2 * extra / tau)


@dataclass(frozen=True)
class PoolParams:
    """One pool's fitted numbers (the module docstring's ``U_p``, ``q_p``, ``tau_p``, ``delta_p``)."""

    unique_tokens: float
    utility: float
    """q: a fresh token's worth in reference-pool tokens (1 for the reference)."""
    half_life: float
    """tau in epochs: each further pass is worth 2**(-1/tau) of the one before."""
    floor: float
    """delta in nats: the shift of the attainable loss (0 for the reference)."""
    max_epochs: float
    """The most epochs any fitted run spent on this pool."""
    identified: bool
    """False when no run repeated the pool past ``min_repeat_epochs``: its half-life is borrowed."""


@dataclass(frozen=True)
class PoolChoice:
    """``DataPoolsFit.best`` at one compute budget: the winning mix and every candidate's optimum."""

    compute: float
    best: str
    loss: dict[str, float]
    """Each candidate's predicted loss at its best N (or the given N) for this compute."""
    N: dict[str, float]
    D: dict[str, float]


@dataclass(frozen=True)
class DataPoolsFit:
    """Fitted ``L(N, D; w) = E + sum_p w_p delta_p + A / N**alpha + B / D'**beta`` (module docstring)."""

    E: float
    A: float
    alpha: float
    B: float
    beta: float
    reference: str
    pools: dict[str, PoolParams]
    objective: float
    n_points: int
    confidence: float = 0.9
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Bootstrap intervals: 'E', 'A', 'alpha', 'B', 'beta', 'utility[p]', 'half_life[p]', 'floor[p]'."""
    draws: tuple[DataPoolsFit, ...] = field(default=(), repr=False)
    """One fit per bootstrap draw (same reference and pools)."""
    log_residuals: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)

    # ------------------------------------------------------------------ the law
    def effective_tokens(self, mix: str | Mapping[str, float], D: np.ndarray | float) -> np.ndarray:
        """D' of ``D`` tokens drawn from ``mix`` (reference-pool tokens)."""
        w = self._mix(mix)
        D = np.asarray(D, dtype=np.float64)
        out = np.zeros(D.shape)
        for name, wp in w.items():
            p = self.pools[name]
            out = out + p.utility * p.unique_tokens * half_life_worth(wp * D / p.unique_tokens, p.half_life)
        return out

    def predict(
        self, mix: str | Mapping[str, float], N: np.ndarray | float, D: np.ndarray | float
    ) -> np.ndarray:
        """Loss of an ``N``-parameter model trained on ``D`` tokens of ``mix`` (broadcasting N and D)."""
        N, D = np.broadcast_arrays(np.asarray(N, dtype=np.float64), np.asarray(D, dtype=np.float64))
        w = self._mix(mix)
        floor = sum(wp * self.pools[p].floor for p, wp in w.items())
        return self.E + floor + self.A / N**self.alpha + self.B / self.effective_tokens(w, D) ** self.beta

    def predict_interval(
        self, mix: str | Mapping[str, float], N, D, *, noise: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Two-sided ``confidence`` bootstrap interval of the loss: the law over the draws (``noise=False``),
        times every ``exp(log residual)`` of the fit (``noise=True``: a prediction interval for one run)."""
        if not self.draws:
            raise ValueError("predict_interval needs bootstrap draws: fit with n_bootstrap > 0 (got 0)")
        N, D = np.broadcast_arrays(np.asarray(N, dtype=np.float64), np.asarray(D, dtype=np.float64))
        log_p = np.log(np.stack([d.predict(mix, N, D).ravel() for d in self.draws]))  # (B, m)
        if noise and len(self.log_residuals):
            log_p = (log_p[:, None, :] + self.log_residuals[None, :, None]).reshape(-1, log_p.shape[-1])
        q = (1.0 - self.confidence) / 2.0
        lo, hi = np.exp(np.quantile(log_p, [q, 1.0 - q], axis=0))
        return lo.reshape(N.shape), hi.reshape(N.shape)

    # ---------------------------------------------------------- compute-optimal
    def optimal(self, mix: str | Mapping[str, float], compute: float) -> tuple[float, float, float]:
        """(N, D, L) minimising the loss of ``mix`` at ``compute = 6 N D`` FLOPs: a scan then a bounded
        search in log N over 1e-4..1e4 times the all-fresh Chinchilla optimum of the reference pool."""
        c = check_range("compute", compute, 0.0, math.inf, lo_open=True, hi_open=True)
        s = self.alpha + self.beta
        ln0 = math.log((self.alpha * self.A / (self.beta * self.B)) ** (1.0 / s)) + self.beta / s * math.log(
            c / 6.0
        )

        def f(ln: float) -> float:
            n = math.exp(ln)
            return float(self.predict(mix, n, c / (6.0 * n)))

        grid = np.linspace(ln0 - math.log(1e4), ln0 + math.log(1e4), 161)
        k = int(np.argmin([f(x) for x in grid]))
        res = minimize_scalar(f, bounds=(grid[max(k - 1, 0)], grid[min(k + 1, 160)]), method="bounded")
        n = math.exp(float(res.x))
        return n, c / (6.0 * n), float(res.fun)

    def best(
        self,
        compute: float | Sequence[float],
        candidates: Sequence[str | Mapping[str, float]] | None = None,
        *,
        N: float | None = None,
    ) -> PoolChoice | list[PoolChoice]:
        """Which pool or mix gives the lowest loss at ``compute = 6 N D`` FLOPs: each candidate (default: every
        pool alone) at its own compute-optimal N, or at the given ``N`` (then ``D = compute / (6 N)``)."""
        cands = [c if isinstance(c, str) else _fmt(as_mix(c)) for c in (candidates or list(self.pools))]
        if not cands:
            raise ValueError("candidates is empty; give at least one pool or mix")
        many = np.ndim(compute) > 0
        out = []
        for c in np.atleast_1d(np.asarray(compute, dtype=np.float64)):
            loss, ns, ds = {}, {}, {}
            for m in cands:
                if N is None:
                    ns[m], ds[m], loss[m] = self.optimal(m, float(c))
                else:
                    ns[m], ds[m] = float(N), float(c) / (6.0 * float(N))
                    loss[m] = float(self.predict(m, ns[m], ds[m]))
            out.append(PoolChoice(float(c), min(loss, key=loss.get), loss, ns, ds))
        return out if many else out[0]

    def crossover(
        self,
        a: str | Mapping[str, float],
        b: str | Mapping[str, float],
        *,
        lo: float,
        hi: float,
        N: float | None = None,
    ) -> float | None:
        """The compute in [lo, hi] where ``a`` and ``b`` give the same loss (each at its optimal N, or at
        ``N``); None when the same one wins at both ends. The first crossing of a 64-point log scan."""

        def diff(lc: float) -> float:
            c = math.exp(lc)
            if N is None:
                return self.optimal(a, c)[2] - self.optimal(b, c)[2]
            d = c / (6.0 * N)
            return float(self.predict(a, N, d) - self.predict(b, N, d))

        grid = np.linspace(math.log(lo), math.log(hi), 64)
        vals = [diff(x) for x in grid]
        for k in range(len(grid) - 1):
            if np.sign(vals[k]) != np.sign(vals[k + 1]):
                return math.exp(brentq(diff, grid[k], grid[k + 1], xtol=1e-6))
        return None

    def _mix(self, mix: str | Mapping[str, float]) -> dict[str, float]:
        w = as_mix(mix)
        unknown = [p for p in w if p not in self.pools]
        if unknown:
            raise ValueError(
                f"mix {mix!r}: pool(s) {unknown} were not fitted; fitted pools: {list(self.pools)}"
            )
        return w


def _fmt(w: Mapping[str, float]) -> str:
    return next(iter(w)) if len(w) == 1 else "+".join(f"{k}:{v:.4g}" for k, v in w.items())


# ---------------------------------------------------------------------------------------------- fit
class _Layout:
    """Where each parameter lives in the fit vector: 5 shared, then log q and delta of every non-reference
    pool (delta only with floors), then log tau of every identified pool."""

    def __init__(self, names: list[str], reference: str, identified: list[str], floor: bool) -> None:
        self.names, self.reference, self.identified, self.floor = names, reference, identified, floor
        self.others = [p for p in names if p != reference]
        self.kinds = ["log_E", "log_A", "alpha", "log_B", "beta"]
        self.labels = ["E", "A", "alpha", "B", "beta"]
        self.q_at = {p: self._add("log_q", f"utility[{p}]") for p in self.others}
        self.d_at = {p: self._add("delta", f"floor[{p}]") for p in self.others} if floor else {}
        self.t_at = {p: self._add("log_tau", f"half_life[{p}]") for p in identified}

    def _add(self, kind: str, label: str) -> int:
        self.kinds.append(kind)
        self.labels.append(label)
        return len(self.kinds) - 1

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return np.array([_BOUNDS[k][0] for k in self.kinds]), np.array([_BOUNDS[k][1] for k in self.kinds])

    def unpack(self, th: np.ndarray, prior_tau: float) -> tuple[np.ndarray, dict]:
        shared = np.array([math.exp(th[0]), math.exp(th[1]), th[2], math.exp(th[3]), th[4]])
        q = {p: 1.0 if p == self.reference else math.exp(th[self.q_at[p]]) for p in self.names}
        d = {p: th[self.d_at[p]] if p in self.d_at else 0.0 for p in self.names}
        taus = {p: math.exp(th[i]) for p, i in self.t_at.items()}
        borrowed = math.exp(np.mean(np.log(list(taus.values())))) if taus else prior_tau
        t = {p: taus.get(p, borrowed) for p in self.names}
        return shared, {"q": q, "delta": d, "tau": t}


def _loss(shared, per, N, D, W, U) -> np.ndarray:
    """Law at every run: N, D (n,), W (n, P) weights, U (P,) pool sizes, per-pool dicts in pool order."""
    E, A, al, B, be = shared
    q = np.array(list(per["q"].values()))
    d = np.array(list(per["delta"].values()))
    t = np.array(list(per["tau"].values()))
    eff = (q * U * half_life_worth(W * D[:, None] / U, t) * (W > 0)).sum(axis=1)  # (n,) D'
    return E + W @ d + A / N**al + B / eff**be


def fit_data_pools(
    N: Sequence[float] | np.ndarray,
    D: Sequence[float] | np.ndarray,
    mixes: Sequence[str | Mapping[str, float]],
    L: Sequence[float] | np.ndarray,
    *,
    pools: Mapping[str, float],
    reference: str | None = None,
    floor: bool = False,
    min_repeat_epochs: float = 1.5,
    half_life_prior: float = 2.0,
    delta: float = 1e-3,
    n_starts: int = 6,
    n_bootstrap: int = 0,
    confidence: float = 0.9,
    seed: int = 0,
) -> DataPoolsFit:
    """Fit the pool law of the module docstring to runs ``(N_i, D_i, mixes[i], L_i)``.

    ``pools`` maps each pool's name to its unique tokens ``U_p``; ``mixes[i]`` is run i's mixture (a mapping
    or ``"clean:0.5+noisy:0.5"``; weights normalised). ``reference`` (default: the first pool of ``pools``)
    has utility 1 and floor 0: the others' utilities are in its tokens. ``floor=True`` fits a floor per
    non-reference pool (needs each pool over a wide range of D; see the module docstring); the default fixes
    every floor at 0 (a pool then differs only in utility and half-life). ``delta``: the Huber threshold on log L.
    """
    N = as_1d("N", N, positive=True)
    D = as_1d("D", D, positive=True)
    L = as_1d("L", L, positive=True)
    n = same_length(N=N, D=D, L=L, mixes=np.empty(len(mixes)))
    sizes, ws, used, reference = _pool_inputs(pools, mixes, reference)
    check_range("delta", delta, 0.0, math.inf, lo_open=True)
    check_range("confidence", confidence, 0.0, 1.0, lo_open=True, hi_open=True)
    check_range("half_life_prior", half_life_prior, 0.0, math.inf, lo_open=True, hi_open=True)
    U = np.array([sizes[p] for p in used])
    W = np.array([[w.get(p, 0.0) for p in used] for w in ws])  # (n, P)
    epochs = W * D[:, None] / U
    max_ep = dict(zip(used, epochs.max(axis=0).tolist()))
    identified = [p for p in used if max_ep[p] > min_repeat_epochs]
    lay = _Layout(used, reference, identified, floor)
    if n < len(lay.kinds):
        raise ValueError(
            f"{n} runs for {len(lay.kinds)} parameters ({', '.join(lay.labels)}); give more runs"
        )
    pb = _Problem(lay, N, D, W, U, np.log(L), max_ep, half_life_prior, delta, n, confidence)
    best = pb.best(_starts(lay, N, D, W, U, L, half_life_prior, n_starts))
    theta = best.x
    fit = pb.make(theta, float(best.cost))
    if n_bootstrap <= 0:
        return _replace(fit, log_residuals=pb.resid(theta))
    ci, draws = pb.bootstrap(theta, n_bootstrap, seed)
    return _replace(fit, ci=ci, draws=draws, log_residuals=pb.resid(theta))


def _pool_inputs(
    pools: Mapping[str, float], mixes: Sequence[str | Mapping[str, float]], reference: str | None
) -> tuple[dict[str, float], list[dict[str, float]], list[str], str]:
    """(unique tokens per pool, each run's mix as weights, the pools some run uses, the reference pool),
    after checking that every size is positive, every mix names known pools and the reference is used."""
    if not pools:
        raise ValueError("pools is empty; give {name: unique tokens} for every pool the mixes name")
    sizes = {str(k): float(v) for k, v in pools.items()}
    bad = {k: v for k, v in sizes.items() if not (math.isfinite(v) and v > 0)}
    if bad:
        raise ValueError(f"pools={bad}: every pool's unique tokens must be finite and > 0")
    ws = [as_mix(m, where=f"mixes[{i}]") for i, m in enumerate(mixes)]
    for i, w in enumerate(ws):
        unknown = [p for p in w if p not in sizes]
        if unknown:
            raise ValueError(f"mixes[{i}]={mixes[i]!r}: pool(s) {unknown} not in pools {list(sizes)}")
    used = [p for p in sizes if any(p in w for w in ws)]
    reference = reference if reference is not None else next(iter(sizes))
    if reference not in used:
        raise ValueError(f"reference={reference!r} must be a pool some run trains on; pools used: {used}")
    return sizes, ws, used, reference


@dataclass
class _Problem:
    """One pool-law fit: the parameter layout, the runs (N, D, W (n, P), U (P,), log L) and the settings
    every solve shares (half-life prior, Huber threshold, confidence)."""

    lay: _Layout
    N: np.ndarray
    D: np.ndarray
    W: np.ndarray
    U: np.ndarray
    log_loss: np.ndarray  # log L per run
    max_ep: dict[str, float]
    prior: float
    delta: float
    n: int
    confidence: float

    def resid(self, th: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray:
        """log L_law - log L per run (of the runs ``idx`` only, when given)."""
        shared, per = self.lay.unpack(th, self.prior)
        pred = _loss(shared, per, self.N, self.D, self.W, self.U)
        r = np.log(np.maximum(pred, 1e-300)) - self.log_loss
        return r if idx is None else r[idx]

    def make(self, th: np.ndarray, cost: float) -> DataPoolsFit:
        """The DataPoolsFit of parameter vector ``th`` (its objective ``cost``)."""
        return _make(self.lay, th, self.U, self.max_ep, self.prior, cost, self.n, self.confidence)

    def best(self, starts: list[np.ndarray]):
        """The least_squares result of the lowest cost over ``starts`` (each clipped into the bounds)."""
        lo, hi = self.lay.bounds()
        best = None
        for th0 in starts:
            res = least_squares(
                self.resid,
                np.clip(th0, lo + 1e-9, hi - 1e-9),
                bounds=(lo, hi),
                loss="huber",
                f_scale=self.delta,
            )
            if best is None or res.cost < best.cost:
                best = res
        return best

    def bootstrap(
        self, theta: np.ndarray, n_bootstrap: int, seed: int
    ) -> tuple[dict[str, tuple[float, float]], tuple[DataPoolsFit, ...]]:
        """(the ``confidence`` interval of every parameter, the draws): refits from ``theta`` on runs
        resampled with replacement."""
        lo, hi = self.lay.bounds()
        n = self.n
        rng = np.random.default_rng(seed)
        draws, thetas = [], []
        for _ in range(n_bootstrap):
            idx = rng.integers(0, n, size=n)
            r = least_squares(
                self.resid, theta, bounds=(lo, hi), loss="huber", f_scale=self.delta, args=(idx,)
            )
            thetas.append(r.x)
            draws.append(self.make(r.x, float(r.cost)))
        nat = np.array([_natural(self.lay, t, self.prior) for t in thetas])  # (B, k)
        q = (1.0 - self.confidence) / 2.0
        qs = np.quantile(nat, [q, 1.0 - q], axis=0)
        ci = {lab: (float(qs[0, k]), float(qs[1, k])) for k, lab in enumerate(self.lay.labels)}
        return ci, tuple(draws)


def _natural(lay: _Layout, th: np.ndarray, prior: float) -> np.ndarray:
    shared, per = lay.unpack(th, prior)
    out = list(shared)
    out += [per["q"][p] for p in lay.q_at] + [per["delta"][p] for p in lay.d_at]
    out += [per["tau"][p] for p in lay.t_at]
    return np.array(out)


def _make(lay, th, U, max_ep, prior, cost, n, confidence) -> DataPoolsFit:
    shared, per = lay.unpack(th, prior)
    pools = {
        p: PoolParams(
            float(U[k]), per["q"][p], per["tau"][p], float(per["delta"][p]), float(max_ep[p]), p in lay.t_at
        )
        for k, p in enumerate(lay.names)
    }
    E, A, al, B, be = (float(x) for x in shared)
    return DataPoolsFit(E, A, al, B, be, lay.reference, pools, cost, n, confidence)


def _replace(fit: DataPoolsFit, **kw) -> DataPoolsFit:
    return dataclasses.replace(fit, **kw)


def _starts(lay: _Layout, N, D, W, U, L, prior: float, n_starts: int) -> list[np.ndarray]:
    """Grid over (alpha, beta, tau, q, delta = 0): E, A, B by non-negative least squares on L; the
    ``n_starts`` lowest residuals."""
    scored = []
    grid = itertools.product((0.15, 0.35, 0.7), (0.15, 0.35, 0.7), (0.5, 2.0, 10.0), (0.1, 0.5, 1.0))
    for al, be, tau, q in grid:
        per = {
            "q": {p: 1.0 if p == lay.reference else q for p in lay.names},
            "delta": dict.fromkeys(lay.names, 0.0),
            "tau": dict.fromkeys(lay.names, tau),
        }
        eff = (
            np.array(list(per["q"].values())) * U * half_life_worth(W * D[:, None] / U, tau) * (W > 0)
        ).sum(1)
        X = np.column_stack([np.ones_like(N), N**-al, eff**-be])
        coef, rnorm = nnls(X / L[:, None], np.ones_like(L))  # relative residuals
        E, A, B = np.maximum(coef, 1e-6)
        th = np.zeros(len(lay.kinds))
        th[:5] = [math.log(E), math.log(A), al, math.log(B), be]
        th[list(lay.q_at.values())] = math.log(q)
        th[list(lay.t_at.values())] = math.log(tau)
        scored.append((rnorm, th))
    scored.sort(key=lambda x: x[0])
    return [th for _, th in scored[:n_starts]]
