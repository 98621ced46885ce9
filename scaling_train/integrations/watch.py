"""``ModelWatcher``: per-token statistics and the gradient noise scale of a model trained by another loop.

Shared by the transformers callback and the accelerate tracker. Everything stays on the device between
reads; ``collect(row)`` adds the window's statistics to a metrics row with one host transfer.

* A forward hook on the (unwrapped) model takes ``labels`` from the call's keyword arguments and
  ``logits`` from its output (the transformers convention: label t+1 is the target of position t). Loops
  whose model has another signature feed ``update_logits(logits, labels)`` or, with the fused loss,
  ``update_lce(out, targets)`` themselves.
* Noise-scale probes, squared gradient norms at two batch sizes before any clipping:
  ``AccumProbe`` in one process (first micro-batch vs whole step; needs >= 2 micro-batches per
  optimizer step) and ``DDPProbe`` under DDP (this rank's step gradient vs the all-reduced one).
  Both keep window sums ``[|G_small|^2, |G_big|^2, steps, tokens small, tokens big]``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch

from scaling_train.metrics.gns import DDPGNSState, NoiseScaleTracker, ddp_gns_hook
from scaling_train.metrics.stats import TokenStats


def check_args(who: str, **values: float | None) -> None:
    """Errors that name the argument, its value and the allowed range (the integrations' constructors)."""
    rules = {
        "tolerance": (lambda v: v is None or (math.isfinite(v) and v > 0), "None or a finite number > 0"),
        "min_progress": (lambda v: 0 <= v <= 1, "in [0, 1]"),
        "fit_every": (lambda v: int(v) == v and v >= 1, "an integer >= 1"),
        "nll_bins": (lambda v: int(v) == v and v >= 1, "an integer >= 1"),
        "pos_buckets": (lambda v: int(v) == v and v >= 1, "an integer >= 1"),
    }
    for k, v in values.items():
        ok, allowed = rules[k]
        try:
            good = ok(v)
        except (TypeError, ValueError):
            good = False
        if not good:
            raise ValueError(f"{who}: {k}={v!r} must be {allowed}")


class AccumProbe:
    """Squared norms of the cumulative gradient after each micro-batch's backward, via
    ``register_post_accumulate_grad_hook`` (runs before any clipping)."""

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.cur = torch.zeros((), dtype=torch.float64, device=device)  # |cumulative grad|^2 so far
        self.first = torch.zeros((), dtype=torch.float64, device=device)
        self.sums = torch.zeros(5, dtype=torch.float64, device=device)
        self.handles = [p.register_post_accumulate_grad_hook(self._hook) for p in self.params]
        self.micro = 0
        self.steps_seen = 0  # optimizer steps, measured or not (host counter)
        self.tok_first = torch.zeros((), dtype=torch.float64, device=device)
        self.tok_step = torch.zeros((), dtype=torch.float64, device=device)

    @torch.no_grad()
    def _hook(self, p: torch.Tensor) -> None:
        self.cur += p.grad.detach().double().pow(2).sum()

    def start_micro(self, n_tokens: torch.Tensor) -> None:
        """Called from the forward hook: the previous micro-batch's backward is complete."""
        if self.micro == 1:
            self.first.copy_(self.cur)
        self.cur.zero_()
        if self.micro == 0:
            self.tok_first.copy_(n_tokens)
        self.tok_step += n_tokens
        self.micro += 1

    @torch.no_grad()
    def end_step(self) -> None:
        self.steps_seen += 1
        if self.micro >= 2:
            big = self.cur  # the last micro-batch's cumulative = whole step (hooks ran before clipping)
            # loss normalised by the step's token count: grad after mb0 = (n0 / N) * mean grad of mb0
            ratio = self.tok_step / self.tok_first.clamp(min=1)
            self.sums += torch.stack(
                [ratio.pow(2) * self.first, big, torch.ones_like(big), self.tok_first, self.tok_step]
            )
        self.micro = 0
        self.cur.zero_()
        self.tok_step.zero_()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


class DDPProbe:
    """Under DDP: this rank's whole-step gradient (small batch) and the all-reduced one (big batch),
    squared bucket by bucket in ``ddp_gns_hook`` on the ``DistributedDataParallel`` wrapper, before any
    clipping. The big batch's tokens are this rank's times the world size (equal-sized rank batches)."""

    def __init__(self, ddp: torch.nn.Module, device: torch.device, world_size: int) -> None:
        self.world = world_size
        self.state = DDPGNSState(process_group=ddp.process_group, world_size=world_size)
        self.state.sums = self.state.sums.to(device)
        ddp.register_comm_hook(self.state, ddp_gns_hook)  # before the first backward
        self.tok_step = torch.zeros((), dtype=torch.float64, device=device)
        self.sums = torch.zeros(5, dtype=torch.float64, device=device)
        self.steps_seen = 0

    def start_micro(self, n_tokens: torch.Tensor) -> None:
        self.tok_step += n_tokens

    @torch.no_grad()
    def end_step(self) -> None:
        self.steps_seen += 1
        s = self.state.sums  # [|local|^2, |averaged|^2, -]: summed over buckets by the hook
        one = torch.ones_like(s[0])
        self.sums += torch.stack([s[0], s[1], one, self.tok_step, self.tok_step * self.world])
        s.zero_()
        self.tok_step.zero_()

    def remove(self) -> None:
        pass  # DDP cannot unregister a comm hook; it keeps all-reducing as the default hook does


def find_ddp(model: torch.nn.Module) -> torch.nn.Module | None:
    """The ``DistributedDataParallel`` wrapping ``model``, for loops that hand out only the bare model
    (transformers callbacks): looked for once among the live objects."""
    import gc

    from torch.nn.parallel import DistributedDataParallel

    with warnings.catch_warnings():  # isinstance on some deprecated torch objects warns
        warnings.simplefilter("ignore")
        for o in gc.get_objects():
            try:
                if isinstance(o, DistributedDataParallel) and (
                    o.module is model or getattr(o.module, "_orig_mod", None) is model
                ):
                    return o
            except Exception:  # exotic objects whose isinstance or attributes raise
                continue
    return None


def make_probe(
    model: torch.nn.Module, device: torch.device, *, world_size: int, ddp: torch.nn.Module | None,
    accum: int | None, who: str,
) -> AccumProbe | DDPProbe | None:  # fmt: skip
    """The noise-scale probe for this setup, or None with a warning that says why it is off.
    ``accum`` None = not known in advance (the probe measures steps with >= 2 micro-batches)."""
    if world_size > 1:
        if ddp is None:
            warnings.warn(
                f"{who}: gradient noise scale off: world_size={world_size} but the model is not wrapped in "
                "DistributedDataParallel (FSDP and DeepSpeed are not supported)",
                stacklevel=3,
            )
            return None
        try:
            return DDPProbe(ddp, device, world_size)
        except RuntimeError as e:  # e.g. a comm hook is already registered (DDP allows one)
            warnings.warn(f"{who}: gradient noise scale off: {e}", stacklevel=3)
            return None
    if accum is not None and accum < 2:
        warnings.warn(
            f"{who}: gradient noise scale off: gradient_accumulation_steps={accum} < 2 in one process "
            "(it needs two batch sizes: micro-batch and step)",
            stacklevel=3,
        )
        return None
    return AccumProbe(model, device)


class ModelWatcher:
    """Forward hook -> ``TokenStats``, a noise-scale probe, and ``collect(row)``; see the module doc."""

    def __init__(
        self, model: torch.nn.Module, device: torch.device, *, stats: TokenStats | None,
        probe: AccumProbe | DDPProbe | None, tracker: NoiseScaleTracker, who: str, collects: bool = True,
    ) -> None:  # fmt: skip
        """``collects=False``: a rank whose rows nobody writes (under DDP its probe only has to register the
        comm hook every rank needs); its window sums are dropped at every step."""
        self.stats, self.probe, self.tracker, self.who, self.collects = stats, probe, tracker, who, collects
        self.fused_out: Any = None  # (LCEOutput, targets) of a fused loss, consumed by take_fused()
        self.tok_count = 0.0  # label tokens counted by the hook, collected rows so far (host)
        self._tok = torch.zeros((), dtype=torch.float64, device=device)
        self._warned = False
        self._handle = model.register_forward_hook(self._forward_hook, with_kwargs=True)

    def _forward_hook(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if not module.training:
            return
        labels = kwargs.get("labels")
        if labels is not None and self.stats is not None and self.fused_out is None:
            logits = output.get("logits") if isinstance(output, dict) else getattr(output, "logits", None)
            if logits is not None and logits.shape[-1] > 0:  # the fused loss leaves (B, T, 0) logits
                self.stats.update_logits(logits.detach(), labels)
        if labels is None:
            labels = kwargs.get("input_ids")
        if labels is not None:
            n_tok = (labels[:, 1:] != -100).sum().double()
            self._tok += n_tok
            if self.probe is not None:
                self.probe.start_micro(n_tok)

    def update_logits(self, logits: torch.Tensor, labels: torch.Tensor, *, shift: bool = True) -> None:
        """For models the hook cannot read: (B, T, V) logits and (B, T) labels of one micro-batch."""
        if self.stats is not None:
            self.stats.update_logits(logits.detach(), labels, shift=shift)

    def update_lce(self, out: Any, targets: torch.Tensor) -> None:
        """The ``LCEOutput`` of a fused loss and its targets (already shifted)."""
        if self.stats is not None:
            self.stats.update_lce(out, targets)

    def take_fused(self) -> None:
        """Fold in the pending fused-loss output (call after each micro-batch's backward)."""
        if self.fused_out is not None:
            self.update_lce(*self.fused_out)
        self.fused_out = None

    def end_step(self) -> None:
        """Call once per optimizer step, after the last micro-batch's backward."""
        self.take_fused()
        if self.probe is not None:
            self.probe.end_step()
            if not self.collects:
                self.probe.sums.zero_()

    def collect(self, row: dict[str, Any]) -> float:
        """Add the window's ``tok_*`` and ``gns_*`` fields to ``row`` and start a new window (one sync);
        returns the label tokens the hook counted in the window."""
        self.take_fused()
        parts = [self._tok.view(1)]
        if self.stats is not None:
            parts.append(self.stats.values())
        if self.probe is not None:
            parts.append(self.probe.sums)
        vals = torch.cat(parts).tolist()  # sync: one host transfer per row
        self._tok.zero_()
        counted, vals = vals[0], vals[1:]
        self.tok_count += counted
        if self.stats is not None:
            row.update(self.stats.summarize(vals[: self.stats.size]))
            self.stats.reset()
            vals = vals[self.stats.size :]
        if self.probe is not None:
            s_small, s_big, n, t0, tN = vals[:5]
            if n > 0:
                row.update(self.tracker.summarize([s_small, s_big, n], t0 / n, tN / n))
            elif self.probe.steps_seen and not self._warned:
                self._warned = True
                warnings.warn(
                    f"{self.who}: no gradient noise scale measured in {self.probe.steps_seen} optimizer "
                    "steps: it needs >= 2 micro-batches (forward passes with labels or input_ids) per step",
                    stacklevel=2,
                )
            self.probe.sums.zero_()
        return counted

    def remove(self) -> None:
        self._handle.remove()
        if self.probe is not None:
            self.probe.remove()
