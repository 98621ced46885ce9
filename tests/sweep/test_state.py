"""Run state: the lock is exclusive, stale locks expire (old heartbeat, or a dead pid on this host),
and the worker skips DONE runs, never runs a locked run, and retries a failing one."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

from scaling_train.sweep import state
from scaling_train.sweep.worker import EXIT_FAILED, EXIT_LOCKED, EXIT_OK, execute


def test_lock_is_exclusive_and_released(tmp_path):
    a, b = state.RunLock(tmp_path, stale_s=60), state.RunLock(tmp_path, stale_s=60)
    assert a.acquire()
    assert not b.acquire() and b.holder["pid"] == os.getpid()
    assert state.status(tmp_path) == "running"
    a.release()
    assert not (tmp_path / state.LOCK).exists()
    assert b.acquire()
    b.release()


def test_stale_lock_expires_by_heartbeat_and_by_dead_pid(tmp_path):
    old = {"host": "another-host", "pid": 1, "token": "x", "started": 0, "heartbeat": time.time() - 1000}
    (tmp_path / state.LOCK).write_text(json.dumps(old))
    fresh = {**old, "heartbeat": time.time()}
    lock = state.RunLock(tmp_path, stale_s=60)
    assert lock.acquire()  # heartbeat 1000 s old > 60 s
    lock.release()
    (tmp_path / state.LOCK).write_text(json.dumps(fresh))
    assert not state.RunLock(tmp_path, stale_s=60).acquire()  # live holder elsewhere: respected
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / state.LOCK).write_text(json.dumps({**fresh, "host": socket.gethostname(), "pid": dead.pid}))
    lock = state.RunLock(tmp_path, stale_s=60)
    assert lock.acquire()  # same host, process gone: a killed sweep is resumable at once
    lock.release()


def test_heartbeat_keeps_a_long_run_locked(tmp_path):
    a = state.RunLock(tmp_path, stale_s=2)
    assert a.acquire()
    time.sleep(3)  # longer than stale_s: only the heartbeat keeps it fresh
    info = state.read_lock(tmp_path)
    assert time.time() - info["heartbeat"] < 2
    assert not state.RunLock(tmp_path, stale_s=2).acquire()
    a.release()


def _flaky(tmp_path, fails: int) -> list[str]:
    """A real process that fails `fails` times, then writes DONE (as the trainer does)."""
    code = (
        "import pathlib,sys; d=pathlib.Path(sys.argv[1]); c=d/'count'; n=int(c.read_text()) if c.exists() else 0;"
        f"c.write_text(str(n+1)); sys.exit(3) if n < {fails} else (d/'DONE').write_text('{{}}')"
    )
    return [sys.executable, "-c", code, str(tmp_path)]


def test_worker_retries_then_succeeds_and_skips_done(tmp_path):
    msgs = []
    assert execute(tmp_path, _flaky(tmp_path, 1), retries=1, say=msgs.append) == EXIT_OK
    rows = state.attempts(tmp_path)
    assert [r["rc"] for r in rows] == [3, 0]
    assert any("retrying" in m for m in msgs)
    assert execute(tmp_path, _flaky(tmp_path, 0), retries=1, say=msgs.append) == EXIT_OK
    assert (tmp_path / "count").read_text() == "2"  # DONE: not executed again
    assert not (tmp_path / state.LOCK).exists()


def test_worker_gives_up_after_retries_and_respects_a_live_lock(tmp_path):
    run = tmp_path / "r"
    assert execute(run, _flaky(run, 5), retries=1, say=lambda s: None) == EXIT_FAILED
    assert [r["rc"] for r in state.attempts(run)] == [3, 3] and state.status(run) == "failed"
    other = tmp_path / "o"
    held = state.RunLock(other, stale_s=60)
    assert held.acquire()
    assert execute(other, _flaky(other, 0), say=lambda s: None) == EXIT_LOCKED
    assert not (other / "count").exists()  # never started twice
    held.release()
