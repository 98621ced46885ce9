"""The run folder, the contract between training and everything that reads its results: its file names,
how run folders are found under a sweep, the one rule for metrics rows by step, run names and task-row keys.

    RUN/config.yaml  lr_schedule.json  metrics.jsonl  samples.jsonl  evals.jsonl  checkpoints/  DONE
        STOP  STOPPED  STOPPED.<n>.json  predictions.json  predictions.jsonl  .lock  attempts.jsonl
        cbs/  wandb_run.json  hparams.json

Every package names these files through the constants below (``tests/test_run_folder.py`` scans for
literals); the table of who writes and who reads each one is in ``docs/architecture.md`` ("The run folder").
No torch, no numpy, nothing of the package but ``run_names``: every layer above may import it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from scaling_train.run_names import NAME_RE, fmt_e, parse_run_name, run_name

__all__ = [
    "ATTEMPTS", "CBS", "CBS_RESULTS", "CHECKPOINTS", "CHECKPOINT_RE", "CONFIG", "DONE", "EVALS", "EVAL_TIME_KEY",
    "HPARAMS", "LOCK", "LR_SCHEDULE", "METRICS", "NAME_RE", "NOT_RUNS", "PREDICTIONS", "PREDICTIONS_LOG",
    "SAMPLES", "STOP", "STOPPED", "STOPPED_ARCHIVES", "TASK_PREFIX", "WANDB_DIR", "WANDB_RUN", "checkpoint_file",
    "checkpoint_steps", "find_runs", "fmt_e", "has_task_key", "is_task_key", "parse_run_name", "parse_task_key",
    "put_row", "rows_by_step", "run_name", "stopped_archive", "task_key",
]  # fmt: skip

# ------------------------------------------------------------------------------------------- file names
CONFIG = (
    "config.yaml"  # trainer, integrations.meta: the resolved config and its `resolved` block (N, steps, ...)
)
LR_SCHEDULE = "lr_schedule.json"  # trainer, integrations.meta: JSON list, the planned LR of every step
METRICS = "metrics.jsonl"  # metrics.MetricsStream: one row per flush (step, loss, ..., task/<name>/<metric>)
SAMPLES = (
    "samples.jsonl"  # trainer at each eval: per-document log-likelihoods (sample, tokens, nll_sum, step)
)
EVALS = "evals.jsonl"  # evals.EvalCallback: per-item records, one line per (step, task)
CHECKPOINTS = "checkpoints"  # train.checkpoint: folder of step-<8 digits>.pt (+ .sha256), atomic
DONE = "DONE"  # trainer, integrations: JSON summary (final_loss, ...); present = finished, never run again
STOP = "STOP"  # fitter's adaptive policy or a user: JSON stop request, read by the trainer at its next flush
STOPPED = "STOPPED"  # trainer: JSON record of a stop on request; present without DONE = stopped, resumable
STOPPED_ARCHIVES = (
    "STOPPED.*.json"  # trainer.archive_stopped: earlier stops' records, kept on --resume-stopped
)
PREDICTIONS = "predictions.json"  # fitter: the latest final-loss prediction (atomic), with its curve and band
PREDICTIONS_LOG = "predictions.jsonl"  # fitter: every prediction it published, as it was made
LOCK = ".lock"  # sweep.state: JSON {host, pid, token, heartbeat}, created with O_EXCL; one executor per run
ATTEMPTS = "attempts.jsonl"  # sweep.state: one row per attempt {attempt, start, end, rc, host[, stopped]}
CBS = "cbs"  # `scaling-train cbs`: folder of the run's branch run folders (never runs of the sweep)
CBS_RESULTS = "cbs.json"  # `scaling-train cbs`: RUN/cbs/cbs.json, the branch measurements
WANDB_RUN = "wandb_run.json"  # metrics.WandbSink: the W&B run id, so a resume continues the same W&B run
WANDB_DIR = "wandb"  # W&B's own folder (wandb.init(dir=RUN)); never a run
HPARAMS = "hparams.json"  # integrations.accelerate_tracker: the hyperparameters accelerate hands the tracker

CHECKPOINT_RE = re.compile(r"step-(\d{8})\.pt$")
"""A checkpoint file's name in ``RUN/checkpoints``; group 1 is its step."""

NOT_RUNS = frozenset({WANDB_DIR, CHECKPOINTS, CBS, "logs"})
"""Folder names under a sweep that neither are nor hold its runs: W&B's folder, a run's checkpoints, a run's
branches (``scaling-train cbs``) and the sweep's ``logs/``."""


