"""``MetricsStream``: rows of one run fan out to sinks, the run folder's ``metrics.jsonl`` first.

    stream = MetricsStream(run_dir, sinks=[WandbSink(...), FitterSink(run_dir)])  # any Sink
    stream.write(row)            # buffered
    offset = stream.flush()      # metrics.jsonl: write + flush + fsync, then the other sinks see the rows
    stream.truncate(offset)      # resume from a checkpoint: roll the file back, tell the sinks
    stream.close()

The JSONL file is the truth: sinks are fed only rows that are already durable, so a crash can lose a
sink's copy but never leave a sink ahead of the file. A sink that fails is disabled with one warning;
it never stops training.

Our trainer's side (the ``TrainerMetrics`` callback and ``open_trainer_stream``) lives in
``scaling_train/train/metrics_stream.py``: metrics sits below train and the fitter and imports neither.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Protocol

from scaling_train.metrics.jsonl import JsonlWriter, read_jsonl
from scaling_train.run_folder import METRICS


class Sink(Protocol):
    def log(self, rows: list[dict[str, Any]]) -> None:
        """Rows that are already durable in metrics.jsonl, in order."""

    def rollback(self, *, kept_step: int, logged_step: int) -> None:
        """The file was rolled back to ``kept_step`` (resume); rows up to ``logged_step`` were seen before."""

    def close(self) -> None: ...


class MetricsStream:
    """Buffered rows -> ``metrics.jsonl`` (append, flush, fsync) -> the other sinks, at each flush."""

    def __init__(
        self, run_dir: str | Path, sinks: list[Any] | tuple = (), *, filename: str = METRICS
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
