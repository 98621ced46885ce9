"""Run state on the shared file system: the lock that keeps a run from executing twice at once, the
DONE marker (written by the trainer), and the attempt log that retries and the sweep summary read.

    <run_dir>/.lock           JSON {host, pid, token, started, heartbeat}; created with O_EXCL
    <run_dir>/DONE            JSON summary (trainer); present = finished, never run again
    <run_dir>/STOP            JSON stop request (the adaptive fitter, or a user): the trainer stops at its next
                              flush (``scaling_train.train.trainer`` docstring)
    <run_dir>/STOPPED         JSON record of that stop (trainer): present without DONE = "stopped", finished for
                              now, never relaunched by a sweep until ``resume_stopped`` (``--resume-stopped``)
    <run_dir>/STOPPED.<n>.json  the record of an earlier stop, archived when the run was resumed
    <run_dir>/attempts.jsonl  one row per attempt: {attempt, start, end, rc, host[, stopped: true]}

A lock is stale (and may be taken over) when its heartbeat is older than ``stale_s`` or when it was
taken on this host by a process that no longer exists (a killed sweep is resumable at once).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from scaling_train.run_folder import ATTEMPTS, DONE, LOCK, STOP, STOPPED, checkpoint_steps

STATUSES = ("done", "running", "stopped", "failed", "partial", "pending")
FINISHED_FOR_NOW = ("done", "stopped")
"""Statuses a sweep never relaunches on its own (a stopped run only with ``--resume-stopped``)."""


def is_done(run_dir: str | Path) -> bool:
    return (Path(run_dir) / DONE).is_file()


def is_stopped(run_dir: str | Path) -> bool:
    """Stopped on request at a checkpoint (``STOPPED`` present, no ``DONE``): resumable, not finished."""
    run_dir = Path(run_dir)
    return (run_dir / STOPPED).is_file() and not is_done(run_dir)


def is_finished_for_now(run_dir: str | Path) -> bool:
    """DONE or stopped: what every launcher skips."""
    return is_done(run_dir) or is_stopped(run_dir)


def resume_stopped(run_dir: str | Path) -> Path | None:
    """Make a stopped run resumable to its end: remove its ``STOP`` request and archive its ``STOPPED``
    record as ``STOPPED.<n>.json``; returns the archive's path, None when the run was not stopped. The next
    launch trains it from the stop's checkpoint to the end."""
    run_dir = Path(run_dir)
    if not is_stopped(run_dir):
        return None
    from scaling_train.train.trainer import archive_stopped  # local: keeps this module free of torch

    (run_dir / STOP).unlink(missing_ok=True)  # first: a run started in between archives STOPPED itself
    return archive_stopped(run_dir)


def status(run_dir: str | Path) -> str:
    """done | running | stopped (STOPPED, no DONE) | failed (last attempt failed) | partial (has
    checkpoints) | pending."""
    run_dir = Path(run_dir)
    if is_done(run_dir):
        return "done"
    info = read_lock(run_dir)
    if info is not None and not lock_is_stale(info, stale_s=float("inf")):
        return "running"
    if is_stopped(run_dir):
        return "stopped"
    att = attempts(run_dir)
    if att and att[-1].get("rc") not in (0, None):
        return "failed"
    if checkpoint_steps(run_dir):
        return "partial"
    return "pending"


def read_lock(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / LOCK).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_is_stale(info: dict[str, Any], *, stale_s: float) -> bool:
    if time.time() - float(info.get("heartbeat", 0)) > stale_s:
        return True
    return info.get("host") == socket.gethostname() and not _pid_alive(int(info.get("pid", -1)))


class RunLock:
    """``with RunLock(run_dir, stale_s=120) as lock: if lock.acquired: ...`` (heartbeat every stale_s/4)."""

    def __init__(self, run_dir: str | Path, *, stale_s: float = 120.0) -> None:
        self.path = Path(run_dir) / LOCK
        self.stale_s = stale_s
        self.token = uuid.uuid4().hex
        self.acquired = False
        self.holder: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _info(self, started: float) -> dict[str, Any]:
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "token": self.token,
            "started": started,
            "heartbeat": time.time(),
        }

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                info = read_lock(self.path.parent)
                if info is None:  # being written right now, or torn: look again shortly
                    time.sleep(0.2)
                    info = read_lock(self.path.parent)
                    if info is None:
                        info = {"heartbeat": self.path.stat().st_mtime if self.path.exists() else 0}
                if not lock_is_stale(info, stale_s=self.stale_s):
                    self.holder = info
                    return False
                # Stale: take it over by renaming it away (atomic; only one contender wins the rename).
                grave = self.path.with_name(f"{LOCK}.stale.{self.token}")
                try:
                    os.rename(self.path, grave)
                    grave.unlink(missing_ok=True)
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self._info(time.time()), f)
            self.acquired = True
            self._thread = threading.Thread(target=self._beat, daemon=True)
            self._thread.start()
            return True
        return False

    def _beat(self) -> None:
        started = time.time()
        while not self._stop.wait(max(self.stale_s / 4, 0.5)):
            info = read_lock(self.path.parent)
            if info is None or info.get("token") != self.token:
                return  # taken over (we were presumed dead); the new holder owns it now
            tmp = self.path.with_name(f"{LOCK}.tmp.{self.token}")
            tmp.write_text(json.dumps({**self._info(started), "started": info.get("started", started)}))
            os.replace(tmp, self.path)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.acquired:
            info = read_lock(self.path.parent)
            if info is not None and info.get("token") == self.token:
                self.path.unlink(missing_ok=True)
        self.acquired = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def attempts(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / ATTEMPTS
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a torn last line after a crash
    return rows


def record_attempt(run_dir: str | Path, row: dict[str, Any]) -> None:
    path = Path(run_dir) / ATTEMPTS
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
