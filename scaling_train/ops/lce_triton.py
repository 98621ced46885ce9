"""impl="triton": Triton kernels of the fused linear cross-entropy (CUDA; CPU under TRITON_INTERPRET=1).

Per chunk of C tokens (chunk size from the byte budget; fp32 logits (C, V), never (N, V)):

1. `_lce_fwd_kernel`, grid (C / BLOCK_M, SPLIT_V): logits tiles z = h @ W^T with tl.dot (bf16/fp16 in,
   fp32 accumulate; fp32 inputs use IEEE fp32 dots, not TF32), + bias, softcap, stored once in fp32, and
   online per-row statistics over the split's vocabulary range: max, argmax, sum e^{z-m},
   sum e^{z-m} z (entropy), sum z (smoothing), z[target]. Splitting V across programs keeps every SM
   busy when C / BLOCK_M is small; the (SPLIT_V, C) partials are merged with a few (C,)-sized ops.
2. `_lce_bwd_kernel`, grid (C / BLOCK_M, V / BLOCK_V): dloss/dlogits from the stored logits and the
   final lse, written in the input dtype (it is the A operand of the two gradient GEMMs).
3. dH = dz @ W (cuBLAS via torch.mm; fp32 accumulation inside), and `_lce_dw_kernel`, grid
   (V / BLOCK_V, H / BLOCK_H): dW += dz^T @ h accumulated in fp32 with tl.dot (plus dbias column sums),
   so no (V, H) low-precision temporary and no precision loss across chunks.

Matmul FLOPs: 2 N H V (logits) + 2 N H V (dH) + 2 N H V (dW) = 6 N H V per training step.
"""

from __future__ import annotations

