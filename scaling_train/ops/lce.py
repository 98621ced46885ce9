"""Fused LM head + cross-entropy + statistics: `linear_cross_entropy` and its autograd Function.

Layering (as in Liger-Kernel): backend kernels (`lce_torch`, `lce_cpp`, `lce_triton`) ->
`lce_forward` / `lce_backward` -> `LinearCrossEntropyFunction` -> `linear_cross_entropy()`.

The gradients are computed inside the forward pass, chunk by chunk, while the logits of the chunk
are still in memory (6 N H V matmul FLOPs per training step instead of 8); backward only scales
them by grad_output. reduction="none" is the exception: its grad_output is per token, so backward
recomputes the chunks with per-token weights (exact, 8 N H V FLOPs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ._common import LCEKernelFn, LCEKernelOut, LCEOptions

Reduction = Literal["mean", "sum", "none"]
Impl = Literal["auto", "triton", "cpp", "torch"]
_REDUCTIONS = ("mean", "sum", "none")
_IMPLS = ("auto", "triton", "cpp", "torch")


@dataclass
class LCEOutput:
    """Result of `linear_cross_entropy`. Per-token tensors are (N,) with N = B*T for (B, T) inputs and
    hold 0 (False) at ignored tokens; only `loss` is differentiable."""

    loss: Tensor
    """Scalar for reduction "mean" (over non-ignored tokens) / "sum"; (N,) for "none"."""
    token_nll: Tensor
    """(N,) fp32 plain NLL = lse - z[target] (no smoothing, no z-loss)."""
    token_correct: Tensor | None
    """(N,) bool argmax(z) == target; None when stats=False."""
    token_entropy: Tensor | None
    """(N,) fp32 -sum_j p_j log p_j; None when stats=False."""
    lse: Tensor
    """(N,) fp32 log-sum-exp of the (softcapped) logits."""
    segment_nll: Tensor | None = None
    """(S,) fp32 summed NLL per sample (sample log-likelihood = -segment_nll); None without segment_ids."""
    segment_tokens: Tensor | None = None
    """(S,) int64 counted (non-ignored) tokens per sample."""
    segment_correct: Tensor | None = None
    """(S,) int64 correctly predicted tokens per sample; None when stats=False."""
    num_tokens: Tensor | None = None
    """() int64 device tensor: number of non-ignored tokens (the "mean" denominator), never synced."""


# --------------------------------------------------------------------------------------------------
# backend selection


def _cpp_kernel() -> LCEKernelFn:
    from . import lce_cpp

    return lce_cpp.lce_forward_cpp


def _triton_kernel() -> LCEKernelFn:
    from . import lce_triton

    return lce_triton.lce_forward_triton


def _triton_usable(device: torch.device) -> bool:
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return False
        return True
    return device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_impl(impl: str, device: torch.device) -> str:
    """Map "auto" to a concrete backend and check that the requested one can run on `device`."""
    if impl not in _IMPLS:
        raise ValueError(f"impl={impl!r} is not one of {_IMPLS}")
    if impl == "auto":
        if device.type == "cuda" and _triton_usable(device):
            return "triton"
        if device.type == "cpu":
            from ._cpp_loader import cpp_available

            if cpp_available():
                return "cpp"
        return "torch"
    if impl == "cpp":
        if device.type != "cpu":
            raise ValueError(f"impl='cpp' runs on CPU tensors only, got device={device}; use impl='triton'")
        from ._cpp_loader import cpp_available, cpp_unavailable_reason

        if not cpp_available():
            raise RuntimeError(f"impl='cpp' is unavailable: {cpp_unavailable_reason()}")
    if impl == "triton" and not _triton_usable(device):
        raise ValueError(
            f"impl='triton' needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1 set before "
            f"triton is imported), got device={device}"
        )
    return impl


def _kernel_for(impl: str) -> LCEKernelFn:
    if impl == "torch":
        from .lce_torch import lce_forward_torch

        return lce_forward_torch
    if impl == "cpp":
        return _cpp_kernel()
    return _triton_kernel()


# --------------------------------------------------------------------------------------------------
# forward / backward


def lce_forward(
    hidden: Tensor,  # (N, H)
    weight: Tensor,  # (V, H)
    bias: Tensor | None,  # (V,)
    targets: Tensor,  # (N,) int64
    opts: LCEOptions,
    impl: str,
    *,
    need_grads: tuple[bool, bool, bool] = (False, False, False),
    token_scale: Tensor | None = None,
) -> LCEKernelOut:
    """Run the backend kernel; gradients (of sum_i token_scale_i * loss_i) only where requested.
    Autocast is off inside: the kernels choose their own precision (fp32 logits and statistics); the
    inputs were already cast to an enclosing autocast's dtype by `linear_cross_entropy`."""
    need_dh, need_dw, need_db = need_grads
    with torch.autocast(hidden.device.type, enabled=False):
        return _kernel_for(impl)(
            hidden,
            weight,
            bias,
            targets,
            token_scale,
            opts,
            need_d_hidden=need_dh,
            need_d_weight=need_dw,
            need_d_bias=need_db and bias is not None,
        )


