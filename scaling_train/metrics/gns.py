"""Gradient noise scale probes: squared gradient norms at two batch sizes, kept on the device.

``E|G_B|^2 = |G|^2 + tr(Sigma) / B``: measuring |G_B|^2 at a small and a big batch gives both terms
(``scaling_train.laws.GradientNoiseScale`` does the algebra and the smoothing). Batch sizes are in
tokens because the loss is a per-token mean.

* Single process with gradient accumulation (``AccumGNSProbe``): after the first micro-batch's backward
  ``p.grad = g_0 / accum`` (the loss is divided by ``accum``), so ``|g_0|^2 = accum^2 |p.grad|^2`` (small
  batch = one micro-batch); after the last one ``p.grad`` is the mean over the step (big batch). Cost:
  two fused norms per step, no gradient copy.
* Single process with one micro-batch (``AccumGNSProbe(..., split=True)``): on measured steps the trainer
  runs the micro-batch as two halves of ``h = mb // 2`` and ``mb - h`` sequences, each loss weighted by
  its share (``h / mb``), so the first backward leaves ``p.grad = (h / mb) g_half`` and the second the
  full mean gradient, as a two-step accumulation would: ``|g_half|^2 = (mb / h)^2 |p.grad|^2``. The
  update is the same gradient up to float rounding. Cost: the two norms, and two half-size forward and
  backward passes in place of one (smaller matmuls; see benchmarks/results/stream.md).
* DDP (``ddp_gns_hook``): a comm hook sees each bucket's local gradient (small batch = this rank's
  tokens per step) before the all-reduce and the averaged one after it (big batch = global tokens).

Both accumulate sums in a (3,) float64 device tensor ``[sum |G_small|^2, sum |G_big|^2, n]`` read once
per flush together with the other statistics.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from scaling_train.laws import GradientNoiseScale

_CHUNK = 1 << 16  # = 65,536 elements per partial norm


def _sq_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """Sum of squared gradient norms in float64. Each tensor is split into 64K-element views (free) so
    every float32 partial norm sums few terms: a whole 1e7-element tensor in one float32 norm is off by
    ~7e-4 relative on the CPU (torch 2.13), the chunked sum by ~2e-7 for ~40% more time."""
    if not grads:
        return torch.zeros((), dtype=torch.float64)
    parts = [c for g in grads for c in g.reshape(-1).split(_CHUNK)]
    norms = torch._foreach_norm(parts, 2)  # one fused kernel per dtype/device group
    return torch.stack(norms).double().pow(2).sum()


class AccumGNSProbe:
    """First part vs whole step's gradient in one process: ``accum >= 2`` micro-batches, or with
    ``split=True`` and ``accum == 1`` the two halves of one micro-batch of ``micro_seqs >= 2`` sequences
    (the trainer asks ``begin_step`` whether to split)."""

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        *,
        accum: int,
        micro_tokens: int,
        every: int = 1,
        split: bool = False,
        micro_seqs: int = 0,
    ) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.accum, self.micro_tokens, self.every = accum, micro_tokens, every
        self.split = split and accum == 1 and micro_seqs >= 2
        self.enabled = accum >= 2 or self.split
        if self.split:  # parts of h and mb - h sequences; the first is the small batch
            h = micro_seqs // 2
            self._parts, self._b_small = 2, micro_tokens * h // micro_seqs
        else:
            self._parts, self._b_small = accum, micro_tokens
        self.sums = torch.zeros(
            3, dtype=torch.float64, device=self.params[0].device if self.params else "cpu"
        )
        self._i = 0
        self._step = 0

    @property
    def b_small(self) -> float:
        """Tokens behind the first part's gradient."""
        return float(self._b_small)

    @property
    def b_big(self) -> float:
        """Tokens behind the step's gradient."""
        return float(self.micro_tokens * self.accum)

    def begin_step(self, step: int) -> bool:
        """Optional, before the step's first micro-batch: measure at ``step % every == 0`` (the trainer's
        step, so a resumed run keeps the phase). Returns whether the trainer must split its one
        micro-batch into two halves for this step."""
        self._step = step
        return self.split and step % self.every == 0

    def _grads(self) -> list[torch.Tensor]:
        return [p.grad for p in self.params if p.grad is not None]

    @torch.no_grad()
    def after_backward(self) -> None:
        """Call after each micro-batch's backward (before clipping and the optimizer step)."""
        i, self._i = self._i, self._i + 1
        if not self.enabled or self._step % self.every:
            return
        if i == 0:  # p.grad = (b_small / b_big) g_small: the loss is weighted by the part's share
            scale = (self.b_big / self.b_small) ** 2  # = accum**2 for equal micro-batches
            self.sums[0] += scale * _sq_norm(self._grads()).to(self.sums.device)
        if i == self._parts - 1:
            self.sums[1] += _sq_norm(self._grads()).to(self.sums.device)
            self.sums[2] += 1

    def end_step(self) -> None:
        self._i = 0
        self._step += 1


