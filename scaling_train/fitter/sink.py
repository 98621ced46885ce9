"""In-process fitter: a ``MetricsStream`` sink that refits this run's final-loss prediction.

It tails the sibling run folders (same parent) incrementally for references, like the fitter process,
and writes only this run's ``predictions.json``; the sweep law stays with ``scaling-train fit``.

Our trainer gets it as a sink factory, ``Trainer(cfg, sinks=[in_process_fitter])`` (``scaling-train train``
does that): the fitter sits above train, so the dependency points down from here, never up from train.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scaling_train.fitter.core import SweepFitter


class FitterSink:
    def __init__(self, run_dir: str | Path, *, every: int = 1) -> None:
        self.run_dir = Path(run_dir)
        self.every = max(1, every)
        self.fitter = SweepFitter(self.run_dir.parent, only=self.run_dir.name, log=lambda s: None)
        self._n = 0

    @property
    def prediction(self) -> dict[str, Any] | None:
        return self.fitter.predictions.get(self.run_dir.name)

    def log(self, rows: list[dict[str, Any]]) -> None:
        self._n += 1
        if self._n % self.every == 0:
            self.refit()

    def refit(self) -> dict[str, Any] | None:
        self.fitter.step()
        return self.prediction

    def rollback(self, *, kept_step: int, logged_step: int) -> None:
        pass  # the tail notices the rewritten file itself

    def close(self) -> None:
        self.refit()


def in_process_fitter(trainer: Any) -> FitterSink | None:
    """Sink factory for ``Trainer(cfg, sinks=[...])``: the in-process fitter of the trainer's run folder when
    its ``metrics.fit_in_process`` asks for it (refit every ``metrics.fit_every`` flushes), else None."""
    cfg = trainer.cfg.metrics
    return FitterSink(trainer.run_dir, every=cfg.fit_every) if cfg.fit_in_process else None
