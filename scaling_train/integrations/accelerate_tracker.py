"""``ScalingLawTracker``: an accelerate ``GeneralTracker`` writing the run folder the fitter reads.

    tracker = ScalingLawTracker("runs/my_run", total_steps=1000, lr_schedule=[...], params=n_non_embedding)
    accelerator = Accelerator(log_with=[tracker])
    accelerator.init_trackers("my_project")
    accelerator.log({"loss": loss, "tokens": tokens_seen}, step=step)   # step = optimizer steps done
    accelerator.end_training()

Per-token statistics and the gradient noise scale, as the transformers callback gives them: call
``tracker.watch(model, optimizer)`` on every process after ``accelerator.prepare`` (under DDP every rank
registers the noise-scale comm hook). Each logged row then also carries ``tok_*`` (from the ``labels`` and
``logits`` of the model's forward, or what you pass to ``tracker.watcher.update_logits`` /
``update_lce``) and ``gns_*`` (one process: needs ``gradient_accumulation_steps >= 2``; DDP: rank 0's
step gradient vs the all-reduced one). ``accelerator.register_for_checkpointing(tracker)`` keeps the
noise-scale averages across a resume.

Create the tracker once the distributed state exists (on CPU ``PartialState(cpu=True)`` under torchrun;
GPUs are found by itself): accelerate's ``on_main_process`` decides at construction which process keeps it.

Rows go through a ``MetricsStream`` (``metrics.jsonl`` durable first) and an in-process fitter that writes
``predictions.json``; ``prediction`` holds the latest one. Rows with ``step`` <= the last step already in
the file are dropped, so a resumed loop that logs the same steps again writes each step once.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from accelerate.tracking import GeneralTracker, on_main_process

from scaling_train._io import atomic_write
from scaling_train.fitter.sink import FitterSink
from scaling_train.integrations.meta import write_run_meta
from scaling_train.integrations.watch import ModelWatcher, check_args, make_probe
from scaling_train.metrics.gns import NoiseScaleTracker
from scaling_train.metrics.jsonl import read_jsonl
from scaling_train.metrics.stats import TokenStats
from scaling_train.metrics.stream import MetricsStream
from scaling_train.run_folder import DONE, HPARAMS


class ScalingLawTracker(GeneralTracker):
    name = "scaling_law"
    requires_logging_directory = False
    main_process_only = True

    @on_main_process
    def __init__(
        self, run_dir: str | Path, *, total_steps: int, lr_schedule: list[float], params: int | dict,
        tokens_per_step: float | None = None, fit_every: int = 1, wandb: bool | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        check_args("ScalingLawTracker", fit_every=fit_every)
        if len(lr_schedule) != total_steps:
            raise ValueError(f"len(lr_schedule)={len(lr_schedule)} must equal total_steps={total_steps}")
        self.run_dir = Path(run_dir)
        self.wandb = wandb
        self._mirror_checked = wandb is False
        p = params if isinstance(params, dict) else {"non_embedding": int(params), "total": int(params)}
        write_run_meta(self.run_dir, total_steps=total_steps, lr=[float(x) for x in lr_schedule], params=p,
                       tokens_per_step=tokens_per_step, extra={"source": "accelerate"})  # fmt: skip
        self.total_steps = total_steps
        self.fitter = FitterSink(self.run_dir, every=fit_every)
        self.stream = MetricsStream(self.run_dir, sinks=[self.fitter])
        rows = read_jsonl(self.stream.path).rows
        self.last_step = max([int(r.get("step", 0)) for r in rows] or [0])

    watcher: ModelWatcher | None = None
    gns_tracker: NoiseScaleTracker | None = None
    _world = 1

    def watch(
        self, model: torch.nn.Module, optimizer: Any = None, *, token_stats: bool = True, gns: bool = True,
        nll_bins: int = 32, pos_buckets: int = 8,
    ) -> ModelWatcher:  # fmt: skip
        """Hook the prepared ``model`` (and ``optimizer``, which marks optimizer steps for the noise scale).
        Call on every process; only the main one keeps statistics."""
        from accelerate.state import PartialState
        from torch.nn.parallel import DistributedDataParallel

        check_args("ScalingLawTracker.watch", nll_bins=nll_bins, pos_buckets=pos_buckets)
        st = PartialState()
        ddp = model if isinstance(model, DistributedDataParallel) else None
        inner = ddp.module if ddp is not None else model
        inner = getattr(inner, "_orig_mod", inner)  # torch.compile
        dev = next(inner.parameters()).device
        self._world = st.num_processes
        self.gns_tracker = self.gns_tracker or NoiseScaleTracker(decay=0.9)
        probe = None
        if gns and optimizer is None:
            warnings.warn(
                "ScalingLawTracker.watch: gradient noise scale off: pass the optimizer", stacklevel=2
            )
        elif gns:
            probe = make_probe(
                inner, dev, world_size=st.num_processes, ddp=ddp, accum=None, who="ScalingLawTracker"
            )
        main = st.is_main_process
        stats = (
            TokenStats(n_bins=nll_bins, pos_buckets=pos_buckets, device=dev) if token_stats and main else None
        )
        self.watcher = watcher = ModelWatcher(
            inner,
            dev,
            stats=stats,
            probe=probe,
            tracker=self.gns_tracker,
            who="ScalingLawTracker",
            collects=main,
        )
        if probe is not None:
            # the wrapped optimizer's own step runs once per optimizer step (accelerate skips it on
            # accumulation micro-batches), after the last backward
            getattr(optimizer, "optimizer", optimizer).register_step_pre_hook(lambda *a: watcher.end_step())
        return watcher

    def state_dict(self) -> dict[str, Any]:
        """For ``accelerator.register_for_checkpointing(tracker)``: the noise-scale averages."""
        return {"gns": self.gns_tracker.state_dict() if self.gns_tracker is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("gns") is not None:
            self.gns_tracker = self.gns_tracker or NoiseScaleTracker(decay=0.9)
            self.gns_tracker.load_state_dict(state["gns"])

    @property
    def tracker(self) -> MetricsStream:
        return self.stream

    @property
    def prediction(self) -> dict[str, Any] | None:
        return self.fitter.prediction

    @on_main_process
    def store_init_configuration(self, values: dict) -> None:
        atomic_write(self.run_dir / HPARAMS, json.dumps(values, default=str))

    @on_main_process
    def log(self, values: dict, step: int | None = None, **kwargs: Any) -> None:
        if step is None or "loss" not in values:
            raise ValueError(
                f"ScalingLawTracker.log needs step= and a 'loss' value; got step={step}, keys {sorted(values)}"
            )
        if step <= self.last_step:
            return  # already in metrics.jsonl (a resumed loop logging the same step again)
        row = {"step": int(step)}
        row.update(
            {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) or hasattr(v, "item")}
        )
        if self.watcher is not None:
            self.watcher.collect(row)  # one host transfer for the statistics and the noise scale
            if "tokens" not in row:  # counted target tokens of rank 0, times the ranks
                row["tokens"] = self.watcher.tok_count * self._world
        if not self._mirror_checked:
            self._mirror_to_wandb()
        self.stream.write(row)
        self.stream.flush()
        self.last_step = step

    def _mirror_to_wandb(self) -> None:
        """Rows also go to the W&B run of accelerate's W&B tracker (``log_with=["wandb", tracker]``) as
        ``scaling/*`` at the same step: ``wandb=None`` when there is one, ``True`` insists."""
        from scaling_train.metrics.wandb_sink import WandbMirror, active_wandb_run

        self._mirror_checked = True
        run = active_wandb_run()
        if run is not None:
            self.stream.add_sink(WandbMirror(run, self.run_dir, step_key=None))
        elif self.wandb:
            warnings.warn(
                "ScalingLawTracker(wandb=True): no active W&B run (add 'wandb' to log_with); rows go to "
                "metrics.jsonl only",
                stacklevel=3,
            )

    @on_main_process
    def finish(self) -> None:
        if self.last_step >= self.total_steps:
            atomic_write(self.run_dir / DONE, json.dumps({"steps": self.last_step}))
        self.stream.close()
        if self.watcher is not None:
            self.watcher.remove()