def lce_backward(
    grads: tuple[Tensor | None, Tensor | None, Tensor | None],
    scale: Tensor,  # () fp32 grad_output / denominator
    dtypes: tuple[torch.dtype, torch.dtype, torch.dtype | None],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Scale the gradients computed in forward by `scale`, in place (they are consumed: a second
    backward through the same graph fails autograd's saved-tensor version check)."""
    out = []
    for g, dtype in zip(grads, dtypes):
        out.append(None if g is None else g.mul_(scale).to(dtype))
    return out[0], out[1], out[2]


class LinearCrossEntropyFunction(torch.autograd.Function):
    """loss (scalar or (N,)) + detached statistics; gradients precomputed in forward."""

    @staticmethod
    def forward(
        ctx,
        hidden: Tensor,  # (N, H)
        weight: Tensor,  # (V, H)
        bias: Tensor | None,  # (V,)
        targets: Tensor,  # (N,) int64
        ignore_index: int,
        label_smoothing: float,
        z_loss: float,
        softcap: float | None,
        compute_stats: bool,
        chunk_size: int | None,
        reduction: str,
        impl: str,
        grad_enabled: bool,
    ):
        opts = LCEOptions(ignore_index, label_smoothing, z_loss, softcap, compute_stats, chunk_size)
        # needs_input_grad follows requires_grad even under torch.no_grad (an eval with trainable
        # parameters): gradients computed here would then be thrown away (2.7x the forward's time on CPU)
        g = ctx.needs_input_grad
        need = (grad_enabled and g[0], grad_enabled and g[1], grad_enabled and g[2])
        ctx.impl, ctx.opts, ctx.reduction = impl, opts, reduction
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        if reduction == "none":
            # grad_output will be per token: keep the inputs, recompute with token weights in backward
            out = lce_forward(hidden, weight, bias, targets, opts, impl)
            ctx.save_for_backward(hidden, weight, bias, targets)
            loss = out.loss  # (N,)
        else:
            out = lce_forward(hidden, weight, bias, targets, opts, impl, need_grads=need)
            loss = out.loss.sum()
            if reduction == "mean":
                n_valid = (targets != ignore_index).sum()  # () int64 device tensor, no host sync
                denom = n_valid.clamp(min=1).to(torch.float32)  # all ignored: loss 0 / 1 = 0, grads 0
                loss = loss / denom
            else:
                denom = torch.ones((), dtype=torch.float32, device=hidden.device)
            ctx.save_for_backward(out.d_hidden, out.d_weight, out.d_bias, denom)
        empty = hidden.new_empty(0, dtype=torch.float32)
        correct = out.correct if out.correct is not None else empty.bool()
        entropy = out.entropy if out.entropy is not None else empty
        ctx.mark_non_differentiable(out.nll, out.lse, correct, entropy)
        return loss, out.nll, out.lse, correct, entropy

    @staticmethod
    def backward(ctx, grad_loss: Tensor, *_unused):
        if ctx.reduction == "none":
            hidden, weight, bias, targets = ctx.saved_tensors
            need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2])
            opts = LCEOptions(**{**ctx.opts.__dict__, "compute_stats": False})
            scale = grad_loss.to(torch.float32).contiguous()  # (N,) exact per-token weights
            out = lce_forward(
                hidden, weight, bias, targets, opts, ctx.impl, need_grads=need, token_scale=scale
            )
            grads = (out.d_hidden, out.d_weight, out.d_bias)
            one = torch.ones((), dtype=torch.float32, device=hidden.device)
            d_h, d_w, d_b = lce_backward(grads, one, ctx.dtypes)
        else:
            d_hidden, d_weight, d_bias, denom = ctx.saved_tensors
            scale = grad_loss.to(torch.float32) / denom  # () fp32
            d_h, d_w, d_b = lce_backward((d_hidden, d_weight, d_bias), scale, ctx.dtypes)
        return d_h, d_w, d_b, None, None, None, None, None, None, None, None, None, None


# --------------------------------------------------------------------------------------------------
# validation


