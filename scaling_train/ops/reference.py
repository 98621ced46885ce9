"""Float64 reference of `linear_cross_entropy`: materialises the (N, V) logits, written for clarity.

Used by tests/ops and benchmarks/bench_lce.py. Gradients come from autograd through this code, so
they are independent of the closed-form gradient the kernels use.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .lce import LCEOutput


def lce_reference(
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
    reduction: str = "mean",
) -> LCEOutput:
    """Same semantics as `linear_cross_entropy`, computed in float64 (differentiable w.r.t. the
    float64 tensors passed in; pass leaves of dtype float64 to get float64 gradients)."""
    h = hidden.reshape(-1, hidden.shape[-1]).double()  # (N, H)
    t = targets.reshape(-1).long()  # (N,)
    z = h @ weight.double().T  # (N, V) float64 logits
    if bias is not None:
        z = z + bias.double()
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    valid = t != ignore_index
    t_safe = torch.where(valid, t, torch.zeros_like(t))
    logp = torch.log_softmax(z, dim=1)  # (N, V)
    lse = torch.logsumexp(z, dim=1)  # (N,)
    nll = -logp.gather(1, t_safe[:, None]).squeeze(1)
    smooth = -logp.mean(dim=1)  # = lse - mean_j z_j
    per_token = (1 - label_smoothing) * nll + label_smoothing * smooth + z_loss * lse**2
    per_token = torch.where(valid, per_token, torch.zeros_like(per_token))
    if reduction == "mean":
        loss = per_token.sum() / valid.sum().clamp(min=1)
    elif reduction == "sum":
        loss = per_token.sum()
    else:
        loss = per_token
    zero = torch.zeros_like(nll)
    with torch.no_grad():
        p = logp.exp()
        entropy = -(p * logp).sum(dim=1)
        correct = (z.argmax(dim=1) == t) & valid
        out = LCEOutput(
            loss=loss,
            token_nll=torch.where(valid, nll, zero).detach(),
            token_correct=correct,
            token_entropy=torch.where(valid, entropy, zero),
            lse=torch.where(valid, lse, zero).detach(),
            num_tokens=valid.sum(),
        )
        if segment_ids is not None:
            assert num_segments is not None
            seg = segment_ids.reshape(-1).long()
            seg_nll = torch.zeros(num_segments, dtype=torch.float64)
            seg_tok = torch.zeros(num_segments, dtype=torch.int64)
            seg_cor = torch.zeros(num_segments, dtype=torch.int64)
            for i in range(t.numel()):  # plain loop: obviously right
                s = int(seg[i])
                if s >= 0 and bool(valid[i]):
                    seg_nll[s] += float(nll[i])
                    seg_tok[s] += 1
                    seg_cor[s] += int(correct[i])
            out.segment_nll, out.segment_tokens, out.segment_correct = seg_nll, seg_tok, seg_cor
    return out


def top2_margin(
    hidden: Tensor, weight: Tensor, bias: Tensor | None = None, softcap: float | None = None
) -> Tensor:
    """(N,) float64 gap between the largest and second-largest logit: where it is below the kernel's
    rounding error, argmax ties may legitimately resolve differently (used to compare token_correct)."""
    z = hidden.reshape(-1, hidden.shape[-1]).double() @ weight.double().T
    if bias is not None:
        z = z + bias.double()
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    top = z.topk(min(2, z.shape[1]), dim=1).values
    return top[:, 0] - top[:, -1] if top.shape[1] > 1 else torch.full_like(top[:, 0], float("inf"))
