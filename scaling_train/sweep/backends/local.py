"""The local backend: k concurrent runs on this machine (``launch.concurrency``), longest first; a run with
several processes goes through torchrun (``--standalone``)."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from scaling_train.sweep import progress, state
from scaling_train.sweep.backends.common import (
    _die_with_parent,
    _summary,
    prepare_dir,
    report_states,
    run_argv,
)
from scaling_train.sweep.backends.sidecar import Sidecars
from scaling_train.sweep.plan import Plan, RunSpec
from scaling_train.sweep.worker import EXIT_LOCKED, EXIT_OK, execute


def _budget(run: RunSpec) -> float:
    """The run's grid budget value (its planned FLOPs for a run planned without one, e.g. a cbs branch)."""
    return run.budget if run.budget is not None else run.flops


def run_local(plan: Plan, *, say=print) -> int:
    """k concurrent runs (launch.concurrency); a run with several processes goes through torchrun."""
    prepare_dir(plan)
    la = plan.spec.launch
    # longest first: the k workers then finish close together (LPT scheduling); or smallest budget first
    todo = [r for r in plan.runs if not state.is_finished_for_now(r.run_dir)]
    if plan.spec.launch.order == "budget":  # smallest budget first: later runs have finished references
        todo.sort(key=lambda r: (_budget(r), -r.est_s))
    else:
        todo.sort(key=lambda r: -r.est_s)
    n_stopped = sum(state.is_stopped(r.run_dir) for r in plan.runs)
    say(
        f"[sweep] {plan.spec.name}: {len(plan.runs) - len(todo) - n_stopped}/{len(plan.runs)} runs DONE, "
        + (f"{n_stopped} stopped (--resume-stopped trains them to the end), " if n_stopped else "")
        + f"{len(todo)} to run, {la.concurrency} at a time -> {plan.sweep_dir}"
    )
    side = Sidecars(plan, say)
    side.start_fitter()
    results: dict[str, int] = {}
    lock = threading.Lock()
    t0 = time.time()
    inflight: dict[str, tuple[str, str, int]] = {}  # name -> (name, run_dir, steps): the progress lines' runs

    def one(run: RunSpec) -> None:
        argv = run_argv(plan, run)
        say(f"[sweep] start {run.name} (N={run.n_params:.2e}, D={run.tokens:.2e}, est {run.est_s:.0f}s)")
        inflight[run.name] = (run.name, run.run_dir, run.steps)
        t = time.time()
        rc = execute(
            run.run_dir,
            argv,
            retries=la.retries,
            stale_lock_s=la.stale_lock_s,
            log_path=plan.sweep_dir / "logs" / f"{run.name}.log",
            say=say,
            env={"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")},
            preexec=_die_with_parent,
            stop=stop,
        )
        inflight.pop(run.name, None)
        with lock:
            results[run.name] = rc
            n_done = sum(state.is_done(r.run_dir) for r in plan.runs)
            summ = _summary(run.run_dir)
            word = "stopped" if state.is_stopped(run.run_dir) else "done " if rc == EXIT_OK else "FAILED"
            say(
                f"[sweep] {word if rc != EXIT_LOCKED else 'busy '} {run.name} "
                f"{summ} in {time.time() - t:.0f}s | {n_done}/{len(plan.runs)} DONE, {time.time() - t0:.0f}s elapsed"
            )

    stop = threading.Event()

    pending = list(todo)
    ended: set[str] = set()  # runs of this invocation that ended (done, failed or stopped)
    cond = threading.Condition()

    def ready(run: RunSpec) -> bool:
        """order=budget: a run waits for the runs of its size at smaller budgets, so that its predictions have a
        finished same-size reference (the fitter's best one); runs finished before this invocation count."""
        if la.order != "budget":
            return True
        return not any(
            q.n_params == run.n_params
            and q.seed == run.seed
            and _budget(q) < _budget(run)
            and q.name not in ended
            for q in todo
        )

    def worker() -> None:
        while True:
            with cond:
                while True:
                    if stop.is_set() or not pending:
                        return
                    run = next((r for r in pending if ready(r)), None)
                    if run is not None:
                        pending.remove(run)  # claimed: no other worker takes it
                        break
                    cond.wait(1.0)
            try:
                one(run)
            finally:
                with cond:
                    ended.add(run.name)
                    cond.notify_all()

    pool = ThreadPoolExecutor(max_workers=la.concurrency)
    try:
        with progress.Reporter(lambda: list(inflight.values()), say=say):
            for f in [pool.submit(worker) for _ in range(la.concurrency)]:
                f.result()
    except KeyboardInterrupt:  # the runs got SIGINT too and checkpoint-exit; start nothing new
        stop.set()
        say("[sweep] interrupted: waiting for the running runs to stop; rerun the same command to resume")
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    side.finish()
    return report_states(plan, say=say)
