"""The submitit backend (``slurm.mode: submitit``): one Slurm job per run, requeued on preemption or
timeout; the run resumes from its own checkpoint."""

from __future__ import annotations

import subprocess
import time
from typing import Any

from scaling_train.sweep import state
from scaling_train.sweep.backends.common import (
    JOBNAME_BAD_CHARS,
    array_groups,
    die_with_parent,
    prepare_dir,
    report_states,
    run_argv,
)
from scaling_train.sweep.backends.sidecar import Sidecars
from scaling_train.sweep.plan import Plan, RunSpec
from scaling_train.sweep.worker import EXIT_LOCKED, execute


class _SubmititRun:
    """A submitit job for one run; ``checkpoint`` requeues it on preemption/timeout (it resumes from its
    own checkpoint, as every rerun does)."""

    def __init__(self, plan: Plan, run: RunSpec) -> None:
        self.plan, self.run = plan, run

    def __call__(self) -> int:
        import submitit

        env = submitit.JobEnvironment()
        r, la = self.run, self.plan.spec.launch
        head = env.hostnames[0] if env.hostnames else "127.0.0.1"
        argv = run_argv(
            self.plan,
            r,
            rdzv=f"{head}:{29500 + r.index % 1000}" if r.world_size > 1 else None,
            rdzv_id=f"{env.job_id}",
        )
        if env.global_rank != 0:
            return subprocess.call(argv, preexec_fn=die_with_parent)
        deadline = time.time() + 1.5 * la.stale_lock_s  # a requeued job waits for its old lock to expire
        while True:
            # preexec: a requeued job's old training process dies with its worker, never runs on
            rc = execute(
                r.run_dir,
                argv,
                retries=la.retries,
                stale_lock_s=la.stale_lock_s,
                log_path=self.plan.sweep_dir / "logs" / f"{r.name}.log",
                preexec=die_with_parent,
            )
            if rc != EXIT_LOCKED or time.time() > deadline:
                return rc
            time.sleep(5)

    def checkpoint(self) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(_SubmititRun(self.plan, self.run))


def run_submitit(plan: Plan, *, say=print) -> int:
    import submitit

    prepare_dir(plan)
    sl, res = plan.spec.slurm, plan.spec.resources
    todo = [r for r in plan.runs if not state.is_finished_for_now(r.run_dir)]
    jobs = []
    for runs in array_groups(plan):
        runs = [r for r in runs if r in todo]
        if not runs:
            continue
        r0 = runs[0]
        ex = submitit.AutoExecutor(folder=str(plan.sweep_dir / "submitit" / "%j"))
        params: dict[str, Any] = {
            "timeout_min": r0.time_limit_min,
            "nodes": r0.nodes,
            "tasks_per_node": 1,
            "name": JOBNAME_BAD_CHARS.sub("_", plan.spec.name),
        }
        if res.gpu:
            params["gpus_per_node"] = r0.devices
        if sl.partition:
            params["slurm_partition"] = sl.partition
        if sl.max_parallel:
            params["slurm_array_parallelism"] = sl.max_parallel
        if res.cpus_per_task:
            params["cpus_per_task"] = res.cpus_per_task
        if sl.setup:
            params["slurm_setup"] = list(sl.setup)
        ex.update_parameters(**params)
        with ex.batch():
            for r in runs:
                jobs.append((r, ex.submit(_SubmititRun(plan, r))))
    say(f"[sweep] submitit: {len(jobs)} jobs submitted ({', '.join(j.job_id for _, j in jobs)})")
    if not sl.wait:
        return 0
    side = Sidecars(plan, say)
    side.start_fitter()
    for r, j in jobs:
        try:
            j.result()
        except Exception as e:  # reported, the others go on
            say(f"[sweep] {r.name}: job {j.job_id} failed: {str(e).splitlines()[0] if str(e) else e!r}")
    side.finish()
    return report_states(plan, say=say)
