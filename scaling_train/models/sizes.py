"""The size family: from a named size or a target non-embedding parameter count to a shape.

One aspect-ratio rule covers 0.1M to 3B non-embedding parameters:

    per-layer parameters  P(d) = 4*d**2 (q, k, v, o) + 3*d*d_ff (SwiGLU) + 2*d (two RMSNorms)
    d_ff(d)               = 8/3 * d rounded up to a multiple of 32 (SwiGLU keeps ~8*d**2 MLP params)
    d_model               = (N * r / 12) ** (1/3) rounded down or up to a multiple of head_dim,
                            whichever lands closer to N with n_layers below; aspect ratio r = d_model / n_layers = 64 (Kaplan et al. 2020 find the
                            loss flat for r in 20..200)
    n_layers              = round(N / P(d_model)), at least 2
    head_dim              = 16 below d_model=64, 32 below 512, 64 from 512, 128 from 2048;  n_heads = d_model / head_dim

Below ~0.1M (where aspect ratio 64 would ask for fewer than 2 layers) the widths 32 and 48 that give 2 or
more layers are candidates too, so 2e4..1e5 targets get their own shapes (0.027M = d_model 32 x 2 layers,
0.055M = 48 x 2, 0.083M = 48 x 3) instead of all rounding up to 0.107M = 64 x 2. Such narrow models are
far outside the aspect-ratio band; they exist for CPU-sized IsoFLOP studies (configs/sweeps/quickstart.yaml).

Since P(d) ~ 12*d**2, N ~ 12 * n_layers * d_model**2, the Kaplan approximation. The exact count of
the resulting shape is what the model reports (``param_counts``), not the target.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

ASPECT_RATIO = 64
"""d_model / n_layers of the family (see module docstring)."""

LADDER = ("0.2M", "0.5M", "1M", "2M", "5M", "10M", "20M", "50M", "100M", "200M", "400M", "1B", "3B")
"""Named sizes; ``configs/models/<name>.yaml`` exists for each."""

_SUFFIX = {"": 1.0, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}
MIN_PARAMS, MAX_PARAMS = 2e4, 2e10


@dataclass(frozen=True)
class Shape:
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


def parse_size(size: str | int | float, *, where: str = "model.size") -> float:
    """``"3.2M"`` -> 3.2e6; also accepts plain numbers and ``"3.2e6"``."""
    if isinstance(size, (int, float)) and not isinstance(size, bool):
        n = float(size)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMbBgGtT]?)\s*", str(size))
        if not m:
            raise ValueError(
                f"{where}={size!r} is not a size; use a number or a named size like '1M', '2.5M', '1B' "
                f"(ladder: {', '.join(LADDER)})"
            )
        n = float(m.group(1)) * _SUFFIX[m.group(2).upper()]
    if not (MIN_PARAMS <= n <= MAX_PARAMS):
        raise ValueError(
            f"{where}={size!r} = {n:.3g} non-embedding parameters is outside [{MIN_PARAMS:.0e}, {MAX_PARAMS:.0e}]"
        )
    return n


def swiglu_ff(d_model: int) -> int:
    return 32 * math.ceil(8 * d_model / 3 / 32)


def layer_params(d_model: int, d_ff: int) -> int:
    """Exact parameters of one block: attention 4*d^2, SwiGLU 3*d*d_ff, two RMSNorm gains 2*d."""
    return 4 * d_model * d_model + 3 * d_model * d_ff + 2 * d_model


def head_dim_for(d_model: int) -> int:
    return 16 if d_model < 64 else (32 if d_model < 512 else (64 if d_model < 2048 else 128))


def shape_for(n_params: float) -> Shape:
    """The family's shape for a target non-embedding parameter count (module docstring rule)."""
    d = (n_params * ASPECT_RATIO / 12) ** (1 / 3)
    mult = head_dim_for(round(d))
    best = None
    candidates = {max(64, mult * math.floor(d / mult)), max(64, mult * math.ceil(d / mult))}
    if n_params < 2 * layer_params(64, swiglu_ff(64)):  # below 2 layers of width 64: narrower 2+-layer shapes
        candidates |= {32, 48}
    for d_model in sorted(candidates):
        d_ff = swiglu_ff(d_model)
        n_layers = max(2, round(n_params / layer_params(d_model, d_ff)))
        err = abs(math.log(n_layers * layer_params(d_model, d_ff) / n_params))
        if (
            best is None
            or err < best[0] - 1e-12
            or (abs(err - best[0]) <= 1e-12 and d_model < best[1].d_model)
        ):
            best = (err, Shape(d_model, n_layers, d_model // head_dim_for(d_model), d_ff))
    return best[1]


def non_embedding_params(shape: Shape) -> int:
    """Kaplan N: every parameter but the token embedding and the LM head (blocks + final norm)."""
    return shape.n_layers * layer_params(shape.d_model, shape.d_ff) + shape.d_model


def total_params(shape: Shape, vocab_size: int, *, tie_embeddings: bool) -> int:
    emb = vocab_size * shape.d_model
    return non_embedding_params(shape) + emb + (0 if tie_embeddings else emb)


def flops_per_token(shape: Shape, seq_len: int, *, vocab_size: int | None = None) -> float:
    """Training FLOPs per token: 6*N + 6*n_layers*seq_len*d_model (attention scores and values,
    Kaplan's C_forward = 2N + 2 n_layer n_ctx d_attn, tripled for backward). With ``vocab_size``
    the LM-head matmul 6*d_model*V is added (it is real compute that the Kaplan count leaves out)."""
    f = 6.0 * non_embedding_params(shape) + 6.0 * shape.n_layers * seq_len * shape.d_model
    if vocab_size is not None:
        f += 6.0 * shape.d_model * vocab_size
    return f
