"""Pieces shared by every implementation of the fused linear cross-entropy.

Each backend (`lce_torch`, `lce_cpp`, `lce_triton`) implements one function with the signature of
`LCEKernelFn`: it runs over the tokens in chunks and returns an `LCEKernelOut`. The per-token loss it
returns is unreduced; the gradients it returns are those of ``sum_i token_scale[i] * loss_i``
(``token_scale`` = 1 when not given), so the autograd layer only has to scale them by
``grad_output / n_valid`` ("mean"), ``grad_output`` ("sum"), or recompute them with
``token_scale = grad_output`` ("none").

Gradient of one token's loss with respect to its (softcapped) logits z, with p = softmax(z), t the
target, eps = label_smoothing and V the vocabulary size:

    dloss/dz_j = p_j * (1 + 2 * z_loss * lse) - (1 - eps) * [j == t] - eps / V

and with a softcap s (z = s * tanh(y / s)), dloss/dy_j = dloss/dz_j * (1 - (z_j / s) ** 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

# Default budget for one chunk of fp32 logits (chunk, V): the extra memory of every implementation is a
# small multiple of this (2 buffers for torch, 1 for cpp/triton), whatever N is.
DEFAULT_CHUNK_BYTES_CPU = 64 * 2**20  # = 64 MiB -> 512 tokens at V = 32,768
DEFAULT_CHUNK_BYTES_CUDA = 1024 * 2**20  # = 1 GiB -> 2,048 tokens at V = 128,256


@dataclass(frozen=True)
class LCEOptions:
    """Loss options, validated by `linear_cross_entropy` before any kernel sees them."""

    ignore_index: int = -100
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    softcap: float | None = None
    compute_stats: bool = True
    """When False, `correct` and `entropy` are not computed (argmax and sum p*z skipped)."""
    chunk_size: int | None = None
    """Tokens per chunk; None picks one from the chunk byte budget and the vocabulary size."""


@dataclass
class LCEKernelOut:
    """What a backend returns. Per-token tensors are (N,); zero (or False) at ignored tokens."""

    loss: Tensor  # (N,) fp32 per-token loss (smoothing and z-loss included), unreduced
    nll: Tensor  # (N,) fp32 plain negative log-likelihood
    lse: Tensor  # (N,) fp32 log-sum-exp of the softcapped logits
    correct: Tensor | None  # (N,) bool argmax == target (None when compute_stats=False)
    entropy: Tensor | None  # (N,) fp32 -sum p log p (None when compute_stats=False)
    d_hidden: Tensor | None  # (N, H) hidden.dtype, grad of sum_i scale_i * loss_i
    d_weight: Tensor | None  # (V, H) fp32
    d_bias: Tensor | None  # (V,) fp32


class LCEKernelFn(Protocol):
    def __call__(
        self,
        hidden: Tensor,  # (N, H)
        weight: Tensor,  # (V, H)
        bias: Tensor | None,  # (V,)
        targets: Tensor,  # (N,) int64
        token_scale: Tensor | None,  # (N,) fp32 per-token grad weights, None = 1
        opts: LCEOptions,
        *,
        need_d_hidden: bool,
        need_d_weight: bool,
        need_d_bias: bool,
    ) -> LCEKernelOut: ...


def resolve_chunk_size(opts: LCEOptions, n_tokens: int, vocab: int, device: torch.device) -> int:
    """Tokens per chunk: the user's `chunk_size`, or as many as fit the fp32 logits budget."""
    if opts.chunk_size is not None:
        return max(1, min(opts.chunk_size, max(n_tokens, 1)))
    budget = DEFAULT_CHUNK_BYTES_CUDA if device.type == "cuda" else DEFAULT_CHUNK_BYTES_CPU
    chunk = budget // (4 * max(vocab, 1))  # fp32 logits row = 4 * V bytes
    chunk = max(16, (chunk // 16) * 16)  # a multiple of 16 keeps GEMM tiles full
    return max(1, min(chunk, max(n_tokens, 1)))


def empty_grads(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, need_dh: bool, need_dw: bool, need_db: bool
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Zero-initialised gradient buffers: d_hidden in hidden.dtype, d_weight/d_bias in fp32."""
    d_hidden = torch.zeros_like(hidden) if need_dh else None
    d_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_dw else None
    d_bias = (
        torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device)
        if need_db and bias is not None
        else None
    )
    return d_hidden, d_weight, d_bias
