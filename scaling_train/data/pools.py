"""Named data pools of deliberately different quality, and mixtures of them (issue 18, Goyal et al. 2024).

A run config declares pools and a mixture:

    data:
      pools:
        - {name: clean, tokens: 1.0e+5, noise: 0.0}
        - {name: noisy, tokens: 4.0e+5, noise: 0.3}
      mix: {clean: 0.5, noisy: 0.5}        # or the string "clean:0.5+noisy:0.5"; "clean" = all clean

* **Slices.** Pool k is a contiguous slice of the training split of ``data.corpus``, in whole sequences:
  ``tokens // seq_len`` sequences starting right after pool k-1's (declaration order, whatever the mix), so
  pools are disjoint and a pool holds the same text in every run that declares the same pools. The
  tokenizer and the validation split stay those of the whole corpus: every run is scored on the same text.
* **Noise (the quality knob).** Each training sequence of a pool with ``noise = r`` has its ``T + 1`` tokens
  (inputs and the shifted targets) corrupted independently with probability ``r`` each: a corrupted token is
  replaced by a token drawn uniformly from the pool's own slice (its unigram distribution is kept: "shuffled
  tokens"). The draw is a pure function of the sequence's index in the split (``noise_rows``), not of the run
  seed or the epoch: the pool is a fixed, lower-quality dataset, and a repeated epoch sees the same noise.
* **Mixing.** Weights are normalised to sum 1. Every optimizer step of B sequences takes ``n_p`` sequences
  from pool p, ``n_p`` the largest-remainder rounding of ``w_p B`` (``pool_counts``); the realised weight
  ``n_p / B`` is what is recorded. Pool p walks its own endless stream of per-epoch permutations (the
  ``batch_indices`` rule with a per-pool seed), so each pool repeats on its own: after s steps pool p has
  been seen ``s n_p T / U_p`` times, ``U_p = (tokens_p // T) T``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from scaling_train.config import doc

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
NOISE_KEY = 0x6E6F6973  # "nois": the noise generator's first key word (then the sequence index)


@dataclass
class PoolConfig:
    """One named pool: a slice of the training split with a known corruption rate."""

    name: str = doc("Pool name (letters, digits, '_' or '-', starting with a letter), used by data.mix.", "")
    tokens: int = doc("Unique tokens of the pool, rounded down to whole sequences of model.seq_len.", 0)
    noise: float = doc(
        "Fraction of each training sequence's tokens replaced by tokens drawn from elsewhere in the pool "
        "(deterministic per sequence), in [0, 1): 0 = clean text.",
        0.0,
    )

    def __post_init__(self) -> None:
        if not NAME_RE.match(self.name or ""):
            raise ValueError(
                f"name={self.name!r} must start with a letter and hold only letters, digits, '_' or '-'"
            )
        if self.tokens <= 0:
            raise ValueError(f"pool {self.name!r}: tokens={self.tokens} must be > 0")
        if not (0.0 <= self.noise < 1.0):
            raise ValueError(f"pool {self.name!r}: noise={self.noise} must be in [0, 1)")


def parse_mix(text: str, *, key: str = "data.mix") -> dict[str, float]:
    """``"clean"`` -> {clean: 1}; ``"clean:0.5+noisy:0.5"`` -> {clean: 0.5, noisy: 0.5} (not normalised)."""
    out: dict[str, float] = {}
    parts = [p.strip() for p in str(text).split("+")]
    for part in parts:
        name, sep, w = part.partition(":")
        name = name.strip()
        if not NAME_RE.match(name):
            raise ValueError(
                f"{key}={text!r}: {part!r} is not NAME or NAME:WEIGHT (e.g. 'clean' or 'clean:0.5+noisy:0.5')"
            )
        try:
            weight = float(w) if sep else 1.0
        except ValueError:
            raise ValueError(f"{key}={text!r}: weight {w!r} of pool {name!r} is not a number") from None
        if name in out:
            raise ValueError(f"{key}={text!r}: pool {name!r} appears twice")
        out[name] = weight
    return out


def format_mix(mix: dict[str, float]) -> str:
    """The inverse of ``parse_mix`` (weights with 4 significant digits): {clean: 1} -> ``"clean"``."""
    if len(mix) == 1:
        return next(iter(mix))
    return "+".join(f"{k}:{v:.4g}" for k, v in mix.items())


def normalise_mix(mix: dict | str, pools: list[PoolConfig], *, key: str = "data.mix") -> dict[str, float]:
    """Validate a mixture against the declared pools; weights > 0, normalised to sum 1, in pool order."""
    raw = parse_mix(mix, key=key) if isinstance(mix, str) else dict(mix)
    names = [p.name for p in pools]
    if not raw:
        raise ValueError(f"{key}={mix!r} is empty; name at least one pool of data.pools {names}")
    for name, w in raw.items():
        if name not in names:
            raise ValueError(f"{key}={mix!r}: pool {name!r} is not declared in data.pools {names}")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0:
            raise ValueError(f"{key}={mix!r}: weight {w!r} of pool {name!r} must be a finite number > 0")
    total = float(sum(raw.values()))
    return {n: float(raw[n]) / total for n in names if n in raw}


def pool_counts(weights: list[float], batch_size: int, *, names: list[str] | None = None) -> list[int]:
    """Sequences per step of each pool: largest-remainder rounding of ``w_p * batch_size`` (sums to B).

    Raises when a pool of positive weight gets 0 sequences (raise train.batch_size or the weight)."""
    w = np.asarray(weights, dtype=np.float64)
    ideal = w / w.sum() * batch_size
    n = np.floor(ideal).astype(np.int64)
    rest = batch_size - int(n.sum())
    order = np.argsort(-(ideal - n), kind="stable")  # ties: declaration order
    n[order[:rest]] += 1
    names = names or [f"#{i}" for i in range(len(w))]
    zero = [names[i] for i in range(len(w)) if n[i] == 0]
    if zero:
        raise ValueError(
            f"data.mix gives pool(s) {zero} 0 of train.batch_size={batch_size} sequences per step "
            f"(weights {dict(zip(names, np.round(w / w.sum(), 4).tolist()))}); raise train.batch_size to "
            f">= {math.ceil(1.0 / float(w.min() / w.sum()))} or raise their weight"
        )
    return n.tolist()


def noise_rows(rows: np.ndarray, seq_ids: np.ndarray, rate: float, source: np.ndarray) -> np.ndarray:
    """Corrupt ``rows`` (B, T+1) in place: each token with probability ``rate`` is replaced by
    ``source[j]``, j uniform over ``source`` (the pool's tokens). Row r's draws come from
    ``PCG64([NOISE_KEY, seq_ids[r]])``: a pure function of the sequence index."""
    if rate <= 0.0:
        return rows
    width = rows.shape[1]
    for r, i in enumerate(seq_ids):
        g = np.random.Generator(np.random.PCG64([NOISE_KEY, int(i)]))
        hit = g.random(width) < rate  # (T+1,) bool
        pick = g.integers(0, len(source), size=width)  # drawn for every position: fixed stream per row
        rows[r, hit] = np.asarray(source[pick[hit]], dtype=rows.dtype)
    return rows