import json
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._common import LCEKernelOut, LCEOptions, empty_grads, resolve_chunk_size

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _tanh(x):
    # tanh(x) = 1 - 2 / (e^{2x} + 1); |x| clamped to 15 where tanh is 1 in fp32 (and e^{2x} stays finite)
    x = tl.minimum(tl.maximum(x, -15.0), 15.0)
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _lce_fwd_kernel(
    H_ptr,  # (C, H) hidden chunk, input dtype
    W_ptr,  # (V, H) weight, input dtype
    B_ptr,  # (V,) bias (unused without HAS_BIAS)
    T_ptr,  # (C,) int64 targets
    Z_ptr,  # (C, V) fp32 logits out
    PM_ptr,  # (SPLIT_V, C) fp32 partial max; row stride stride_p
    PS_ptr,  # (SPLIT_V, C) fp32 partial sum e^{z - m}
    PSEZ_ptr,  # (SPLIT_V, C) fp32 partial sum e^{z - m} z
    PSZ_ptr,  # (SPLIT_V, C) fp32 partial sum z
    PZT_ptr,  # (SPLIT_V, C) fp32 partial z[target]
    PARG_ptr,  # (SPLIT_V, C) int32 partial argmax
    n_rows,
    vocab,
    hid,
    stride_h,
    stride_w,
    stride_z,
    stride_p,
    cols_per_split,
    softcap,
    HAS_BIAS: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    row_mask = rows < n_rows
    tgt = tl.load(T_ptr + rows, mask=row_mask, other=-1)
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_M], tl.float32)
    sez = tl.zeros([BLOCK_M], tl.float32)
    sz = tl.zeros([BLOCK_M], tl.float32)
    zt = tl.zeros([BLOCK_M], tl.float32)
    arg = tl.zeros([BLOCK_M], tl.int32)
    v_lo = pid_s * cols_per_split
    v_hi = tl.minimum(v_lo + cols_per_split, vocab)
    for v0 in range(v_lo, v_hi, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)  # (BLOCK_V,)
        col_mask = cols < v_hi
        acc = tl.zeros([BLOCK_M, BLOCK_V], tl.float32)  # (BLOCK_M, BLOCK_V) fp32 logits tile
        for k0 in range(0, hid, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_mask = ks < hid
            a = tl.load(
                H_ptr + rows[:, None] * stride_h + ks[None, :],
                mask=row_mask[:, None] & k_mask[None, :],
                other=0.0,
            )  # (BLOCK_M, BLOCK_K)
            b = tl.load(
                W_ptr + cols[:, None] * stride_w + ks[None, :],
                mask=col_mask[:, None] & k_mask[None, :],
                other=0.0,
            )  # (BLOCK_V, BLOCK_K)
            if DOT_FP32:
                acc = tl.dot(a.to(tl.float32), tl.trans(b).to(tl.float32), acc, input_precision="ieee")
            else:
                acc = tl.dot(a, tl.trans(b), acc)
        if HAS_BIAS:
            acc += tl.load(B_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
        if HAS_SOFTCAP:
            acc = softcap * _tanh(acc / softcap)
        tl.store(
            Z_ptr + rows[:, None] * stride_z + cols[None, :], acc, mask=row_mask[:, None] & col_mask[None, :]
        )
        z = tl.where(col_mask[None, :], acc, float("-inf"))  # padding columns never win or count
        z0 = tl.where(col_mask[None, :], acc, 0.0)
        b_max = tl.max(z, axis=1)
        b_arg = tl.argmax(z, axis=1)  # first index of the tile's max
        m_new = tl.maximum(m, b_max)
        alpha = tl.exp(m - m_new)  # rescale the running sums to the new max
        e = tl.exp(z - m_new[:, None])  # (BLOCK_M, BLOCK_V)
        s = s * alpha + tl.sum(e, axis=1)
        sez = sez * alpha + tl.sum(e * z0, axis=1)
        sz += tl.sum(z0, axis=1)
        zt += tl.sum(tl.where(cols[None, :] == tgt[:, None], z0, 0.0), axis=1)
        arg = tl.where(b_max > m, v0 + b_arg, arg)  # strict: earlier tiles win ties, as torch.argmax
        m = m_new
    out = pid_s * stride_p + rows
    tl.store(PM_ptr + out, m, mask=row_mask)
    tl.store(PS_ptr + out, s, mask=row_mask)
    tl.store(PSEZ_ptr + out, sez, mask=row_mask)
    tl.store(PSZ_ptr + out, sz, mask=row_mask)
    tl.store(PZT_ptr + out, zt, mask=row_mask)
    tl.store(PARG_ptr + out, arg, mask=row_mask)


@triton.jit
def _lce_bwd_kernel(
    Z_ptr,  # (C, V) fp32 logits (softcapped)
    DZ_ptr,  # (C, V) out: dloss/d(pre-softcap logits), input dtype
    T_ptr,  # (C,) int64 targets
    LSE_ptr,  # (C,) fp32
    A_ptr,  # (C,) fp32 row_scale * (1 + 2 z_loss lse)
    RS_ptr,  # (C,) fp32 row_scale (0 at ignored tokens)
    n_rows,
    vocab,
    stride_z,
    stride_dz,
    eps_over_v,
    one_minus_eps,
    softcap,
    HAS_SOFTCAP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    row_mask = rows < n_rows
    mask = row_mask[:, None] & (cols < vocab)[None, :]
    z = tl.load(Z_ptr + rows[:, None] * stride_z + cols[None, :], mask=mask, other=0.0)  # (BLOCK_M, BLOCK_V)
    lse = tl.load(LSE_ptr + rows, mask=row_mask, other=0.0)
    a = tl.load(A_ptr + rows, mask=row_mask, other=0.0)
    rs = tl.load(RS_ptr + rows, mask=row_mask, other=0.0)
    tgt = tl.load(T_ptr + rows, mask=row_mask, other=-1)
    g = tl.exp(z - lse[:, None]) * a[:, None] - (rs * eps_over_v)[:, None]
    g = tl.where(cols[None, :] == tgt[:, None], g - (one_minus_eps * rs)[:, None], g)
    if HAS_SOFTCAP:
        t = z / softcap  # tanh of the pre-cap logit
        g = g * (1.0 - t * t)
    tl.store(DZ_ptr + rows[:, None] * stride_dz + cols[None, :], g.to(DZ_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _lce_dw_kernel(
    DZ_ptr,  # (C, V) input dtype
    H_ptr,  # (C, H) input dtype
    DW_ptr,  # (V, H) fp32, accumulated in place
    DB_ptr,  # (V,) fp32, accumulated in place (unused without HAS_BIAS)
    n_rows,
    vocab,
    hid,
    stride_dz,
    stride_h,
    stride_dw,
    HAS_BIAS: tl.constexpr,
    DOT_FP32: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_v = tl.program_id(0)
    pid_h = tl.program_id(1)
    vs = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    hs = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    v_mask = vs < vocab
    h_mask = hs < hid
    acc = tl.zeros([BLOCK_V, BLOCK_H], tl.float32)  # (BLOCK_V, BLOCK_H) fp32
    col_sum = tl.zeros([BLOCK_V], tl.float32)
    for k0 in range(0, n_rows, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_mask = ks < n_rows
        g = tl.load(
            DZ_ptr + ks[:, None] * stride_dz + vs[None, :], mask=k_mask[:, None] & v_mask[None, :], other=0.0
        )  # (BLOCK_K, BLOCK_V)
        h = tl.load(
            H_ptr + ks[:, None] * stride_h + hs[None, :], mask=k_mask[:, None] & h_mask[None, :], other=0.0
        )  # (BLOCK_K, BLOCK_H)
        if DOT_FP32:
            acc = tl.dot(tl.trans(g).to(tl.float32), h.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(tl.trans(g), h, acc)
        if HAS_BIAS:
            col_sum += tl.sum(g.to(tl.float32), axis=0)
    mask = v_mask[:, None] & h_mask[None, :]
    dw_ptrs = DW_ptr + vs[:, None] * stride_dw + hs[None, :]
    tl.store(dw_ptrs, tl.load(dw_ptrs, mask=mask, other=0.0) + acc, mask=mask)
    if HAS_BIAS:
        if pid_h == 0:
            db = tl.load(DB_ptr + vs, mask=v_mask, other=0.0)
            tl.store(DB_ptr + vs, db + col_sum, mask=v_mask)


CONFIG_ENV = "SCALING_TRAIN_LCE_TRITON_CONFIG"
"""JSON overriding some of `_configs`' entries (tuning only: benchmarks/tune_lce_triton.py)."""


CUDA_CONFIGS = {
    "sm90": dict(fwd=(128, 128, 64, 8, 3), bwd=(8, 1024, 4), dw=(128, 256, 64, 8, 3)),
    "default": dict(fwd=(128, 128, 64, 8, 3), bwd=(8, 1024, 4), dw=(128, 128, 64, 8, 3)),
}
"""Tiles per device class. sm90 (H100/H200): from benchmarks/tune_lce_triton.py on an H200 (2026-12-04,
N=4096, H=4096, V=128256, bf16): dW tiles 128x256 took the step from 34.9 to 30.4 ms; the forward's
candidates were all within 33.1 +- 0.8 ms, so its tiles stayed. Other GPUs keep tiles whose 3-stage
pipeline needs 96 KiB of shared memory (the sm90 dW tiles need 144 KiB)."""


def _configs(device: torch.device) -> dict:
    """Tiles and launch settings: fwd (BLOCK_M, BLOCK_V, BLOCK_K, warps, stages), bwd (BLOCK_M, BLOCK_V,
    warps), dw (BLOCK_V, BLOCK_H, BLOCK_K, warps, stages), and the programs to aim for per chunk.
    Small tiles under the (numpy) interpreter; `CONFIG_ENV` overrides entries anywhere (tuning, tests)."""
    if _INTERPRET or device.type != "cuda":
        cfg: dict = dict(fwd=(16, 32, 16, 4, 1), bwd=(16, 64, 4), dw=(32, 16, 16, 4, 1), target_programs=2)
    else:
        props = torch.cuda.get_device_properties(device)
        cfg = dict(CUDA_CONFIGS["sm90" if props.major == 9 else "default"])
        cfg["target_programs"] = 2 * props.multi_processor_count
    override = os.environ.get(CONFIG_ENV)
    if override:
        extra = json.loads(override)
        unknown = set(extra) - set(cfg)
        if unknown:
            raise ValueError(
                f"{CONFIG_ENV}={override!r}: unknown keys {sorted(unknown)}; known: {sorted(cfg)}"
            )
        cfg.update({k: (tuple(v) if isinstance(v, list) else v) for k, v in extra.items()})
    return cfg


def lce_forward_triton(
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
    n_tokens, hid = hidden.shape  # (N, H)
    vocab = weight.shape[0]  # (V, H)
    dev = hidden.device
    f32 = torch.float32
    eps, zl, cap = opts.label_smoothing, opts.z_loss, opts.softcap
    cfg = _configs(dev)
    bm, bv, bk, fwd_warps, fwd_stages = cfg["fwd"]
    chunk = resolve_chunk_size(opts, n_tokens, vocab, dev)
    need_grad = need_d_hidden or need_d_weight or need_d_bias
    # fp32 inputs: IEEE fp32 dots (not TF32). The interpreter's bf16 tl.dot is broken (triton 3.9 returns
    # garbage), so there low-precision operands are upcast, exactly, before an fp32 dot.
    dot_fp32 = hidden.dtype == torch.float32 or (_INTERPRET and hidden.dtype == torch.bfloat16)

    loss = torch.empty(n_tokens, dtype=f32, device=dev)
    nll, lse = torch.empty_like(loss), torch.empty_like(loss)
    correct = torch.empty(n_tokens, dtype=torch.bool, device=dev) if opts.compute_stats else None
    entropy = torch.empty_like(loss) if opts.compute_stats else None
    d_hidden, d_weight, d_bias = empty_grads(hidden, weight, bias, need_d_hidden, need_d_weight, need_d_bias)

    # split the vocabulary so that (C / BLOCK_M) * SPLIT_V programs fill the device
    n_vblocks = triton.cdiv(vocab, bv)
    split = max(1, min(n_vblocks, triton.cdiv(cfg["target_programs"], triton.cdiv(chunk, bm))))
    blocks_per_split = triton.cdiv(n_vblocks, split)
    split = triton.cdiv(n_vblocks, blocks_per_split)  # every split owns >= 1 tile
    z_buf = torch.empty(chunk, vocab, dtype=f32, device=dev)  # (C, V) fp32 logits, never (N, V)
    dz_buf = z_buf if hidden.dtype == f32 else torch.empty(chunk, vocab, dtype=hidden.dtype, device=dev)
    parts = torch.empty(5, split, chunk, dtype=f32, device=dev)  # m, s, sez, sz, zt
    part_arg = torch.empty(split, chunk, dtype=torch.int32, device=dev)
    bias_arg = bias if bias is not None else z_buf  # any pointer; unused without HAS_BIAS

    for start in range(0, n_tokens, chunk):
        end = min(start + chunk, n_tokens)
        rows = end - start
        h = hidden[start:end]  # (rows, H) contiguous view
        tgt = targets[start:end]
        z = z_buf[:rows]  # (rows, V)
        _lce_fwd_kernel[(triton.cdiv(rows, bm), split)](
            h, weight, bias_arg, tgt, z,
            parts[0], parts[1], parts[2], parts[3], parts[4], part_arg,
            rows, vocab, hid, h.stride(0), weight.stride(0), z.stride(0), part_arg.stride(0), blocks_per_split * bv,
            float(cap) if cap is not None else 1.0,
            HAS_BIAS=bias is not None, HAS_SOFTCAP=cap is not None, DOT_FP32=dot_fp32,
            BLOCK_M=bm, BLOCK_V=bv, BLOCK_K=bk, num_warps=fwd_warps, num_stages=fwd_stages,
        )  # fmt: skip
        # merge the SPLIT_V partials: (SPLIT_V, rows) -> (rows,)
        pm, ps, psez, psz, pzt = (p[:, :rows] for p in parts)
        c_max = pm.max(dim=0).values
        w = torch.exp(pm - c_max)
        s = (ps * w).sum(dim=0)
        c_lse = c_max + torch.log(s)
        valid = tgt != opts.ignore_index
        validf = valid.to(f32)
        c_nll = c_lse - pzt.sum(dim=0)
        c_loss = (1.0 - eps) * c_nll
        if eps > 0.0:
            c_loss = c_loss + eps * (c_lse - psz.sum(dim=0) / vocab)
        if zl > 0.0:
            c_loss = c_loss + zl * c_lse.square()
        loss[start:end] = c_loss * validf
        nll[start:end] = c_nll * validf
        lse[start:end] = c_lse * validf
        if correct is not None and entropy is not None:
            first = (pm == c_max).to(torch.int32).argmax(dim=0)  # first split holding the max
            arg = part_arg[:, :rows].gather(0, first.unsqueeze(0)).squeeze(0)
            correct[start:end] = (arg.to(torch.int64) == tgt) & valid
            entropy[start:end] = (c_lse - (psez * w).sum(dim=0) / s) * validf
        if not need_grad:
            continue

        rs = validf if token_scale is None else validf * token_scale[start:end].to(f32)  # (rows,)
        a = rs * (1.0 + 2.0 * zl * c_lse)
        dz = dz_buf[:rows]  # (rows, V) input dtype
        bbm, bbv, bwd_warps = cfg["bwd"]
        _lce_bwd_kernel[(triton.cdiv(rows, bbm), triton.cdiv(vocab, bbv))](
            z, dz, tgt, c_lse, a, rs, rows, vocab, z.stride(0), dz.stride(0),
            eps / vocab, 1.0 - eps, float(cap) if cap is not None else 1.0,
            HAS_SOFTCAP=cap is not None, BLOCK_M=bbm, BLOCK_V=bbv, num_warps=bwd_warps,
        )  # fmt: skip
        if d_hidden is not None:
            torch.mm(dz, weight, out=d_hidden[start:end])  # (rows, V) @ (V, H), fp32 accumulate in cuBLAS
        if d_weight is not None or d_bias is not None:
            dbv, dbh, dbk, dw_warps, dw_stages = cfg["dw"]
            dw_arg = d_weight if d_weight is not None else torch.empty(0, 1, dtype=f32, device=dev)
            n_h = triton.cdiv(hid, dbh) if d_weight is not None else 1
            _lce_dw_kernel[(triton.cdiv(vocab, dbv), n_h)](
                dz, h, dw_arg, d_bias if d_bias is not None else z_buf,
                rows, vocab, hid if d_weight is not None else 0, dz.stride(0), h.stride(0), dw_arg.stride(0),
                HAS_BIAS=d_bias is not None, DOT_FP32=dot_fp32,
                BLOCK_V=dbv, BLOCK_H=dbh, BLOCK_K=dbk, num_warps=dw_warps, num_stages=dw_stages,
            )  # fmt: skip

    return LCEKernelOut(loss, nll, lse, correct, entropy, d_hidden, d_weight, d_bias)
