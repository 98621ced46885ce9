"""What every sweep backend shares: the sweep folder, the run's command, the per-run summary and states.

Every backend executes a run through ``scaling_train.sweep.worker`` semantics: skip when DONE or stopped
on request (STOPPED; ``resume_stopped_runs`` first to train those to the end), take the run's lock (never
twice at once), retry a failing run from its checkpoint, record attempts.
Commands are argv lists (no shell): ``run_argv`` builds one run's (plain python or torchrun). The Slurm
backends (array and submitit) group runs into jobs with ``array_groups`` and name them with ``JOBNAME_BAD_CHARS``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from scaling_train._io import atomic_write
from scaling_train.fitter.adaptive import LAUNCH_ORDER_FILE
from scaling_train.sweep import state
from scaling_train.sweep.plan import Plan, RunSpec

ADAPTIVE = "adaptive.json"


def run_argv(
    plan: Plan, run: RunSpec, *, rdzv: str | None = None, rdzv_id: str | None = None, max_restarts: int = 0
) -> list[str]:
    """The exact command of one run on this node: plain python for one process, torchrun otherwise."""
    py, train = plan.python(), plan.train_argv(run)
    if run.world_size == 1:
        return [py, *train]
    dist = [
        py,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        str(run.nodes),
        "--nproc_per_node",
        str(run.devices),
    ]
    if run.nodes == 1 and rdzv is None:
        dist += ["--standalone"]
    else:
        dist += [
            "--rdzv_backend",
            "c10d",
            "--rdzv_endpoint",
            rdzv or "127.0.0.1:29500",
            "--rdzv_id",
            rdzv_id or f"{plan.spec.name}-{run.config_hash}",
        ]
    if max_restarts:
        dist += ["--max_restarts", str(max_restarts)]
    return [*dist, *train]  # torchrun's own `-m scaling_train.cli train ...`


def prepare_dir(plan: Plan) -> None:
    """Write sweep_dir/{base.yaml, plan.json, spec.yaml} and logs/ (the runs read base.yaml), and
    sweep_dir/adaptive.json (the policy, ``AdaptivePolicy.to_dict()``) for an adaptive sweep: the fitter stops
    runs only where it exists, so a stale one is removed when the spec has no adaptive block."""
    d = plan.sweep_dir
    (d / "logs").mkdir(parents=True, exist_ok=True)
    atomic_write(d / "base.yaml", yaml.safe_dump(plan.base, sort_keys=False))
    atomic_write(d / "plan.json", json.dumps(plan.to_json(), indent=1))
    if Path(plan.spec.source).is_file():
        atomic_write(d / "spec.yaml", Path(plan.spec.source).read_text())
    if plan.adaptive is not None:
        atomic_write(d / ADAPTIVE, json.dumps(plan.adaptive.to_dict(), indent=1))
    else:
        (d / ADAPTIVE).unlink(missing_ok=True)
    # a ranking of an earlier launch: the fitter writes a new one
    (d / LAUNCH_ORDER_FILE).unlink(missing_ok=True)


def resume_stopped_runs(plan: Plan, *, say=print) -> list[str]:
    """``--resume-stopped``: every run stopped on request gets its STOP removed and its STOPPED archived
    (``state.resume_stopped``), so the launch that follows trains it from its checkpoint to the end."""
    names = []
    for r in plan.runs:
        archived = state.resume_stopped(r.run_dir)
        if archived is not None:
            names.append(r.name)
            say(f"[sweep] {r.name}: resumed to the end (stop record kept as {archived.name})")
    if not names:
        say("[sweep] --resume-stopped: no run is stopped")
    return names


def die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def run_summary(run_dir: str | Path) -> str:
    """The final (DONE) or last (STOPPED: "at step k/T") loss of a run, "" when it has neither record."""
    stopped = state.is_stopped(run_dir)
    p = "" if stopped else "final_"
    try:
        d = json.loads((Path(run_dir) / (state.STOPPED if stopped else state.DONE)).read_text())
        ev = d.get(f"{p}eval_loss")
        at = f"at step {d['steps']}/{d['total_steps']} " if stopped else ""
        return at + f"loss {d[f'{p}loss']:.3f}" + (f" eval {ev:.3f}" if ev is not None else "")
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def report_states(plan: Plan, *, say=print) -> int:
    """Print each run's state; 0 when every run is DONE or stopped on request (finished for now)."""
    states = {r.name: state.status(r.run_dir) for r in plan.runs}
    stopped = [n for n, s in states.items() if s == "stopped"]
    bad = [n for n, s in states.items() if s not in state.FINISHED_FOR_NOW]
    say(
        f"[sweep] {plan.spec.name}: {len(plan.runs) - len(bad) - len(stopped)}/{len(plan.runs)} DONE"
        + (f", {len(stopped)} stopped early: {', '.join(stopped)}" if stopped else "")
        + (f"; not done: {', '.join(f'{n} ({states[n]})' for n in bad)}" if bad else "")
    )
    if stopped:
        say(
            "[sweep] stopped runs are resumable: rerun the same command with --resume-stopped to train them to the end"
        )
    if bad:
        say(
            f"[sweep] logs in {plan.sweep_dir / 'logs'}; rerun the same command to resume (finished runs are skipped)"
        )
    return 0 if not bad else 1


JOBNAME_BAD_CHARS = re.compile(r"[^A-Za-z0-9_.-]")


def array_groups(plan: Plan, runs: list[RunSpec] | None = None) -> list[list[RunSpec]]:
    """Runs (``plan.runs`` by default) with the same (nodes, devices, time limit) share one job array."""
    out: dict[tuple, list[RunSpec]] = {}
    for r in plan.runs if runs is None else runs:
        out.setdefault((r.nodes, r.devices, r.time_limit_min), []).append(r)
    return list(out.values())
