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
  transfer), the x-axis ``tokens`` from ``state.num_input_tokens_seen`` (or else the counted target
  tokens: rank 0's times the number of ranks);
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
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from scaling_train._io import atomic_write
from scaling_train.integrations.meta import count_params, write_run_meta
from scaling_train.integrations.watch import ModelWatcher, check_args, find_ddp, make_probe
from scaling_train.metrics.gns import NoiseScaleTracker
from scaling_train.metrics.stats import TokenStats
from scaling_train.metrics.stream import MetricsStream
from scaling_train.run_folder import DONE


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
        wandb: bool | None = None,
        metrics_offset: int | None = None,
        tokens: float = 0.0,
        gns_state: dict | None = None,
    ) -> None:
        check_args(
            "ScalingLawCallback", tolerance=tolerance, min_progress=min_progress, fit_every=fit_every,
            nll_bins=nll_bins, pos_buckets=pos_buckets,
        )  # fmt: skip
        self.run_dir = str(run_dir)
        self.tolerance, self.min_progress, self.fit_every = tolerance, min_progress, fit_every
        self.token_stats, self.gns, self.nll_bins, self.pos_buckets = token_stats, gns, nll_bins, pos_buckets
        self.wandb = wandb
        self.metrics_offset, self.tokens, self.gns_state = metrics_offset, float(tokens), gns_state
        self.stream: MetricsStream | None = None
        self.fitter = None
        self.watch: ModelWatcher | None = None  # statistics and noise-scale probe, made at the first step
        self.tracker = NoiseScaleTracker(decay=0.9)
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
                "nll_bins": self.nll_bins, "pos_buckets": self.pos_buckets, "wandb": self.wandb,
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
            if self.watch is not None:
                self.watch.fused_out = (out, y)  # statistics taken after this micro-batch's backward
            n = num_items_in_batch if num_items_in_batch is not None else (y != -100).sum()
            return out.loss / n

        return compute_loss

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
            if self.gns and args.world_size > 1:
                self._watch(args, model, stats=None, collects=False)

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
        self._mirror_to_wandb()
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
        stats = None
        if self.token_stats:
            stats = TokenStats(n_bins=self.nll_bins, pos_buckets=self.pos_buckets, device=dev)
        self._watch(args, model, stats=stats)
        self._last_tokens = self.tokens

    def _mirror_to_wandb(self) -> None:
        """Rows also go to the W&B run transformers' ``WandbCallback`` opened (``report_to="wandb"``), as
        ``scaling/*`` against ``train/global_step``: ``wandb=None`` when there is one, ``True`` insists."""
        if self.wandb is False:
            return
        from scaling_train.metrics.wandb_sink import WandbMirror, active_wandb_run

        run = active_wandb_run()
        if run is None:
            if self.wandb:
                warnings.warn(
                    "ScalingLawCallback(wandb=True): no active W&B run (add report_to='wandb' to the "
                    "TrainingArguments); rows go to metrics.jsonl only",
                    stacklevel=3,
                )
            return
        self.stream.add_sink(WandbMirror(run, self.run_dir))

    def _watch(self, args, model, *, stats: TokenStats | None, collects: bool = True) -> None:
        dev = next(model.parameters()).device
        probe = None
        if self.gns:
            ddp = find_ddp(model) if args.world_size > 1 else None
            probe = make_probe(
                model, dev, world_size=args.world_size, ddp=ddp, accum=args.gradient_accumulation_steps,
                who="ScalingLawCallback",
            )  # fmt: skip
        self.watch = ModelWatcher(
            model,
            dev,
            stats=stats,
            probe=probe,
            tracker=self.tracker,
            who="ScalingLawCallback",
            collects=collects,
        )

    @staticmethod
    def _lr_schedule(args, state, sched) -> list[float]:
        T = state.max_steps
        lambdas = getattr(sched, "lr_lambdas", None)
        base = getattr(sched, "base_lrs", [args.learning_rate])[0]
        if lambdas:
            return [float(base * lambdas[0](k)) for k in range(T)]
        return [float(args.learning_rate)] * T

    def on_substep_end(self, args, state, control, **kw):
        if self.watch is not None:
            self.watch.take_fused()

    def on_pre_optimizer_step(self, args, state, control, **kw):
        if self.watch is not None:
            self.watch.end_step()

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
        row: dict[str, Any] = {"step": state.global_step, "loss": float(logs["loss"])}
        for k in ("learning_rate", "grad_norm"):
            if k in logs:
                row["lr" if k == "learning_rate" else k] = float(logs[k])
        counted = 0.0
        if self.watch is not None:  # one host transfer for the statistics and the noise scale
            counted = self.watch.collect(row) * args.world_size  # rank 0's targets x the ranks
        seen = getattr(state, "num_input_tokens_seen", 0) or 0
        self.tokens = float(seen) if seen else self.tokens + counted
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
        if self.watch is not None:  # every rank: the forward hook and the gradient hooks go
            self.watch.remove()
            self.watch = None
        if self.stream is None:
            return
        self.stream.flush()
        done = {"steps": state.global_step, "tokens": self.tokens, "stopped_early": self.stopped_early}
        if state.global_step >= state.max_steps:
            atomic_write(Path(self.run_dir) / DONE, json.dumps(done))
        self.stream.close()  # the fitter's last refit sees DONE
        self.stream = None
