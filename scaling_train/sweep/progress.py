"""Progress lines while a sweep runs: which run, its step, its loss and the fitter's predicted final loss.

Read from the run folder only (the contract between train, fitter and sweep): the last complete line of
``RUN/metrics.jsonl`` (the file's tail, never the whole file) and ``RUN/predictions.json``.

    [sweep] N9.5e5-D4.8e5-B16-lr1.9e-3-s0-e72a9b0c step 180/469 (38%) loss 4.412 | predicted final 3.711 [3.62, 3.80]
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from scaling_train.metrics.jsonl import finite_number, read_jsonl
from scaling_train.run_folder import METRICS, PREDICTIONS

EVERY_S = 30.0
"""Seconds between two rounds of progress lines (one line per run in flight)."""
TAIL_BYTES = 8192


def last_row(path: Path) -> dict[str, Any] | None:
    """The last complete row of ``path`` with a step, read from its last ``TAIL_BYTES`` only (``read_jsonl``
    from there: the line the tail starts inside is malformed and skipped, a torn last line left out)."""
    try:
        start = max(0, path.stat().st_size - TAIL_BYTES)
    except OSError:
        return None
    rows = [r for r in read_jsonl(path, start).rows if "step" in r]
    return rows[-1] if rows else None


def progress_line(run_dir: str | Path, name: str, total_steps: int) -> str | None:
    """One line for a run in flight, or None before its first metrics row."""
    run_dir = Path(run_dir)
    row = last_row(run_dir / METRICS)
    if row is None:
        return None
    step = int(row["step"])
    loss = finite_number(row.get("loss"))
    line = f"[sweep] {name} step {step}/{total_steps} ({step / max(total_steps, 1):.0%})"
    line += f" loss {loss:.4g}" if loss is not None else ""
    try:
        pred = json.loads((run_dir / PREDICTIONS).read_text())
    except (OSError, ValueError):
        pred = {}
    p, lo, hi = (finite_number(pred.get(k)) for k in ("loss", "low", "high"))
    # metrics.law_loss: eval: the observed and predicted losses are validation losses
    val = pred.get("law_loss") == "eval_loss"
    obs = finite_number(pred.get("observed_loss"))
    if val and obs is not None:
        line += f", val loss {obs:.4g} at step {int(pred.get('step') or 0)}"
    if p is not None and pred.get("status") == "running":
        line += f" | predicted final {'val loss ' if val else ''}{p:.4g}" + (
            f" [{lo:.4g}, {hi:.4g}]" if lo is not None and hi is not None else ""
        )
    return line


class Reporter:
    """A thread that says ``progress_line`` for every run in ``active()`` each ``every_s`` seconds."""

    def __init__(
        self, active: Callable[[], Iterable[tuple[str, str, int]]], say=print, every_s: float = EVERY_S
    ) -> None:
        self.active, self.say, self.every_s = active, say, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sweep-progress", daemon=True)

    def __enter__(self) -> Reporter:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            for name, run_dir, total in list(self.active()):
                line = progress_line(run_dir, name, total)
                if line:
                    self.say(line)
