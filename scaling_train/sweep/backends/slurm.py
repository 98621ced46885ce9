"""The Slurm backend: sbatch job arrays rendered from ``launch/slurm/array.sbatch`` (``slurm.mode: array``),
or submitit with requeue (``slurm.mode: submitit``, in ``submitit.py``). While it waits, a ``cbs:`` block's
branches are submitted as their own job arrays once their parent has checkpointed the branch point.

The sbatch script quotes every value with ``shlex.quote``; ``#SBATCH`` lines, parsed by sbatch and not by a
shell, put values with blanks in double quotes.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import time
from pathlib import Path

from scaling_train._io import atomic_write
from scaling_train.sweep import cbs, state
from scaling_train.sweep.backends.common import JOBNAME_BAD_CHARS, array_groups, prepare_dir, report_states
from scaling_train.sweep.backends.sidecar import Sidecars
from scaling_train.sweep.backends.submitit import run_submitit
from scaling_train.sweep.plan import Plan, RunSpec

REPO = Path(__file__).resolve().parents[3]
TEMPLATE = REPO / "launch" / "slurm" / "array.sbatch"


def _sbatch_opt(opt: str) -> str:
    """An #SBATCH line is parsed by sbatch, not by a shell: values with blanks go in double quotes."""
    if "\n" in opt or '"' in opt:
        raise ValueError(
            f"sbatch option {opt!r} cannot hold a newline or a double quote; rename the path/value"
        )
    key, eq, val = opt.partition("=")
    if eq and re.search(r"\s|'", val):
        return f'{key}="{val}"'
    return opt


def sbatch_script(plan: Plan, runs: list[RunSpec], *, template: Path | None = None) -> str:
    """Render the array script: one `case` branch per array index with the run's quoted command."""
    spec, res, sl, la = plan.spec, plan.spec.resources, plan.spec.slurm, plan.spec.launch
    r0 = runs[0]
    q = shlex.quote
    opts = [
        f"--job-name={JOBNAME_BAD_CHARS.sub('_', spec.name)[:64] or 'sweep'}",
        f"--array=0-{len(runs) - 1}" + (f"%{sl.max_parallel}" if sl.max_parallel else ""),
        f"--nodes={r0.nodes}",
        "--ntasks-per-node=1",
        f"--time={r0.time_limit_min}",
        f"--output={plan.sweep_dir / 'logs' / 'slurm-%A_%a.out'}",
        "--open-mode=append",
    ]
    if res.gpu:
        opts.append(f"--gpus-per-node={r0.devices}")
    for key, flag in (("partition", "--partition"), ("account", "--account"), ("qos", "--qos")):
        if getattr(sl, key):
            opts.append(f"{flag}={getattr(sl, key)}")
    if res.cpus_per_task:
        opts.append(f"--cpus-per-task={res.cpus_per_task}")
    if res.mem:
        opts.append(f"--mem={res.mem}")
    opts += list(sl.extra)
    opts = [_sbatch_opt(o) for o in opts]
    py = q(plan.python())
    cases = []
    for i, r in enumerate(runs):
        train = " ".join(q(a) for a in plan.train_argv(r))
        cases.append(f"  {i}) RUN_DIR={q(r.run_dir)}; TRAIN=({train}) ;;")
    if r0.world_size == 1:
        launch = 'srun --ntasks=1 --nodes=1 "$PY" "${TRAIN[@]}"'
    else:
        launch = (
            'srun --nodes="$SLURM_NNODES" --ntasks-per-node=1 --kill-on-bad-exit=1 '
            f'"$PY" -m torch.distributed.run --nnodes="$SLURM_NNODES" --nproc_per_node={r0.devices} '
            '--rdzv_backend=c10d --rdzv_endpoint="$HEAD:$PORT" --rdzv_id="$SLURM_JOB_ID" "${TRAIN[@]}"'
        )
    text = (template or Path(sl.template or TEMPLATE)).read_text()
    fill = {
        "SBATCH": "\n".join(f"#SBATCH {o}" for o in opts),
        "SETUP": "\n".join(sl.setup),
        "PYTHON": py,
        "WORKDIR": q(str(Path.cwd())),
        "CASES": "\n".join(cases),
        "WORKER": f'"$PY" -m scaling_train.sweep.worker "$RUN_DIR" --retries {int(la.retries)} '
        f"--stale-lock-s {float(la.stale_lock_s)} --",
        "LAUNCH": launch,
        "COMMENT": f"sweep {spec.name!r} from {spec.source}: {len(runs)} runs, {r0.nodes} node(s) x {r0.devices} device(s)",
    }
    for k, v in fill.items():
        text = text.replace("{{" + k + "}}", v if k != "COMMENT" else v.replace("\n", " "))
    return text


