"""Device-side per-token statistics, accumulated over a flush window without host syncs.

Everything lives in one float64 buffer on the device; ``TokenStats.values()`` hands it back as a tensor
so the caller can concatenate it with other accumulators and pay ONE host transfer per flush.

Buffer layout (``n_bins`` = B, ``pos_buckets`` = P):

    [0] nll sum   [1] counted tokens   [2] correct tokens   [3] entropy sum
    [4 : 4+B]          token count per NLL bin (bin width nll_max / B, last bin open-ended)
    [4+B : 4+B+P]      NLL sum per position bucket (position t of T -> bucket t * P // T)
    [4+B+P : 4+B+2P]   token count per position bucket
"""

from __future__ import annotations

from typing import Any

import torch


class TokenStats:
    """Sums of NLL, counted and correct tokens, entropy, an NLL histogram and NLL by position bucket.

    ``update*`` only issue device kernels (scatter_add into fixed-size bins: no data-dependent shapes,
    hence no sync); ``summarize(values)`` turns the host copy of ``values()`` into row fields.
    """

    def __init__(
        self,
        *,
        n_bins: int = 32,
        nll_max: float = 16.0,
        pos_buckets: int = 8,
        device: torch.device | str = "cpu",
    ) -> None:
        if n_bins < 1 or pos_buckets < 1:
            raise ValueError(f"n_bins={n_bins} and pos_buckets={pos_buckets} must be >= 1")
        if not nll_max > 0:
            raise ValueError(f"nll_max={nll_max} must be > 0")
        self.n_bins, self.nll_max, self.pos_buckets = n_bins, float(nll_max), pos_buckets
        self.device = torch.device(device)
        self.size = 4 + n_bins + 2 * pos_buckets
        self.buf = torch.zeros(self.size, dtype=torch.float64, device=self.device)
        self._pos_cache: dict[tuple[int, int, str], torch.Tensor] = {}

    # ------------------------------------------------------------------ update
    def _pos_index(self, B: int, T: int, device: torch.device) -> torch.Tensor:
        key = (B, T, str(device))
        idx = self._pos_cache.get(key)
        if idx is None:
            pos = torch.arange(T, device=device) * self.pos_buckets // T  # (T,) bucket of each position
            idx = (4 + self.n_bins + pos).repeat(B)  # (B*T,) slot of the NLL sum per bucket
            self._pos_cache = {key: idx}  # shapes rarely change; keep one
        return idx

    @torch.no_grad()
    def update(
        self,
        token_nll: torch.Tensor,
        valid: torch.Tensor,
        *,
        seq_len: int,
        correct: torch.Tensor | None = None,
        entropy: torch.Tensor | None = None,
    ) -> None:
        """Add (N,) per-token values, N = B * seq_len, row-major; ``valid`` (N,) bool marks counted tokens."""
        if self.buf.device != token_nll.device:
            self.buf = self.buf.to(token_nll.device)
        nll = token_nll.reshape(-1).double()
        w = valid.reshape(-1).double()  # (N,) 1 = counted
        n = nll.numel()
        if n % seq_len:
            raise ValueError(f"{n} tokens are not a whole number of sequences of seq_len={seq_len}")
        nll = nll * w  # ignored tokens carry 0 already for LCEOutput; logits-derived values may not
        head = [nll.sum(), w.sum()]
        head.append(
            (correct.reshape(-1).double() * w).sum() if correct is not None else torch.zeros_like(head[0])
        )
        head.append(
            (entropy.reshape(-1).double() * w).sum() if entropy is not None else torch.zeros_like(head[0])
        )
        self.buf[:4] += torch.stack(head)
        width = self.nll_max / self.n_bins
        bins = (token_nll.reshape(-1).float() / width).long().clamp_(
            0, self.n_bins - 1
        ) + 4  # (N,) slot index
        self.buf.scatter_add_(0, bins, w)
        pidx = self._pos_index(n // seq_len, seq_len, nll.device)
        self.buf.scatter_add_(0, pidx, nll)
        self.buf.scatter_add_(0, pidx + self.pos_buckets, w)

    def update_lce(self, out: Any, targets: torch.Tensor, *, ignore_index: int = -100) -> None:
        """From a ``LCEOutput`` of (B, T) ``targets``."""
        self.update(
            out.token_nll,
            targets.reshape(-1) != ignore_index,
            seq_len=targets.shape[-1],
            correct=out.token_correct,
            entropy=out.token_entropy,
        )

    @torch.no_grad()
    def update_logits(
        self, logits: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = -100, shift: bool = True
    ) -> torch.Tensor:
        """From (B, T, V) logits and (B, T) labels (HF convention: ``shift`` = label t+1 is the target of
        position t). Returns the (B, T') per-token NLL (0 where ignored) for per-sample records."""
        if shift:
            logits, labels = logits[:, :-1], labels[:, 1:]
        B, T, V = logits.shape
        z = logits.float().reshape(-1, V)  # (B*T, V) fp32
        y = labels.reshape(-1)
        valid = y != ignore_index
        lse = torch.logsumexp(z, dim=-1)  # (B*T,)
        yz = z.gather(1, y.clamp(min=0).unsqueeze(1)).squeeze(1)
        nll = (lse - yz) * valid
        p = torch.softmax(z, dim=-1)
        entropy = lse - (p * z).sum(-1)
        correct = z.argmax(-1) == y
        self.update(nll, valid, seq_len=T, correct=correct, entropy=entropy)
        return nll.view(B, T)

    # ------------------------------------------------------------------ read
    def values(self) -> torch.Tensor:
        """The device buffer (do not modify); concatenate with other accumulators, then one ``.tolist()``."""
        return self.buf

    def reset(self) -> None:
        self.buf.zero_()

    def summarize(self, v: list[float]) -> dict[str, Any]:
        """Row fields from the host copy of ``values()`` (a list of ``self.size`` floats)."""
        B, P = self.n_bins, self.pos_buckets
        nll, n, correct, ent = v[:4]
        if n <= 0:
            return {}
        hist = v[4 : 4 + B]
        pos_nll, pos_n = v[4 + B : 4 + B + P], v[4 + B + P : 4 + B + 2 * P]
        return {
            "tok_nll": nll / n,
            "tok_acc": correct / n,
            "tok_entropy": ent / n,
            "tok_count": n,
            "tok_nll_hist": [c / n for c in hist],  # fraction of tokens per NLL bin
            "tok_nll_by_pos": [s / c if c > 0 else None for s, c in zip(pos_nll, pos_n)],
        }

    def hist_edges(self) -> list[float]:
        """Bin edges of ``tok_nll_hist`` (the last bin also holds everything above ``nll_max``)."""
        w = self.nll_max / self.n_bins
        return [i * w for i in range(self.n_bins + 1)]
