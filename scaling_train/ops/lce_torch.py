"""impl="torch": chunked pure-PyTorch fused linear cross-entropy (portable fallback, any device).

Per chunk of C tokens it holds two fp32 (C, V) buffers (logits and probabilities/grad), never (N, V).
Low-precision weights are upcast once to fp32 (one extra (V, H) fp32 copy); use impl="triton" on GPU.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import LCEKernelOut, LCEOptions, empty_grads, resolve_chunk_size


def lce_forward_torch(
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
    n_tokens, _ = hidden.shape  # (N, H)
    vocab = weight.shape[0]  # weight: (V, H)
    f32 = torch.float32
    eps, zl, cap = opts.label_smoothing, opts.z_loss, opts.softcap
    chunk = resolve_chunk_size(opts, n_tokens, vocab, hidden.device)
    need_grad = need_d_hidden or need_d_weight or need_d_bias

    w32 = weight.to(f32)  # (V, H) fp32; no copy when weight is fp32
    b32 = bias.to(f32) if bias is not None else None
    loss = torch.empty(n_tokens, dtype=f32, device=hidden.device)
    nll = torch.empty_like(loss)
    lse = torch.empty_like(loss)
    correct = torch.empty(n_tokens, dtype=torch.bool, device=hidden.device) if opts.compute_stats else None
    entropy = torch.empty_like(loss) if opts.compute_stats else None
    d_hidden, d_weight, d_bias = empty_grads(hidden, weight, bias, need_d_hidden, need_d_weight, need_d_bias)

    for start in range(0, n_tokens, chunk):
        end = min(start + chunk, n_tokens)
        h = hidden[start:end].to(f32)  # (C, H)
        tgt = targets[start:end]
        valid = tgt != opts.ignore_index  # (C,) bool
        validf = valid.to(f32)
        tgt_safe = torch.where(valid, tgt, 0).unsqueeze(1)  # (C, 1), in range for gather

        z = h @ w32.T  # (C, V) fp32 logits, never (N, V)
        if b32 is not None:
            z += b32
        if cap is not None:
            z.div_(cap).tanh_().mul_(cap)
        c_lse = torch.logsumexp(z, dim=1)  # (C,)
        c_nll = c_lse - z.gather(1, tgt_safe).squeeze(1)  # (C,)
        c_loss = (1.0 - eps) * c_nll
        if eps > 0.0:
            c_loss = c_loss + eps * (c_lse - z.mean(dim=1))
        if zl > 0.0:
            c_loss = c_loss + zl * c_lse.square()
        loss[start:end] = c_loss * validf
        nll[start:end] = c_nll * validf
        lse[start:end] = c_lse * validf

        p = torch.exp(z - c_lse.unsqueeze(1))  # (C, V) probabilities
        if correct is not None and entropy is not None:
            correct[start:end] = (z.argmax(dim=1) == tgt) & valid
            pz = torch.bmm(p.unsqueeze(1), z.unsqueeze(2)).view(-1)  # (C,) sum_j p_j z_j, no (C, V) temp
            entropy[start:end] = (c_lse - pz) * validf
        if not need_grad:
            continue

        row = validf if token_scale is None else validf * token_scale[start:end].to(f32)  # (C,)
        dz = p.mul_((row * (1.0 + 2.0 * zl * c_lse)).unsqueeze(1))  # (C, V) in place over p
        if eps > 0.0:
            dz.sub_((row * (eps / vocab)).unsqueeze(1))
        dz.scatter_add_(1, tgt_safe, (-(1.0 - eps) * row).unsqueeze(1))
        if cap is not None:
            dz.mul_(z.div_(cap).square_().neg_().add_(1.0))  # d softcap = 1 - tanh^2, z reused in place
        if d_hidden is not None:
            d_hidden[start:end] = (dz @ w32).to(hidden.dtype)  # (C, H)
        if d_weight is not None:
            d_weight.addmm_(dz.T, h)  # (V, C) @ (C, H), fp32 accumulation
        if d_bias is not None:
            d_bias += dz.sum(dim=0)  # (V,)

    return LCEKernelOut(loss, nll, lse, correct, entropy, d_hidden, d_weight, d_bias)
