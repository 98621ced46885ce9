"""Sample-level laws: per-sample log-likelihoods -> p(correct) -> accuracy, and the PassUntil task law."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp

from ._validate import as_1d, same_length


@dataclass(frozen=True)
class SampleScores:
    """Per-sample probability of the correct answer and the task accuracies derived from it.

    ``p_correct[i]``: exact match, p = exp(loglik of the answer); multiple choice,
    p = softmax over the choices' log-likelihoods at the correct choice. ``expected_accuracy`` = mean p
    (accuracy of sampling), ``greedy_accuracy`` = fraction where the correct choice has the highest
    likelihood (multiple choice) or p > 0.5 (exact match: greedy decoding then returns it)."""

    p_correct: np.ndarray
    expected_accuracy: float
    greedy_accuracy: float


def sample_scores(loglik: np.ndarray, correct: np.ndarray | None = None) -> SampleScores:
    """``loglik``: (S,) log-likelihood of each sample's answer (e.g. ``-LCEOutput.segment_nll``), or
    (S, K) log-likelihoods of K choices with ``correct`` (S,) the index of the right one."""
    ll = np.asarray(loglik, dtype=np.float64)
    if ll.size == 0:
        raise ValueError("loglik is empty; at least one sample is needed")
    if np.any(~np.isfinite(ll)) or np.any(ll > 0):
        i = int(np.flatnonzero(~(np.isfinite(ll.ravel()) & (ll.ravel() <= 0)))[0])
        raise ValueError(f"loglik.flat[{i}]={ll.ravel()[i]} must be finite and <= 0")
    if ll.ndim == 1:
        if correct is not None:
            raise ValueError("correct must be None for 1-D loglik (exact-match answers)")
        p = np.exp(ll)
        return SampleScores(p, float(p.mean()), float(np.mean(p > 0.5)))
    if ll.ndim != 2 or correct is None:
        raise ValueError(
            f"loglik of shape {ll.shape} needs ndim 1, or ndim 2 with correct (S,) choice indices"
        )
    c = np.asarray(correct)
    if c.shape != (ll.shape[0],) or np.any((c < 0) | (c >= ll.shape[1])):
        raise ValueError(f"correct must have shape ({ll.shape[0]},) with entries in [0, {ll.shape[1] - 1}]")
    rows = np.arange(ll.shape[0])
    p = np.exp(ll[rows, c] - logsumexp(ll, axis=1))
    return SampleScores(p, float(p.mean()), float(np.mean(np.argmax(ll, axis=1) == c)))


@dataclass(frozen=True)
class PassUntilFit:
    """PassUntil task law (Hu et al. 2024): ``log(-log P(N)) = c - alpha log N``, i.e.
    ``P(N) = exp(-exp(c) N**(-alpha))`` — the pass rate rises to 1 as N grows."""

    c: float
    alpha: float
    rmse: float

    def predict(self, N: np.ndarray | float) -> np.ndarray:
        return np.exp(-np.exp(self.c) * np.asarray(N, dtype=np.float64) ** (-self.alpha))


def fit_pass_until(
    N: np.ndarray,
    *,
    pass_rates: np.ndarray | None = None,
    passes: np.ndarray | None = None,
    attempts: np.ndarray | None = None,
) -> PassUntilFit:
    """Fit ``log(-log P) = c - alpha log N`` by weighted least squares.

    Give either ``pass_rates`` in (0, 1) or counts ``passes`` out of ``attempts`` (PassUntil's large-
    sampling estimate); counts use P = (passes + 0.5) / (attempts + 1) so zero passes stay finite, and
    weights from the delta-method variance of log(-log P) under a binomial."""
    N = as_1d("N", N, positive=True)
    if (pass_rates is None) == (passes is None):
        raise ValueError("give exactly one of pass_rates or (passes, attempts)")
    if pass_rates is not None:
        p = as_1d("pass_rates", pass_rates)
        bad = np.flatnonzero((p <= 0) | (p >= 1))
        if bad.size:
            raise ValueError(f"pass_rates[{bad[0]}]={p[bad[0]]} must be in (0, 1)")
        w = np.ones(len(p))
    else:
        if attempts is None:
            raise ValueError("attempts is required with passes")
        k = as_1d("passes", passes)
        n = as_1d("attempts", attempts, positive=True)
        same_length(passes=k, attempts=n)
        bad = np.flatnonzero((k < 0) | (k > n))
        if bad.size:
            raise ValueError(f"passes[{bad[0]}]={k[bad[0]]} must be in [0, attempts={n[bad[0]]}]")
        p = (k + 0.5) / (n + 1.0)
        var = p * (1 - p) / (n + 1.0) / (p * np.log(p)) ** 2  # Var[log(-log p)] by the delta method
        w = 1.0 / var
    same_length(N=N, pass_rates=p)
    if len(np.unique(N)) < 2:
        raise ValueError(f"need >= 2 distinct N, got {len(np.unique(N))}")
    x, y = np.log(N), np.log(-np.log(p))
    slope, c = np.polyfit(x, y, 1, w=np.sqrt(w))
    resid = y - (c + slope * x)
    return PassUntilFit(c=float(c), alpha=float(-slope), rmse=float(np.sqrt(np.average(resid**2, weights=w))))


def fit_pass_until_from_loglik(N: np.ndarray, logliks: list[np.ndarray]) -> PassUntilFit:
    """The chain per-sample log-likelihoods -> p(correct) -> task pass rate -> law: for model ``N[j]``,
    ``logliks[j]`` holds each sample's answer log-likelihood; its expected accuracy (mean p) is the pass
    rate fitted by ``fit_pass_until``."""
    N = as_1d("N", N, positive=True)
    if len(logliks) != len(N):
        raise ValueError(f"len(logliks)={len(logliks)} != len(N)={len(N)}")
    rates = np.array([sample_scores(ll).expected_accuracy for ll in logliks])
    rates = np.clip(rates, 1e-300, 1 - 1e-12)
    return fit_pass_until(N, pass_rates=rates)
