"""impl="cpp": Python side of the C++ CPU kernels in csrc/ (torch.ops.scaling_train.lce_fwd).

Fake (meta) implementations are registered here so torch.compile can trace models that call them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import LCEKernelOut, LCEOptions, resolve_chunk_size

_fakes_registered = False


def register_fakes() -> None:
    """Register the fake kernels once the C++ library has defined the ops (called by the loader)."""
    global _fakes_registered
    if _fakes_registered:
        return

    @torch.library.register_fake("scaling_train::lce_fwd")
    def _lce_fwd_fake(
        hidden,
        weight,
        bias,
        targets,
        token_scale,
        ignore_index,
        label_smoothing,
        z_loss,
        softcap,
        compute_stats,
        chunk_size,
        need_d_hidden,
        need_d_weight,
        need_d_bias,
    ):
        n, v = hidden.shape[0], weight.shape[0]
        f32 = dict(dtype=torch.float32, device=hidden.device)
        per_token = [hidden.new_empty(n, **f32) for _ in range(3)]  # loss, nll, lse
        n_stats = n if compute_stats else 0
        correct = hidden.new_empty(n_stats, dtype=torch.bool)
        entropy = hidden.new_empty(n_stats, **f32)
        d_hidden = hidden.new_empty(hidden.shape) if need_d_hidden else hidden.new_empty(0)
        d_weight = hidden.new_empty(weight.shape, **f32) if need_d_weight else hidden.new_empty(0, **f32)
        has_db = need_d_bias and bias is not None
        d_bias = hidden.new_empty(v, **f32) if has_db else hidden.new_empty(0, **f32)
        return (*per_token, correct, entropy, d_hidden, d_weight, d_bias)

    @torch.library.register_fake("scaling_train::segment_sum")
    def _segment_sum_fake(values, segment_ids, num_segments):
        return values.new_empty(num_segments, values.shape[1])

    _fakes_registered = True


def lce_forward_cpp(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    token_scale: Tensor | None,
    opts: LCEOptions,
    *,
    need_d_hidden: bool,
    need_d_weight: bool,
    need_d_bias: bool,
) -> LCEKernelOut:
    chunk = resolve_chunk_size(opts, hidden.shape[0], weight.shape[0], hidden.device)
    loss, nll, lse, correct, entropy, d_h, d_w, d_b = torch.ops.scaling_train.lce_fwd(
        hidden,
        weight,
        bias,
        targets,
        token_scale,
        opts.ignore_index,
        opts.label_smoothing,
        opts.z_loss,
        opts.softcap if opts.softcap is not None else 0.0,
        opts.compute_stats,
        chunk,
        need_d_hidden,
        need_d_weight,
        need_d_bias and bias is not None,
    )
    return LCEKernelOut(
        loss,
        nll,
        lse,
        correct if opts.compute_stats else None,
        entropy if opts.compute_stats else None,
        d_h if need_d_hidden else None,
        d_w if need_d_weight else None,
        d_b if (need_d_bias and bias is not None) else None,
    )


def segment_sum_cpp(values: Tensor, segment_ids: Tensor, num_segments: int) -> Tensor:
    """(N, K) values, (N,) ids in [-1, S) -> (S, K) per-segment sums (fp64 accumulation)."""
    return torch.ops.scaling_train.segment_sum(values, segment_ids, num_segments)
