"""Execute one run of a sweep under its lock, with retries: the unit every sweep backend launches.

    python -m scaling_train.sweep.worker RUN_DIR [--retries 1] [--stale-lock-s 120] [--log FILE] -- CMD ...

Exit codes: 0 = finished (or already DONE), or stopped on request (RUN_DIR/STOPPED written by the trainer, or
already there: a stopped run is not relaunched, ``state.resume_stopped`` first), 3 = another live process holds
the run's lock (it is not executed twice), 1 = still failing after the retries (the attempts are in
RUN_DIR/attempts.jsonl; a stopped attempt's row has ``"stopped": true``).
CMD runs without a shell (argv as given), so no value is ever interpreted by one.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from scaling_train.sweep import state

EXIT_OK, EXIT_FAILED, EXIT_LOCKED = 0, 1, 3


def execute(
    run_dir: str | Path,
    cmd: list[str],
    *,
    retries: int = 1,
    stale_lock_s: float = 120.0,
    log_path: str | Path | None = None,
    env: dict[str, str] | None = None,
    say=print,
    preexec=None,
    stop: threading.Event | None = None,
) -> int:
    run_dir = Path(run_dir)
    name = run_dir.name
    if _finished_for_now(run_dir, say):
        return EXIT_OK
    lock = state.RunLock(run_dir, stale_s=stale_lock_s)
    if not lock.acquire():
        h = lock.holder or {}
        say(
            f"[sweep] {name}: running elsewhere (lock held by pid {h.get('pid')} on {h.get('host')}), not started twice"
        )
        return EXIT_LOCKED
    try:
        if _finished_for_now(run_dir, say):  # finished or stopped between the check and the lock
            return EXIT_OK
        for attempt in range(retries + 1):
            start = time.time()
            rc = _run(cmd, log_path, env, preexec)
            stopped = rc == 0 and state.is_stopped(run_dir)  # stopped on request: a success, not finished
            ok = rc == 0 and (state.is_done(run_dir) or stopped)
            row = {
                "attempt": len(state.attempts(run_dir)) + 1,
                "start": start,
                "end": time.time(),
                "rc": rc if not (rc == 0 and not ok) else -1,
                "host": socket.gethostname(),
            }
            state.record_attempt(run_dir, {**row, "stopped": True} if stopped else row)
            if stopped:
                say(f"[sweep] {name}: stopped on request (RUN/STOPPED); resume it with --resume-stopped")
            if ok:
                return EXIT_OK
            interrupted = rc in (130, -signal.SIGINT) or (stop is not None and stop.is_set())
            more = attempt < retries and not interrupted  # Ctrl-C stops a run, it does not retry it
            say(
                f"[sweep] {name}: attempt {attempt + 1} failed (exit {rc}); "
                + ("retrying from its last checkpoint" if more else f"giving up; log: {log_path or 'stdout'}")
            )
            if not more:
                break
        return EXIT_FAILED
    finally:
        lock.release()


def _finished_for_now(run_dir: Path, say) -> bool:
    """DONE or stopped: say so and skip the run."""
    if state.is_done(run_dir):
        say(f"[sweep] {run_dir.name}: DONE already, skipped")
        return True
    if state.is_stopped(run_dir):
        say(f"[sweep] {run_dir.name}: STOPPED on request, skipped (resume it with --resume-stopped)")
        return True
    return False


def _run(cmd: list[str], log_path: str | Path | None, env: dict[str, str] | None, preexec=None) -> int:
    out = open(log_path, "ab") if log_path else None  # noqa: SIM115 - closed below
    try:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            env={**os.environ, **(env or {})},
            preexec_fn=preexec,
        )

        def forward(sig, _frame):  # Slurm/submitit preemption: let the run checkpoint and exit
            proc.send_signal(sig)

        old = (
            {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGUSR1)} if _main_thread() else {}
        )
        try:
            return proc.wait()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
    finally:
        if out is not None:
            out.close()


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        print("usage: python -m scaling_train.sweep.worker RUN_DIR [options] -- CMD ...", file=sys.stderr)
        return 2
    i = argv.index("--")
    p = argparse.ArgumentParser(prog="python -m scaling_train.sweep.worker")
    p.add_argument("run_dir")
    p.add_argument("--retries", type=int, default=1)
    p.add_argument("--stale-lock-s", type=float, default=120.0)
    p.add_argument("--log", default=None)
    a = p.parse_args(argv[:i])
    return execute(a.run_dir, argv[i + 1 :], retries=a.retries, stale_lock_s=a.stale_lock_s, log_path=a.log)


if __name__ == "__main__":
    sys.exit(main())
