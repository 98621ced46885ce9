"""``MetricsStream``: rows of one run fan out to sinks, the run folder's ``metrics.jsonl`` first.

    stream = MetricsStream(run_dir, sinks=[WandbSink(...), FitterSink(run_dir)])
    stream.write(row)            # buffered
    offset = stream.flush()      # metrics.jsonl: write + flush + fsync, then the other sinks see the rows
    stream.truncate(offset)      # resume from a checkpoint: roll the file back, tell the sinks
    stream.close()

The JSONL file is the truth: sinks are fed only rows that are already durable, so a crash can lose a
sink's copy but never leave a sink ahead of the file. A sink that fails is disabled with one warning;
it never stops training.

Our trainer opens its stream with ``open_trainer_stream(trainer)``, which also registers the
``TrainerMetrics`` callback (device statistics and gradient noise scale, one host transfer per flush).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any, Protocol

import torch

from scaling_train.metrics.config import MetricsConfig
from scaling_train.metrics.gns import AccumGNSProbe, DDPGNSState, NoiseScaleTracker, ddp_gns_hook
from scaling_train.metrics.jsonl import JsonlWriter, read_jsonl
from scaling_train.metrics.stats import TokenStats


class Sink(Protocol):
    def log(self, rows: list[dict[str, Any]]) -> None:
        """Rows that are already durable in metrics.jsonl, in order."""

    def rollback(self, *, kept_step: int, logged_step: int) -> None:
        """The file was rolled back to ``kept_step`` (resume); rows up to ``logged_step`` were seen before."""

    def close(self) -> None: ...


class MetricsStream:
    """Buffered rows -> ``metrics.jsonl`` (append, flush, fsync) -> the other sinks, at each flush."""

    def __init__(
        self, run_dir: str | Path, sinks: list[Any] | tuple = (), *, filename: str = "metrics.jsonl"
    ) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / filename
        self.jsonl = JsonlWriter(self.path)
        self.sinks = list(sinks)
        self._pending: list[dict[str, Any]] = []

    def add_sink(self, sink: Any) -> None:
        self.sinks.append(sink)

    def write(self, row: dict[str, Any]) -> None:
        self.jsonl.write(row)
        self._pending.append(row)

    def flush(self) -> int:
        """Make pending rows durable, then hand them to the sinks; returns the file offset (resume point)."""
        offset = self.jsonl.flush()
        rows, self._pending = self._pending, []
        if rows:
            for sink in list(self.sinks):
                self._call(sink, "log", rows)
        return offset

    def truncate(self, offset: int) -> None:
        """Roll ``metrics.jsonl`` back to ``offset`` (a value ``flush`` returned) and tell the sinks."""
        self._pending.clear()
        self.jsonl.flush()
        # once per resume: the steps before the cut, and the last step any sink may have seen
        kept_step = max([int(r.get("step", 0)) for r in read_jsonl_prefix(self.path, offset)] or [0])
        logged_step = max([int(r.get("step", 0)) for r in read_jsonl(self.path, 0).rows] or [0])
        self.jsonl.truncate(offset)
        for sink in list(self.sinks):
            self._call(sink, "rollback", kept_step=kept_step, logged_step=logged_step)

    def close(self) -> None:
        self.flush()
        self.jsonl.close()
        for sink in list(self.sinks):
            self._call(sink, "close")

    def _call(self, sink: Any, name: str, *args: Any, **kw: Any) -> None:
        fn = getattr(sink, name, None)
        if fn is None:
            return
        try:
            fn(*args, **kw)
        except Exception as e:  # a sink must never stop training
            warnings.warn(
                f"metrics sink {type(sink).__name__}.{name} failed ({e!r}); sink disabled", stacklevel=2
            )
            if sink in self.sinks:
                self.sinks.remove(sink)


def read_jsonl_prefix(path: Path, offset: int) -> list[dict[str, Any]]:
    """Rows of the first ``offset`` bytes of a JSONL file."""
    import json

    with open(path, "rb") as f:
        data = f.read(offset)
    rows = []
    for line in data.split(b"\n"):
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if isinstance(r, dict):
            rows.append(r)
    return rows


# --------------------------------------------------------------------------------------------------
# our trainer


class TrainerMetrics:
    """Trainer callback: device statistics of every micro-batch and the noise scale, added to each row.

    Per micro-batch only device kernels run; ``on_flush`` reads everything with one ``.tolist()``."""

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


def open_trainer_stream(trainer: Any) -> MetricsStream:
    """The stream of our trainer's run folder with the sinks its config asks for (rank 0 only)."""
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
    if cfg.fit_in_process:
        from scaling_train.fitter.sink import FitterSink

        stream.add_sink(FitterSink(trainer.run_dir, every=cfg.fit_every))
    trainer.callbacks.append(TrainerMetrics(cfg))
    return stream