@dataclass
class DDPGNSState:
    """State of ``ddp_gns_hook``; register with ``ddp_model.register_comm_hook(state, ddp_gns_hook)``."""

    process_group: Any = None
    local_tokens: int = 0
    """Tokens behind one rank's gradient per optimizer step (micro-batch x accum x seq_len)."""
    world_size: int = 1
    sums: torch.Tensor = field(default_factory=lambda: torch.zeros(3, dtype=torch.float64))

    @property
    def b_small(self) -> float:
        return float(self.local_tokens)

    @property
    def b_big(self) -> float:
        return float(self.local_tokens * self.world_size)

    def end_step(self) -> None:
        """Call once per optimizer step after backward (counts the measurement)."""
        self.sums[2] += 1


def ddp_gns_hook(state, bucket):  # no annotations: DDP rejects any but dist.GradBucket (strings included)
    """All-reduce-mean (as DDP's default hook) and, on the side, |local|^2 and |averaged|^2 per bucket.

    Summed over buckets, these are the squared norms of the whole local and global gradients."""
    import torch.distributed as dist

    buf = bucket.buffer()
    if state.sums.device != buf.device:
        state.sums = state.sums.to(buf.device)
    state.sums[0] += buf.double().pow(2).sum()
    buf.div_(state.world_size)
    fut = dist.all_reduce(buf, group=state.process_group, async_op=True).get_future()

    def _after(f: torch.futures.Future) -> torch.Tensor:
        out = f.value()[0]
        state.sums[1] += out.double().pow(2).sum()
        return out

    return fut.then(_after)


class NoiseScaleTracker:
    """Host side: feeds window means of a probe's sums into ``GradientNoiseScale`` once per flush.

    The window mean of each squared norm is still an unbiased estimate of ``E|G_B|^2``, so one update
    per flush loses nothing but the per-step noise (which the EMA would average anyway)."""

    def __init__(self, *, decay: float = 0.9) -> None:
        self.gns = GradientNoiseScale(decay=decay)

    def summarize(self, sums: list[float], b_small: float, b_big: float) -> dict[str, float]:
        s_small, s_big, n = sums
        if n <= 0 or not b_small < b_big:
            return {}
        self.gns.update(max(s_small / n, 0.0), max(s_big / n, 0.0), b_small, b_big)
        return {
            "gns_g2": self.gns.g2,
            "gns_trace_sigma": self.gns.trace_sigma,
            "gns_b_simple": self.gns.b_simple,  # tokens
            "gns_sq_small": s_small / n,
            "gns_sq_big": s_big / n,
        }

    def state_dict(self) -> dict[str, float]:
        g = self.gns
        return {"g2": g._g2, "s": g._s, "w": g._w, "n": g.n_updates}

    def load_state_dict(self, d: dict[str, float]) -> None:
        g = self.gns
        g._g2, g._s, g._w, g.n_updates = d["g2"], d["s"], d["w"], int(d["n"])