def stopped_archive(n: int) -> str:
    """The name of the n-th archived stop record (n = 1, 2, ...): ``STOPPED.<n>.json``."""
    return f"{STOPPED}.{n}.json"


def checkpoint_file(step: int) -> str:
    """``step-00000100.pt`` for step 100 (zero-padded to 8 digits, so names sort by step)."""
    return f"step-{step:08d}.pt"


def checkpoint_steps(run_dir: str | Path) -> list[int]:
    """Steps of the checkpoints in ``RUN/checkpoints``, ascending; [] without the folder."""
    d = Path(run_dir) / CHECKPOINTS
    if not d.is_dir():
        return []
    return sorted(int(m.group(1)) for p in d.iterdir() if (m := CHECKPOINT_RE.search(p.name)))


# ------------------------------------------------------------------------------------------- discovery
def find_runs(sweep_dir: str | Path, *, markers: tuple[str, ...] = (CONFIG,)) -> list[Path]:
    """Run folders under ``sweep_dir``, sorted: children or grandchildren holding one of ``markers`` (the
    fitter: ``config.yaml``; the report also shows a folder with only ``metrics.jsonl``), none inside a
    ``NOT_RUNS`` folder below ``sweep_dir``; ``[sweep_dir]`` when none is found and it holds ``config.yaml``
    itself (a single run folder)."""
    sweep_dir = Path(sweep_dir)
    found = {p.parent for m in markers for depth in ("*", "*/*") for p in sweep_dir.glob(f"{depth}/{m}")}
    runs = sorted(p for p in found if not NOT_RUNS & set(p.relative_to(sweep_dir).parts))
    if not runs and (sweep_dir / CONFIG).is_file():
        return [sweep_dir]
    return runs


# ------------------------------------------------------------------------------------------- rows by step
def put_row(rows: dict[int, Any], step: int, row: Any) -> None:
    """``rows[step] = row`` after dropping every row at or after ``step``: a run resumed from a checkpoint
    rewrites the steps after it, so a row for step s supersedes what an earlier attempt wrote from s on
    (the one rule every reader of ``metrics.jsonl`` keyed by step applies). Keys stay ascending in order, so a
    row past the last key (every row of a run that was never resumed) is appended without scanning the rest."""
    if rows and next(reversed(rows)) >= step:
        for s in [s for s in rows if s >= step]:
            del rows[s]
    rows[step] = row


def rows_by_step(
    rows: Iterable[dict[str, Any]],
    *,
    where: Callable[[dict[str, Any]], bool] | None = None,
    keep: Callable[[dict[str, Any]], Any] | None = None,
    into: dict[int, Any] | None = None,
) -> dict[int, Any]:
    """Metrics rows (as ``metrics.jsonl.read_jsonl`` gives them) keyed by step under ``put_row``'s rule, in
    ascending step order: rows without a ``step`` or failing ``where`` are skipped, ``keep`` maps a row to
    what is stored (default: the row), ``into`` continues an incremental reader's dict (returned)."""
    out: dict[int, Any] = {} if into is None else into
    for r in rows:
        if "step" in r and (where is None or where(r)):
            put_row(out, int(r["step"]), r if keep is None else keep(r))
    return out


# ------------------------------------------------------------------------------------------- task keys
TASK_PREFIX = "task/"
"""Metrics-row keys of the downstream evals: ``task/<name>/<metric>`` (``task_key``)."""
EVAL_TIME_KEY = f"{TASK_PREFIX}time_s"
"""Seconds the evals of one row took, all tasks together (not a task key: ``parse_task_key`` gives None)."""


def task_key(task: str, metric: str) -> str:
    """``task/<task>/<metric>``: the row key of one eval scalar (task names hold no '/')."""
    return f"{TASK_PREFIX}{task}/{metric}"


def parse_task_key(key: str) -> tuple[str, str] | None:
    """``task/<name>/<metric>`` -> (name, metric); None for other keys (``task/time_s`` included)."""
    if not key.startswith(TASK_PREFIX):
        return None
    rest = key[len(TASK_PREFIX) :]
    if "/" not in rest:
        return None
    name, metric = rest.split("/", 1)
    return name, metric


def is_task_key(key: Any) -> bool:
    """A key under ``task/`` (``EVAL_TIME_KEY`` included)."""
    return isinstance(key, str) and key.startswith(TASK_PREFIX)


def has_task_key(row: dict[str, Any]) -> bool:
    """The row carries eval scalars (``rows_by_step(..., where=has_task_key)``: the task rows)."""
    return any(is_task_key(k) for k in row)