def _check_inputs(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    bias: Tensor | None,
    segment_ids: Tensor | None,
    num_segments: int | None,
    *,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    reduction: str,
    chunk_size: int | None,
    validate: bool,
) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is not one of {_REDUCTIONS}")
    if hidden.dim() not in (2, 3):
        raise ValueError(f"hidden must be (N, H) or (B, T, H), got shape {tuple(hidden.shape)}")
    if not hidden.is_floating_point():
        raise ValueError(f"hidden must be a floating-point tensor, got dtype={hidden.dtype}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"weight must be (V, H) with H={hidden.shape[-1]} (hidden's last dim), got shape {tuple(weight.shape)}"
        )
    if weight.dtype != hidden.dtype:
        raise ValueError(f"weight.dtype={weight.dtype} must equal hidden.dtype={hidden.dtype}")
    if weight.device != hidden.device or targets.device != hidden.device:
        raise ValueError(
            f"hidden ({hidden.device}), weight ({weight.device}) and targets ({targets.device}) "
            "must be on one device"
        )
    if tuple(targets.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(
            f"targets shape {tuple(targets.shape)} must equal hidden's leading dims {tuple(hidden.shape[:-1])}"
        )
    if targets.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"targets must be int64 (or int32), got dtype={targets.dtype}")
    vocab = weight.shape[0]
    if bias is not None and (tuple(bias.shape) != (vocab,) or bias.device != weight.device):
        raise ValueError(
            f"bias must be ({vocab},) on {weight.device}, got {tuple(bias.shape)} on {bias.device}"
        )
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing={label_smoothing} must be in [0, 1)")
    if z_loss < 0.0:
        raise ValueError(f"z_loss={z_loss} must be >= 0")
    if softcap is not None and not softcap > 0.0:
        raise ValueError(f"softcap={softcap} must be > 0 (or None to disable)")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be >= 1 (or None for the default budget)")
    if (segment_ids is None) != (num_segments is None):
        raise ValueError(
            "segment_ids and num_segments go together (num_segments fixes the output shape without a "
            f"host sync); got segment_ids={'set' if segment_ids is not None else None}, num_segments={num_segments}"
        )
    if segment_ids is not None:
        assert num_segments is not None
        if tuple(segment_ids.shape) != tuple(targets.shape):
            raise ValueError(
                f"segment_ids shape {tuple(segment_ids.shape)} must equal targets shape {tuple(targets.shape)}"
            )
        if segment_ids.dtype not in (torch.int64, torch.int32) or segment_ids.device != hidden.device:
            raise ValueError(
                f"segment_ids must be an int64 tensor on {hidden.device}, got {segment_ids.dtype}"
            )
        if num_segments < 0:
            raise ValueError(f"num_segments={num_segments} must be >= 0")
    if not validate:
        return
    # Data-dependent checks: .item() is a host sync (free on CPU; opt-in on CUDA, see `validate`).
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= vocab))
    if bool(bad.any()):
        value = int(targets[bad][0])
        raise ValueError(
            f"target {value} is out of range: targets must be in [0, {vocab}) or equal ignore_index={ignore_index}"
        )
    if segment_ids is not None and segment_ids.numel() > 0:
        lo, hi = int(segment_ids.min()), int(segment_ids.max())
        if lo < -1 or hi >= num_segments:  # type: ignore[operator]
            value = lo if lo < -1 else hi
            raise ValueError(
                f"segment id {value} is out of range: segment_ids must be in [-1, {num_segments}) "
                f"(num_segments={num_segments}; -1 = token belongs to no sample)"
            )


