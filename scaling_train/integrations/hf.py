"""``ScalingLawCallback``: scaling-law metrics for a stock transformers ``Trainer``.

    from scaling_train.integrations import ScalingLawCallback
    cb = ScalingLawCallback("runs/gpt2-small", tolerance=0.01)
    trainer = Trainer(model, args, train_dataset=ds, callbacks=[cb])
    # optional, the fused loss (no (B, T, V) logits kept): Trainer(..., compute_loss_func=cb.fused_loss(model))
    trainer.train()

What it does (rank 0 only; other ranks only register the DDP comm hook):

* when training begins it hooks the model's forward: per-token statistics (NLL histogram, NLL by position,
  accuracy, entropy) are computed from ``logits`` and ``labels`` on the device, without host syncs;
* gradient noise scale, from squared gradient norms at two batch sizes taken before clipping: in one
  process, post-accumulate-grad hooks give the first micro-batch's and the whole step's (needs
  ``gradient_accumulation_steps >= 2``); under DDP a comm hook (registered on every rank) gives this
  rank's and the all-reduced one;
* at every ``on_log`` with a training loss it writes one row to ``run_dir/metrics.jsonl`` (one host
  transfer), the x-axis ``tokens`` from ``state.num_input_tokens_seen`` (or the counted label tokens);
* an in-process fitter writes ``run_dir/predictions.json``; with ``tolerance`` set, training stops when
  the predicted final-loss interval is narrower than it (``control.should_training_stop``);
* its state (offsets, token count, noise-scale EMA) is saved in checkpoints (``ExportableState``); on
  resume ``metrics.jsonl`` is rolled back to the checkpoint so no row is duplicated.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from scaling_train._io import atomic_write
from scaling_train.metrics.gns import DDPGNSState, NoiseScaleTracker, ddp_gns_hook
from scaling_train.metrics.stats import TokenStats
from scaling_train.metrics.stream import MetricsStream


def write_run_meta(run_dir: Path, *, total_steps: int, lr: list[float], params: dict, tokens_per_step: float | None,
                   extra: dict | None = None) -> None:  # fmt: skip
    """``config.yaml`` (with the ``resolved`` section the fitter reads) and ``lr_schedule.json``, atomically."""
    run_dir.mkdir(parents=True, exist_ok=True)
    meta = dict(extra or {})
    meta["resolved"] = {
        "params": params,
        "total_steps": int(total_steps),
        "tokens_per_step": tokens_per_step,
        "total_tokens": tokens_per_step * total_steps if tokens_per_step else None,
    }
    for name, text in (
        ("config.yaml", yaml.safe_dump(meta, sort_keys=False)),
        ("lr_schedule.json", json.dumps(lr)),
    ):
        atomic_write(run_dir / name, text)


def count_params(model: torch.nn.Module) -> dict[str, int]:
    """Non-embedding N (Kaplan): all parameters minus input/output embedding matrices (and position tables)."""
    total = sum(p.numel() for p in model.parameters())
    emb_ids = set()
    for m in model.modules():
        if isinstance(m, torch.nn.Embedding):
            emb_ids.add(id(m.weight))
    get_out = getattr(model, "get_output_embeddings", None)
    out = get_out() if get_out is not None else None
    if out is not None:
        emb_ids.add(id(out.weight))
    emb = sum(p.numel() for p in model.parameters() if id(p) in emb_ids)
    return {"non_embedding": total - emb, "embedding": emb, "total": total}


def offset_after_step(path: Path, step: int) -> int:
    """Byte offset just after the last row with ``row["step"] <= step`` (rows are in step order)."""
    end = 0
    with open(path, "rb") as f:
        pos = 0
        for line in f:
            pos += len(line)
            if not line.endswith(b"\n"):
                break
            try:
                if int(json.loads(line).get("step", 0)) > step:
                    break
            except (ValueError, AttributeError):
                pass
            end = pos
    return end


class _GradProbe:
    """Squared norms of the cumulative gradient after each micro-batch's backward, via
    ``register_post_accumulate_grad_hook`` (runs before any clipping)."""

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.cur = torch.zeros(
            (), dtype=torch.float64, device=device
        )  # |cumulative grad|^2 of this micro-batch
        self.first = torch.zeros((), dtype=torch.float64, device=device)
        # window sums: [ratio^2 * |g_0|^2, |G_step|^2, n_steps, tokens mb0, tokens step]
        self.sums = torch.zeros(5, dtype=torch.float64, device=device)
        self.handles = [p.register_post_accumulate_grad_hook(self._hook) for p in self.params]
        self.micro = 0
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


class _DDPProbe:
    """Under DDP: this rank's whole-step gradient (small batch) and the all-reduced one (big batch),
    squared bucket by bucket in ``ddp_gns_hook`` on the ``DistributedDataParallel`` wrapper, before any
    clipping. Window sums laid out as ``_GradProbe``'s. The big batch's tokens are this rank's times the
    world size (the ranks' batches are taken as equal in size)."""

    def __init__(self, ddp: torch.nn.Module, device: torch.device, world_size: int) -> None:
        self.world = world_size
        self.state = DDPGNSState(process_group=ddp.process_group, world_size=world_size)
        self.state.sums = self.state.sums.to(device)
        ddp.register_comm_hook(self.state, ddp_gns_hook)  # before the first backward (first step)
        self.tok_step = torch.zeros((), dtype=torch.float64, device=device)
        self.sums = torch.zeros(5, dtype=torch.float64, device=device)

    def start_micro(self, n_tokens: torch.Tensor) -> None:
        self.tok_step += n_tokens

    @torch.no_grad()
    def end_step(self) -> None:
        s = self.state.sums  # [|local|^2, |averaged|^2, -]: summed over buckets by the hook
        one = torch.ones_like(s[0])
        self.sums += torch.stack([s[0], s[1], one, self.tok_step, self.tok_step * self.world])
        s.zero_()
        self.tok_step.zero_()

    def remove(self) -> None:
        pass  # DDP cannot unregister a comm hook; it keeps all-reducing as the default hook does


def _find_ddp(model: torch.nn.Module) -> torch.nn.Module | None:
    """The ``DistributedDataParallel`` wrapping ``model``: callbacks get the bare model, and the Trainer
    keeps the wrapper to itself, so look for it once among the live objects."""
    import gc

    from torch.nn.parallel import DistributedDataParallel

    for o in gc.get_objects():
        try:
            if isinstance(o, DistributedDataParallel) and model in (
                o.module,
                getattr(o.module, "_orig_mod", None),
            ):
                return o
        except Exception:  # exotic objects whose isinstance or attributes raise
            continue
    return None


class ScalingLawCallback(TrainerCallback, ExportableState):
    def __init__(
        self,
        run_dir: str,
        *,
        tolerance: float | None = None,
        min_progress: float = 0.2,
        fit_every: int = 1,
        token_stats: bool = True,
        gns: bool = True,
        nll_bins: int = 32,
        pos_buckets: int = 8,
        metrics_offset: int | None = None,
        tokens: float = 0.0,
        gns_state: dict | None = None,
    ) -> None:
        self.run_dir = str(run_dir)
        self.tolerance, self.min_progress, self.fit_every = tolerance, min_progress, fit_every
        self.token_stats, self.gns, self.nll_bins, self.pos_buckets = token_stats, gns, nll_bins, pos_buckets
        self.metrics_offset, self.tokens, self.gns_state = metrics_offset, float(tokens), gns_state
        self.stream: MetricsStream | None = None
        self.fitter = None
        self.stats: TokenStats | None = None
        self.probe: _GradProbe | _DDPProbe | None = None
        self.tracker = NoiseScaleTracker(decay=0.9)
        self._hooks: list = []
        self._fused_out: Any = None
        self._last_flush = time.perf_counter()
        self._last_tokens = 0.0
        self.stopped_early = False
        self._setup_done = False

    # ------------------------------------------------------------ ExportableState
    def state(self) -> dict:
        offset = self.stream.flush() if self.stream is not None else self.metrics_offset
        return {
            "args": {
                "run_dir": self.run_dir, "tolerance": self.tolerance, "min_progress": self.min_progress,
                "fit_every": self.fit_every, "token_stats": self.token_stats, "gns": self.gns,
                "nll_bins": self.nll_bins, "pos_buckets": self.pos_buckets,
            },
            "attributes": {"metrics_offset": offset, "tokens": self.tokens, "gns_state": self.tracker.state_dict()},
        }  # fmt: skip

    # ------------------------------------------------------------ fused loss
    def fused_loss(self, model: torch.nn.Module):
        """A ``compute_loss_func`` that computes the loss with ``ops.linear_cross_entropy`` from the final
        hidden states: the output head is replaced by a capture, so no (B, T, V) logits are made (the
        model's ``logits`` output is then an empty (B, T, 0) tensor)."""
        from scaling_train.ops import linear_cross_entropy

        head = model.get_output_embeddings()
        cap: dict[str, torch.Tensor] = {}

        def capture(hidden: torch.Tensor) -> torch.Tensor:
            cap["h"] = hidden
            return hidden[..., :0]  # (B, T, 0): nothing of size V

        head.forward = capture

        def compute_loss(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
            h = cap.pop("h")[:, :-1]  # (B, T-1, H): position t predicts label t+1
            y = labels[:, 1:].contiguous()
            out = linear_cross_entropy(h, head.weight, y, bias=getattr(head, "bias", None), reduction="sum")
            self._fused_out = (out, y)
            n = num_items_in_batch if num_items_in_batch is not None else (y != -100).sum()
            return out.loss / n

        self._fused = True
        return compute_loss

    # ------------------------------------------------------------ hooks
    def _forward_hook(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if not module.training:
            return
        labels = kwargs.get("labels")
        n_tok = None
        if self._fused_out is not None:
            pass  # stats are taken in on_substep/step from the fused output (computed after forward)
        elif labels is not None and self.stats is not None:
            logits = output["logits"] if isinstance(output, dict) else output.logits
            if logits.shape[-1] > 0:
                nll = self.stats.update_logits(logits.detach(), labels)
                del nll
        if labels is None:
            labels = kwargs.get("input_ids")
        if labels is not None:
            n_tok = (labels[:, 1:] != -100).sum().double()
        if self.probe is not None and n_tok is not None:
            self.probe.start_micro(n_tok)

    def _consume_fused(self) -> None:
        if self._fused_out is not None and self.stats is not None:
            out, y = self._fused_out
            self.stats.update_lce(out, y)
        self._fused_out = None

    # ------------------------------------------------------------ callback events
    def on_step_begin(self, args, state, control, model=None, lr_scheduler=None, **kw):
        # Set up at the first step, not in on_train_begin: a resumed Trainer restores its state and
        # replaces this callback by a new instance (ExportableState) only after on_train_begin.
        if self._setup_done:
            return
        if state.is_world_process_zero:
            self._setup(args, state, model, lr_scheduler)
        else:  # other ranks write nothing, but under DDP their comm hook must match rank 0's
            self._setup_done = True
            self.probe = self._ddp_probe(args, model, next(model.parameters()).device)

    def _setup(self, args, state, model, lr_scheduler) -> None:
        self._setup_done = True
        run_dir = Path(self.run_dir)
        dev = next(model.parameters()).device
        accum = args.gradient_accumulation_steps
        lr = self._lr_schedule(args, state, lr_scheduler)
        seq = getattr(getattr(model, "config", None), "n_positions", None)
        write_run_meta(
            run_dir, total_steps=state.max_steps, lr=lr, params=count_params(model), tokens_per_step=None,
            extra={"source": "transformers.Trainer", "gradient_accumulation_steps": accum, "n_positions": seq},
        )  # fmt: skip
        from scaling_train.fitter.sink import FitterSink

        self.fitter = FitterSink(run_dir, every=self.fit_every)
        self.stream = MetricsStream(run_dir, sinks=[self.fitter])
        if state.global_step > 0 and self.metrics_offset is None:
            # restore_callback_states_from_checkpoint=False (HF's default): take our state from the
            # checkpoint's trainer_state.json anyway, or else cut after the checkpoint's step
            saved = (getattr(state, "stateful_callbacks", None) or {}).get(type(self).__name__)
            attrs = (saved[0] if isinstance(saved, list) else saved or {}).get("attributes", {})
            self.metrics_offset = attrs.get("metrics_offset")
            self.tokens = float(attrs.get("tokens", self.tokens))
            self.gns_state = attrs.get("gns_state", self.gns_state)
            if self.metrics_offset is None:
                self.metrics_offset = offset_after_step(self.stream.path, state.global_step)
        if state.global_step > 0:
            self.stream.truncate(int(self.metrics_offset))  # resumed: drop rows written after the checkpoint
        elif state.global_step == 0 and self.stream.path.stat().st_size > 0:
            self.stream.truncate(0)  # a fresh start in an old folder
            self.tokens = 0.0
        if self.gns_state:
            self.tracker.load_state_dict(self.gns_state)
        if self.token_stats:
            self.stats = TokenStats(n_bins=self.nll_bins, pos_buckets=self.pos_buckets, device=dev)
        if args.world_size > 1:
            self.probe = self._ddp_probe(args, model, dev)
        elif self.gns and accum >= 2:
            self.probe = _GradProbe(model, dev)
        elif self.gns:
            warnings.warn(
                f"ScalingLawCallback: gradient noise scale off: gradient_accumulation_steps={accum} < 2 in "
                "one process (it needs two batch sizes: micro-batch and step)",
                stacklevel=2,
            )
        self._hooks.append(model.register_forward_hook(self._forward_hook, with_kwargs=True))
        self._last_tokens = self.tokens

    def _ddp_probe(self, args, model, dev) -> _DDPProbe | None:
        if not self.gns:
            return None
        ddp = _find_ddp(model)
        if ddp is None:
            warnings.warn(
                f"ScalingLawCallback: gradient noise scale off: world_size={args.world_size} but the model is "
                "not wrapped in DistributedDataParallel (FSDP and DeepSpeed are not supported)",
                stacklevel=2,
            )
            return None
        try:
            return _DDPProbe(ddp, dev, args.world_size)
        except RuntimeError as e:  # e.g. a comm hook is already registered (DDP allows one)
            warnings.warn(f"ScalingLawCallback: gradient noise scale off: {e}", stacklevel=2)
            return None

    @staticmethod
    def _lr_schedule(args, state, sched) -> list[float]:
        T = state.max_steps
        lambdas = getattr(sched, "lr_lambdas", None)
        base = getattr(sched, "base_lrs", [args.learning_rate])[0]
        if lambdas:
            return [float(base * lambdas[0](k)) for k in range(T)]
        return [float(args.learning_rate)] * T

    def on_substep_end(self, args, state, control, **kw):
        self._consume_fused()

    def on_pre_optimizer_step(self, args, state, control, **kw):
        self._consume_fused()
        if self.probe is not None:
            self.probe.end_step()
            if self.stream is None:  # not rank 0: nothing reads the sums
                self.probe.sums.zero_()

    def on_log(self, args, state, control, logs=None, **kw):
        if self.stream is None or not logs or "loss" not in logs:
            if self.stream is not None and logs and "eval_loss" in logs:
                self.stream.write(
                    {
                        "step": state.global_step,
                        "tokens": self.tokens,
                        "eval_loss": logs["eval_loss"],
                        "kind": "eval",
                    }
                )
                self.stream.flush()
            return
        parts = [
            t
            for t in (self.stats.values() if self.stats else None, self.probe.sums if self.probe else None)
            if t is not None
        ]
        vals = torch.cat(parts).tolist() if parts else []  # sync: one host transfer per logged row
        row: dict[str, Any] = {"step": state.global_step, "loss": float(logs["loss"])}
        for k in ("learning_rate", "grad_norm"):
            if k in logs:
                row["lr" if k == "learning_rate" else k] = float(logs[k])
        if self.stats is not None:
            row.update(self.stats.summarize(vals[: self.stats.size]))
            self.stats.reset()
            vals = vals[self.stats.size :]
        if self.probe is not None:
            s_small, s_big, n, t0, tN = vals[:5]
            if n > 0:
                row.update(self.tracker.summarize([s_small, s_big, n], t0 / n, tN / n))
            self.probe.sums.zero_()
        seen = getattr(state, "num_input_tokens_seen", 0) or 0
        self.tokens = float(seen) if seen else self.tokens + row.get("tok_count", 0.0)
        row["tokens"] = self.tokens
        now = time.perf_counter()
        row["tokens_per_s"] = (self.tokens - self._last_tokens) / max(now - self._last_flush, 1e-9)
        row["time"] = time.time()
        self._last_flush, self._last_tokens = now, self.tokens
        self.stream.write(row)
        self.stream.flush()  # durable, then the in-process fitter refits
        pred = self.fitter.prediction if self.fitter is not None else None
        if self.tolerance is not None and pred and pred.get("low") is not None and state.max_steps:
            width = pred["high"] - pred["low"]
            if (
                math.isfinite(width)
                and width < self.tolerance
                and state.global_step >= self.min_progress * state.max_steps
            ):
                control.should_training_stop = True
                self.stopped_early = True

    def on_train_end(self, args, state, control, **kw):
        if self.stream is None:
            return
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        if self.probe is not None:
            self.probe.remove()
        self.stream.flush()
        done = {"steps": state.global_step, "tokens": self.tokens, "stopped_early": self.stopped_early}
        if state.global_step >= state.max_steps:
            atomic_write(Path(self.run_dir) / "DONE", json.dumps(done))
        self.stream.close()  # the fitter's last refit sees DONE
        self.stream = None
