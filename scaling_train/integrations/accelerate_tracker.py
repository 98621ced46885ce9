"""``ScalingLawTracker``: an accelerate ``GeneralTracker`` writing the run folder the fitter reads.

    tracker = ScalingLawTracker("runs/my_run", total_steps=1000, lr_schedule=[...], params=n_non_embedding)
    accelerator = Accelerator(log_with=[tracker])
    accelerator.init_trackers("my_project")
    accelerator.log({"loss": loss, "tokens": tokens_seen}, step=step)   # step = optimizer steps done
    accelerator.end_training()

Rows go through a ``MetricsStream`` (``metrics.jsonl`` durable first) and an in-process fitter that writes
``predictions.json``; ``prediction`` holds the latest one. Rows with ``step`` <= the last step already in
the file are dropped, so a resumed loop that logs the same steps again writes each step once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from accelerate.tracking import GeneralTracker, on_main_process

from scaling_train._io import atomic_write
from scaling_train.fitter.sink import FitterSink
from scaling_train.integrations.hf import write_run_meta
from scaling_train.metrics.jsonl import read_jsonl
from scaling_train.metrics.stream import MetricsStream


class ScalingLawTracker(GeneralTracker):
    name = "scaling_law"
    requires_logging_directory = False
    main_process_only = True

    @on_main_process
    def __init__(
        self, run_dir: str | Path, *, total_steps: int, lr_schedule: list[float], params: int | dict,
        tokens_per_step: float | None = None, fit_every: int = 1,
    ) -> None:  # fmt: skip
        super().__init__()
        if len(lr_schedule) != total_steps:
            raise ValueError(f"len(lr_schedule)={len(lr_schedule)} must equal total_steps={total_steps}")
        self.run_dir = Path(run_dir)
        p = params if isinstance(params, dict) else {"non_embedding": int(params), "total": int(params)}
        write_run_meta(self.run_dir, total_steps=total_steps, lr=[float(x) for x in lr_schedule], params=p,
                       tokens_per_step=tokens_per_step, extra={"source": "accelerate"})  # fmt: skip
        self.total_steps = total_steps
        self.fitter = FitterSink(self.run_dir, every=fit_every)
        self.stream = MetricsStream(self.run_dir, sinks=[self.fitter])
        rows = read_jsonl(self.stream.path).rows
        self.last_step = max([int(r.get("step", 0)) for r in rows] or [0])

    @property
    def tracker(self) -> MetricsStream:
        return self.stream

    @property
    def prediction(self) -> dict[str, Any] | None:
        return self.fitter.prediction

    @on_main_process
    def store_init_configuration(self, values: dict) -> None:
        atomic_write(self.run_dir / "hparams.json", json.dumps(values, default=str))

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
        self.stream.write(row)
        self.stream.flush()
        self.last_step = step

    @on_main_process
    def finish(self) -> None:
        if self.last_step >= self.total_steps:
            atomic_write(self.run_dir / "DONE", json.dumps({"steps": self.last_step}))
        self.stream.close()
