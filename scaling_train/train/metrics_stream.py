"""Our trainer's side of the metrics stream: the ``TrainerMetrics`` callback (device statistics of every
micro-batch and the gradient noise scale, one host transfer per flush) and ``open_trainer_stream``.

It reads trainer internals (``micro_bs``, ``accum``, ``raw_model``, ``backend``, ``callbacks``), so it lives
in train; ``scaling_train.metrics`` keeps the trainer-independent parts (``MetricsStream``, the
accumulators, the noise-scale probes) that the integrations use too.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch

from scaling_train.callbacks import TrainerCallback
from scaling_train.metrics.config import MetricsConfig
from scaling_train.metrics.gns import AccumGNSProbe, DDPGNSState, NoiseScaleTracker, ddp_gns_hook
from scaling_train.metrics.stats import TokenStats
from scaling_train.metrics.stream import MetricsStream, Sink

SinkFactory = Callable[[Any], Sink | None]
"""``factory(trainer) -> Sink | None``: called on rank 0 when the stream opens; None = not for this run."""


class TrainerMetrics(TrainerCallback):
    """Trainer callback: device statistics of every micro-batch and the noise scale, added to each row.

    Per micro-batch only device kernels run; ``on_flush`` reads everything with one ``.tolist()``."""

    state_key = "TrainerMetrics"  # its checkpoint key since the first checkpoints (then the class name)

    def __init__(self, cfg: MetricsConfig) -> None:
        self.cfg = cfg
        self.stats: TokenStats | None = None
        self.probe: AccumGNSProbe | None = None
        self.ddp_state: DDPGNSState | None = None
        self.tracker = NoiseScaleTracker(decay=cfg.gns_decay)

    def on_train_begin(self, trainer: Any) -> None:
        dev = trainer.backend.device
        T = trainer.cfg.model.seq_len
        if self.cfg.token_stats:
            buckets = min(self.cfg.pos_buckets, T)
            self.stats = TokenStats(
                n_bins=self.cfg.nll_bins, nll_max=self.cfg.nll_max, pos_buckets=buckets, device=dev
            )
        if not self.cfg.gns:
            return
        world = trainer.backend.world_size
        if world > 1 and isinstance(trainer.model, torch.nn.parallel.DistributedDataParallel):
            self.ddp_state = DDPGNSState(local_tokens=trainer.micro_bs * trainer.accum * T, world_size=world)
            self.ddp_state.sums = self.ddp_state.sums.to(dev)
            trainer.model.register_comm_hook(self.ddp_state, ddp_gns_hook)
        elif world == 1:
            self.probe = AccumGNSProbe(
                trainer.raw_model.parameters(), accum=trainer.accum, micro_tokens=trainer.micro_bs * T,
                every=self.cfg.gns_every if trainer.accum >= 2 else self.cfg.gns_split_every,
                split=True, micro_seqs=trainer.micro_bs,
            )  # fmt: skip
            if not self.probe.enabled:
                trainer.log(
                    f"[metrics] gradient noise scale off: one micro-batch of {trainer.micro_bs} sequence per "
                    "step cannot be split in two (use train.batch_size >= 2)"
                )

    def state_dict(self) -> dict[str, Any]:
        """Saved in our trainer's checkpoints so the noise-scale EMAs continue across a resume."""
        return {"gns": self.tracker.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state["gns"])

    def split_micro_batch(self, trainer: Any, step: int) -> bool:
        """Asked by the trainer before each step: run a lone micro-batch as two halves (probe step)."""
        return self.probe is not None and self.probe.begin_step(step)

    def on_micro_batch(self, trainer: Any, out: Any, batch: Any) -> None:
        if self.stats is not None:
            self.stats.update_lce(out, batch.targets)
        if self.probe is not None:
            self.probe.after_backward()

    def on_before_step(self, trainer: Any, step: int) -> None:
        if self.probe is not None:
            self.probe.end_step()
        if self.ddp_state is not None:
            self.ddp_state.end_step()

    def on_flush(self, trainer: Any, row: dict[str, Any]) -> None:
        parts = []
        if self.stats is not None:
            parts.append(self.stats.values())
        gsrc = self.probe if self.probe is not None and self.probe.enabled else self.ddp_state
        if gsrc is not None:
            parts.append(gsrc.sums.to(parts[0].device) if parts else gsrc.sums)
        if not parts:
            return
        vals = torch.cat(parts).tolist()  # sync: one host transfer per flush for all stream statistics
        if self.stats is not None:
            row.update(self.stats.summarize(vals[: self.stats.size]))
            self.stats.reset()
            vals = vals[self.stats.size :]
        if gsrc is not None:
            row.update(self.tracker.summarize(vals[:3], gsrc.b_small, gsrc.b_big))
            gsrc.sums.zero_()


def open_trainer_stream(trainer: Any, sinks: Sequence[SinkFactory] = ()) -> MetricsStream:
    """The stream of our trainer's run folder (rank 0 only): the W&B sink its config asks for, then each
    ``sinks`` factory's sink (a factory returns None when the run's config does not ask for it).

    The in-process fitter is such a factory (``scaling_train.fitter.sink.in_process_fitter``), passed in by
    the command line (``scaling-train train``): the fitter sits above train, so train never imports it."""
    cfg: MetricsConfig = getattr(trainer.cfg, "metrics", None) or MetricsConfig()
    stream = MetricsStream(trainer.run_dir)
    if cfg.wandb.mode != "disabled":
        from scaling_train.config import to_dict
        from scaling_train.metrics.wandb_sink import WandbSink

        try:
            stream.add_sink(
                WandbSink(
                    trainer.run_dir, cfg.wandb, sweep=trainer.cfg.sweep, config=to_dict(trainer.cfg),
                    name=trainer.run_dir.name,
                )
            )  # fmt: skip
        except Exception as e:
            print(f"[metrics] W&B sink disabled: {e}", file=sys.stderr)
    for make in sinks:
        sink = make(trainer)
        if sink is not None:
            stream.add_sink(sink)
    if cfg.fit_in_process and not sinks:
        trainer.log(
            "[metrics] metrics.fit_in_process=true but no in-process fitter is wired: `scaling-train train` "
            "wires it; from Python use Trainer(cfg, sinks=[scaling_train.fitter.sink.in_process_fitter])"
        )
    trainer.callbacks.append(TrainerMetrics(cfg))
    return stream
