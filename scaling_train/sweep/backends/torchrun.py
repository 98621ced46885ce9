"""The torchrun backend: several nodes, each running the same sweep command; the runs go one after another,
each over all nodes through a c10d rendezvous."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from scaling_train.sweep import state
from scaling_train.sweep.backends.common import prepare_dir, report_states, run_argv, run_summary
from scaling_train.sweep.backends.sidecar import Sidecars
from scaling_train.sweep.plan import Plan
from scaling_train.sweep.worker import execute


def run_torchrun(plan: Plan, *, say=print) -> int:
    """Multi-node: start this same command on every node (NODE_RANK=0..nnodes-1 or torchrun.node_rank).

    The runs go one after another, each over all nodes through a c10d rendezvous at
    torchrun.master_addr:(master_port + run index). Node 0 holds the run's lock and records attempts;
    torchrun restarts a failing run (--max_restarts = launch.retries) from its last checkpoint."""
    tr, la = plan.spec.torchrun, plan.spec.launch
    node_rank = this_node_rank(plan.spec)
    if node_rank == 0:
        prepare_dir(plan)
    else:
        _wait_for(plan.sweep_dir / "base.yaml", timeout=300)
    side = Sidecars(plan, say)
    if node_rank == 0:
        side.start_fitter()
    for run in plan.runs:
        if state.is_finished_for_now(run.run_dir):
            say(f"[sweep] node {node_rank}: {run.name} {state.status(run.run_dir).upper()} already, skipped")
            continue
        argv = run_argv(
            plan,
            run,
            rdzv=f"{tr.master_addr}:{tr.master_port + run.index}",
            rdzv_id=f"{plan.spec.name}-{run.name}",
            max_restarts=la.retries,
        )
        log = plan.sweep_dir / "logs" / f"{run.name}.node{node_rank}.log"
        say(f"[sweep] node {node_rank}: start {run.name} ({run.nodes}x{run.devices} processes)")
        if node_rank == 0:
            rc = execute(run.run_dir, argv, retries=0, stale_lock_s=la.stale_lock_s, log_path=log, say=say)
        else:
            with open(log, "ab") as f:
                rc = subprocess.call(argv, stdout=f, stderr=subprocess.STDOUT)
        say(f"[sweep] node {node_rank}: {run.name} exit {rc} {run_summary(run.run_dir)}")
    if node_rank == 0:
        side.finish()
        return report_states(plan, say=say)
    return 0


def this_node_rank(spec) -> int:
    """This node's rank in a torchrun sweep: ``torchrun.node_rank``, else $NODE_RANK, else 0."""
    tr = spec.torchrun
    return tr.node_rank if tr.node_rank is not None else int(os.environ.get("NODE_RANK", "0"))


def _wait_for(path: Path, *, timeout: float) -> None:
    t = time.time()
    while not path.exists():
        if time.time() - t > timeout:
            raise TimeoutError(f"{path} did not appear in {timeout:.0f}s: is node 0 running the same sweep?")
        time.sleep(0.5)