def write_sbatch(plan: Plan, runs: list[RunSpec] | None = None, *, tag: str = "array") -> list[Path]:
    """The sbatch scripts of ``runs`` (``plan.runs`` by default): ``SWEEP/slurm/<tag>-<group>.sbatch``."""
    paths = []
    for gi, group in enumerate(array_groups(plan, runs)):
        p = plan.sweep_dir / "slurm" / f"{tag}-{gi}.sbatch"
        p.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(p, sbatch_script(plan, group))
        paths.append(p)
    return paths


def _submit(paths: list[Path], say) -> list[str] | None:
    """``sbatch --parsable`` each script; the job ids, or None (said) when one submission fails."""
    jobs = []
    for path in paths:
        out = subprocess.run(["sbatch", "--parsable", str(path)], capture_output=True, text=True)
        if out.returncode != 0:
            say(f"[sweep] sbatch {path} failed: {out.stderr.strip()}")
            return None
        jobs.append(out.stdout.strip().split(";")[0])
        say(f"[sweep] submitted {path.name} as job array {jobs[-1]}")
    return jobs


def _submit_branches(found: list[tuple[Plan, RunSpec]], say) -> list[str] | None:
    """The cbs block's branches that became ready (``cbs.MidRun.poll``), one job array per parent and step."""
    jobs: list[str] = []
    by: dict[tuple[str, int], tuple[Plan, list[RunSpec]]] = {}
    for bp, r in found:
        by.setdefault((str(bp.sweep_dir), int(r.overrides["branch.step"])), (bp, []))[1].append(r)
    for (_, step), (bp, runs) in by.items():
        got = _submit(write_sbatch(bp, runs, tag=f"branches-s{step}"), say)
        if got is None:
            return None
        jobs += got
    return jobs


def _write_cbs(branched: dict[Path, list[str]], seen: dict[Path, tuple[int, bool]]) -> None:
    """Rewrite the cbs.json of every branched parent whose branches or own run ended since its last write."""
    for parent, dirs in branched.items():
        now = (sum(state.is_finished_for_now(d) for d in dirs), state.is_finished_for_now(parent))
        if now[0] and seen.get(parent) != now:
            cbs.write_results(parent)
            seen[parent] = now


def run_slurm(plan: Plan, *, say=print) -> int:
    if plan.spec.slurm.mode == "submitit":
        return run_submitit(plan, say=say)
    prepare_dir(plan)
    todo = [r for r in plan.runs if not state.is_finished_for_now(r.run_dir)]
    if not todo:
        say(f"[sweep] {plan.spec.name}: all {len(plan.runs)} runs DONE or stopped")
        return report_states(plan, say=say)
    jobs = _submit(write_sbatch(plan), say)
    if jobs is None:
        return 1
    atomic_write(plan.sweep_dir / "slurm" / "jobs.json", json.dumps(jobs))
    if not plan.spec.slurm.wait:
        say(f"[sweep] not waiting (slurm.wait=false); watch with: squeue -j {','.join(jobs)}")
        return 0
    side = Sidecars(plan, say)
    side.start_fitter()
    # the cbs block's branches: submitted as soon as their parent has checkpointed the branch point
    mid = cbs.MidRun(plan, say=say)
    branched: dict[Path, list[str]] = {}  # parent -> its branch run folders submitted here
    # parent -> (branches finished, parent finished) at its last cbs.json write
    seen: dict[Path, tuple[int, bool]] = {}
    last = None
    while True:
        q = subprocess.run(
            ["squeue", "-h", "-j", ",".join(jobs), "-o", "%i %T"], capture_output=True, text=True
        )
        lines = [ln for ln in q.stdout.splitlines() if ln.strip()]
        n_done = sum(state.is_done(r.run_dir) for r in plan.runs)
        msg = f"[sweep] slurm: {len(lines)} array tasks queued/running, {n_done}/{len(plan.runs)} DONE"
        if msg != last:
            say(msg)
            last = msg
        # polled after squeue: a branch point written just before its run ended is still submitted
        found = mid.poll()
        if found:
            got = _submit_branches(found, say)
            if got is None:  # the pass after the runs (sweep.cbs.sweep_branches) submits them again
                say("[sweep] the branches above were not submitted; they run after the sweep's runs")
                found = []
            else:
                jobs += got
                for bp, r in found:
                    branched.setdefault(Path(bp.sweep_dir).parent, []).append(r.run_dir)
                atomic_write(plan.sweep_dir / "slurm" / "jobs.json", json.dumps(jobs))
        _write_cbs(branched, seen)
        if not lines and q.returncode == 0 and not found:
            break
        time.sleep(2)
    _write_cbs(branched, seen)
    side.finish()
    return report_states(plan, say=say)
