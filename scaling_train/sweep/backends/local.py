"""The local backend: k concurrent runs on this machine (``launch.concurrency``), longest first; a run with
several processes goes through torchrun (``--standalone``). With a ``cbs:`` block a run's critical-batch
branches start while it still trains, as soon as it has written their branch point's checkpoint
(``sweep.cbs.MidRun``): in the next free slot, unless a run of the sweep is ready to start and the branch's
parent still trains (then in the slot the parent frees, at the latest)."""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from scaling_train.config import ConfigError
from scaling_train.fitter.adaptive import LAUNCH_ORDER_FILE
from scaling_train.sweep import cbs, progress, state
from scaling_train.sweep.backends.common import (
    die_with_parent,
    prepare_dir,
    report_states,
    run_argv,
    run_summary,
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
    todo = _todo(plan)
    say(_header(plan, todo))
    side = Sidecars(plan, say)
    side.start_fitter()
    _Workers(plan, todo, say).run()
    side.finish()
    return report_states(plan, say=say)


def _todo(plan: Plan) -> list[RunSpec]:
    """The runs still to train, in launch order: longest first (the k workers then finish close together,
    LPT scheduling), or with launch.order=budget smallest budget first (later runs have finished references)."""
    todo = [r for r in plan.runs if not state.is_finished_for_now(r.run_dir)]
    if plan.spec.launch.order == "budget":
        todo.sort(key=lambda r: (_budget(r), -r.est_s))
    else:
        todo.sort(key=lambda r: -r.est_s)
    return todo


def _header(plan: Plan, todo: list[RunSpec]) -> str:
    """The sweep's first line: runs done, stopped and to run, the concurrency and the sweep folder."""
    la = plan.spec.launch
    n_stopped = sum(state.is_stopped(r.run_dir) for r in plan.runs)
    return (
        f"[sweep] {plan.spec.name}: {len(plan.runs) - len(todo) - n_stopped}/{len(plan.runs)} runs DONE, "
        + (f"{n_stopped} stopped (--resume-stopped trains them to the end), " if n_stopped else "")
        + f"{len(todo)} to run, {la.concurrency} at a time -> {plan.sweep_dir}"
    )


class _Workers:
    """``launch.concurrency`` worker threads that claim the runs of ``todo`` in order and train each through
    ``execute``; the progress lines follow the runs in flight."""

    def __init__(self, plan: Plan, todo: list[RunSpec], say) -> None:
        self.plan, self.todo, self.say = plan, todo, say
        self.la = plan.spec.launch
        self.lock = threading.Lock()  # one end-of-run line at a time
        self.t0 = time.time()
        # name -> (name, run_dir, steps): the runs the progress lines follow
        self.inflight: dict[str, tuple[str, str, int]] = {}
        self.stop = threading.Event()
        self.pending = list(todo)
        self.ended: set[str] = set()  # runs of this invocation that ended (done, failed or stopped)
        self.cond = threading.Condition()
        # the cbs block's branches: found as their parents checkpoint (claim says when they start)
        self.branches = cbs.MidRun(plan, say=say)
        self.branch_pending: list[tuple[Plan, RunSpec]] = []
        self.running: set[str] = set()  # run folders in flight
        self.measured: set[tuple[str, int]] = set()  # (parent, step) of the measurements already said

    def run(self) -> None:
        """Returns nothing once every worker is done; on Ctrl-C starts nothing new and waits for the runs."""
        la, say = self.la, self.say
        pool = ThreadPoolExecutor(max_workers=la.concurrency)
        try:
            with progress.Reporter(lambda: list(self.inflight.values()), say=say):
                for f in [pool.submit(self.worker) for _ in range(la.concurrency)]:
                    f.result()
        except KeyboardInterrupt:  # the runs got SIGINT too and checkpoint-exit; start nothing new
            self.stop.set()
            say("[sweep] interrupted: waiting for the running runs to stop; rerun the same command to resume")
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)

    def worker(self) -> None:
        """Returns nothing: one worker thread's loop, claim a run, train it, mark it ended, until none is left."""
        while True:
            got = self.claim()
            if got is None:
                return
            plan, run = got
            try:
                self.one(run, plan)
            finally:
                with self.cond:
                    self.ended.add(run.name)
                    self.running.discard(run.run_dir)
                    self.cond.notify_all()

    def claim(self) -> tuple[Plan, RunSpec] | None:
        """(plan, run) of the next ready branch (``cbs.MidRun``) whose parent has ended or, while a pending run
        of the sweep is ready, that run, else a branch whose parent still trains; taken off its list (no other
        worker takes it). A branch thus starts no later than the slot its parent frees. None when the sweep is
        stopped or nothing is pending or still to come. Waits while every pending run waits for another, or while
        nothing is pending but a run in flight may still reach a branch point."""
        with self.cond:
            while True:
                if self.stop.is_set():
                    return None
                self.branch_pending += self.branches.poll()
                ready = [r for r in self.pending if self.ready(r)]
                for i, (bp, run) in enumerate(self.branch_pending):
                    # a branch whose parent still trains yields to a ready run: it can take the parent's slot
                    # when the parent ends, while a long run started late would end the sweep alone
                    parent = Path(bp.sweep_dir).parent.resolve()
                    if not ready or all(Path(r).resolve() != parent for r in self.running):
                        del self.branch_pending[i]
                        self.running.add(run.run_dir)
                        return bp, run
                if not self.pending and not self.branch_pending and not self.branches.expecting(self.running):
                    return None
                run = self.ranked(ready)[0] if ready else None
                if run is not None:
                    self.pending.remove(run)
                    self.running.add(run.run_dir)
                    return self.plan, run
                self.cond.wait(1.0)

    def ranked(self, ready: list[RunSpec]) -> list[RunSpec]:
        """``ready`` in the order they should start: the planned one, or under the adaptive policy's
        ``launch_order: uncertainty`` the fitter's latest ranking (SWEEP_DIR/launch_order.json; runs it does not
        rank keep their planned order after the ranked ones). A missing or unreadable file: the planned order."""
        pol = self.plan.adaptive
        if pol is None or pol.launch_order != "uncertainty" or len(ready) < 2:
            return ready
        try:
            rec = json.loads((self.plan.sweep_dir / LAUNCH_ORDER_FILE).read_text())
            rank = {str(o["name"]): i for i, o in enumerate(rec.get("order") or [])}
        except (OSError, ValueError, TypeError, KeyError):
            return ready
        return sorted(ready, key=lambda r: rank.get(r.name, len(rank)))  # stable: unranked keep their order

    def ready(self, run: RunSpec) -> bool:
        """order=budget: a run waits for the runs of its size at smaller budgets, so that its predictions have a
        finished same-size reference (the fitter's best one); runs finished before this invocation count."""
        if self.la.order != "budget":
            return True
        return not any(
            q.n_params == run.n_params
            and q.seed == run.seed
            and _budget(q) < _budget(run)
            and q.name not in self.ended
            for q in self.todo
        )

    def one(self, run: RunSpec, plan: Plan) -> None:
        """Returns nothing: trains one run of ``plan`` (the sweep's, or a parent's branch plan: retries, lock,
        log file) and says how it ended; a branch's or a branched parent's end rewrites the parent's cbs.json."""
        la, say = self.la, self.say
        branch = plan is not self.plan
        argv = run_argv(plan, run)
        what = f"branch {Path(plan.sweep_dir).parent.name}/{run.name}" if branch else run.name
        say(f"[sweep] start {what} (N={run.n_params:.2e}, D={run.tokens:.2e}, est {run.est_s:.0f}s)")
        self.inflight[run.name] = (run.name, run.run_dir, run.steps)
        t = time.time()
        rc = execute(
            run.run_dir,
            argv,
            retries=la.retries,
            stale_lock_s=la.stale_lock_s,
            log_path=plan.sweep_dir / "logs" / f"{run.name}.log",
            say=say,
            env={"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")},
            preexec=die_with_parent,
            stop=self.stop,
        )
        self.inflight.pop(run.name, None)
        parent = Path(plan.sweep_dir).parent if branch else Path(run.run_dir)
        with self.lock:
            n_done = sum(state.is_done(r.run_dir) for r in self.plan.runs)
            summ = run_summary(run.run_dir)
            word = "stopped" if state.is_stopped(run.run_dir) else "done " if rc == EXIT_OK else "FAILED"
            say(
                f"[sweep] {word if rc != EXIT_LOCKED else 'busy '} {what} "
                f"{summ} in {time.time() - t:.0f}s | {n_done}/{len(self.plan.runs)} DONE, {time.time() - self.t0:.0f}s elapsed"
            )
            if branch or (parent / cbs.CBS_DIR).is_dir():
                self.write_cbs(parent)

    def write_cbs(self, parent: Path) -> None:
        """Rewrite ``parent``'s cbs.json (its measurements so far) and say each new measured critical batch."""
        try:
            res = cbs.write_results(parent)
        except (OSError, ValueError, ConfigError) as e:  # a measurement must never stop the sweep
            self.say(f"[cbs] {parent.name}: cbs.json not written: {e}")
            return
        for m in res["measurements"]:
            c = m.get("cbs_measured")
            if c and m["loss"] is not None and (parent.name, m["step"]) not in self.measured:
                self.measured.add((parent.name, m["step"]))
                self.say(
                    f"[cbs] {parent.name} step {m['step']}: measured critical batch {c['value']:.0f} sequences "
                    f"[{c['low']:.0f}, {c['high']:.0f}] at loss {m['loss']:.3f}"
                )