def segment_sums(
    token_nll: Tensor,  # (N,) fp32, 0 at ignored tokens
    counted: Tensor,  # (N,) bool: non-ignored and segment id >= 0
    token_correct: Tensor | None,  # (N,) bool
    segment_ids: Tensor,  # (N,) int64 in [-1, S)
    num_segments: int,
    impl: str,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Per-sample sums (S,): nll (fp32), token count (int64), correct count (int64). No host sync."""
    seg = torch.where(counted, segment_ids, -1)  # (N,) -1 = contributes nowhere
    cols = [token_nll.to(torch.float32) * counted, counted.to(torch.float32)]
    if token_correct is not None:
        cols.append((token_correct & counted).to(torch.float32))
    values = torch.stack(cols, dim=1)  # (N, 2 or 3) fp32; counts < 2**24 per sample stay exact
    if impl == "cpp":
        from .lce_cpp import segment_sum_cpp

        sums = segment_sum_cpp(values, seg, num_segments)  # (S, k)
    else:
        sums = values.new_zeros(num_segments, values.shape[1])
        sums.index_add_(0, seg.clamp(min=0), values * (seg >= 0).unsqueeze(1))
    seg_correct = sums[:, 2].round().to(torch.int64) if token_correct is not None else None
    return sums[:, 0], sums[:, 1].round().to(torch.int64), seg_correct


# --------------------------------------------------------------------------------------------------
# public entry point


def _autocast_inputs(
    hidden: Tensor, weight: Tensor, bias: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Inside an autocast region, the inputs in its dtype, as the ``F.linear`` this call replaces would see
    them: under bf16 autocast a model's final norm and head weight are fp32, and an fp32 call would run
    the logits GEMM without tensor cores (measured on an H200: training 2.1-2.9x slower at 100M-400M).
    Statistics still accumulate in fp32; the gradients flow back through the cast to the fp32 parameters."""
    device_type = hidden.device.type
    if not torch.is_autocast_enabled(device_type):
        return hidden, weight, bias
    dt = torch.get_autocast_dtype(device_type)
    if dt not in (torch.bfloat16, torch.float16):
        return hidden, weight, bias
    return hidden.to(dt), weight.to(dt), None if bias is None else bias.to(dt)


def linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    segment_ids: Tensor | None = None,
    num_segments: int | None = None,
    reduction: Reduction = "mean",
    impl: Impl = "auto",
    stats: bool = True,
    chunk_size: int | None = None,
    validate: bool | None = None,
) -> LCEOutput:
    """Cross-entropy of ``hidden @ weight.T (+ bias)`` against `targets`, without an (N, V) tensor.

    Args:
        hidden: (N, H) or (B, T, H) float (fp32 / bf16 / fp16).
        weight: (V, H), same dtype as hidden. bias: optional (V,). Inside ``torch.autocast`` (bf16 /
            fp16) all three are cast to its dtype first, as for ``F.linear``.
        targets: (N,) or (B, T) int64; ``ignore_index`` marks tokens that count nowhere.
        label_smoothing, z_loss, softcap: loss per token is
            ``(1 - eps) * nll + eps * (lse - mean_j z_j) + z_loss * lse**2`` on logits
            ``z = softcap * tanh(z / softcap)`` (when softcap is set).
        segment_ids, num_segments: token -> sample index in [0, S) (-1 = no sample) for packed batches;
            gives `segment_nll`, `segment_tokens`, `segment_correct` of shape (S,).
        reduction: "mean" over non-ignored tokens (a device-side count, no host sync), "sum", "none".
        impl: "auto" (triton on CUDA, cpp on CPU when built, torch otherwise), "triton", "cpp", "torch".
        stats: compute `token_correct`, `token_entropy`, `segment_correct` (argmax + entropy pass).
        chunk_size: tokens per chunk (extra memory ~ chunk_size * V * 4 bytes); None = default budget.
        validate: check target / segment-id ranges (one host sync). None = on for CPU tensors outside
            torch.compile, off for CUDA (out-of-range targets on CUDA are then undefined behaviour).

    Raises:
        ValueError: shape / dtype / device mismatch, target or segment id out of range, unknown
            reduction or impl. RuntimeError: impl="cpp" requested but the extension is unavailable.
    """
    if validate is None:
        validate = hidden.device.type == "cpu" and not torch.compiler.is_compiling()
    hidden, weight, bias = _autocast_inputs(hidden, weight, bias)
    _check_inputs(
        hidden,
        weight,
        targets,
        bias,
        segment_ids,
        num_segments,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        reduction=reduction,
        chunk_size=chunk_size,
        validate=validate,
    )
    backend = resolve_impl(impl, hidden.device)
    h2 = hidden.reshape(-1, hidden.shape[-1])  # (N, H)
    t1 = targets.reshape(-1).to(torch.int64)  # (N,)
    weight = weight.contiguous()
    h2 = h2.contiguous()

    loss, nll, lse, correct, entropy = LinearCrossEntropyFunction.apply(
        h2,
        weight,
        bias,
        t1,
        int(ignore_index),
        float(label_smoothing),
        float(z_loss),
        None if softcap is None else float(softcap),
        bool(stats),
        chunk_size,
        reduction,
        backend,
        torch.is_grad_enabled(),
    )
    valid = t1 != ignore_index  # (N,) bool
    out = LCEOutput(
        loss=loss,
        token_nll=nll,
        token_correct=correct if stats else None,
        token_entropy=entropy if stats else None,
        lse=lse,
        num_tokens=valid.sum(),
    )
    if segment_ids is not None:
        assert num_segments is not None
        seg = segment_ids.reshape(-1).to(torch.int64)  # (N,)
        counted = valid & (seg >= 0)
        out.segment_nll, out.segment_tokens, out.segment_correct = segment_sums(
            nll, counted, out.token_correct, seg, int(num_segments), backend
        )
    return out
