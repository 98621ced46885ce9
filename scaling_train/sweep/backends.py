"""Sweep backends: local (k concurrent runs), torchrun (several nodes, c10d rendezvous), Slurm (sbatch
job arrays from ``launch/slurm/array.sbatch``, or submitit with requeue).

Every backend executes a run through ``scaling_train.sweep.worker`` semantics: skip when DONE or stopped
on request (STOPPED; ``resume_stopped_runs`` first to train those to the end), take the run's lock (never
twice at once), retry a failing run from its checkpoint, record attempts.
Commands are argv lists (no shell); the sbatch script quotes every value with ``shlex.quote``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from scaling_train._io import atomic_write
from scaling_train.sweep import progress, state
from scaling_train.sweep.plan import Plan, RunSpec, command_line
from scaling_train.sweep.worker import EXIT_LOCKED, EXIT_OK, execute

ADAPTIVE = "adaptive.json"
REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "launch" / "slurm" / "array.sbatch"


# ------------------------------------------------------------------------------------- commands
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


# ------------------------------------------------------------------------------------- fitter
class Sidecars:
    """The online fitter beside the runs, the report after them (each when the spec's ``launch`` asks)."""

    def __init__(self, plan: Plan, say=print) -> None:
        self.plan, self.say, self.proc = plan, say, None

    def start_fitter(self) -> None:
        if not self.plan.spec.launch.fitter:
            return
        log = open(self.plan.sweep_dir / "logs" / "fitter.log", "ab")  # noqa: SIM115 - lives with the process
        cmd = [
            self.plan.python(),
            "-m",
            "scaling_train.cli",
            "fit",
            str(self.plan.sweep_dir),
            "--follow",
            "--until-done",
        ]
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        self.say(f"[sweep] online fitter: {command_line(cmd)}  (log: logs/fitter.log)")

    def finish(self) -> None:
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)  # --follow exits once every run is DONE
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                self.proc.wait(timeout=10)
            # one last pass over the finished folders: every run's final prediction and the final law
            cmd = [self.plan.python(), "-m", "scaling_train.cli", "fit", str(self.plan.sweep_dir)]
            subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        if self.plan.spec.launch.report:
            cmd = [self.plan.python(), "-m", "scaling_train.cli", "report", str(self.plan.sweep_dir)]
            self.say(f"[sweep] report: {command_line(cmd)}")
            subprocess.run(cmd, check=False)


# ------------------------------------------------------------------------------------- local
def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def run_local(plan: Plan, *, say=print) -> int:
    """k concurrent runs (launch.concurrency); a run with several processes goes through torchrun."""
    prepare_dir(plan)
    la = plan.spec.launch
    # longest first: the k workers then finish close together (LPT scheduling)
    todo = sorted((r for r in plan.runs if not state.is_finished_for_now(r.run_dir)), key=lambda r: -r.est_s)
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

    def guarded(run: RunSpec) -> None:
        if not stop.is_set():
            one(run)

    pool = ThreadPoolExecutor(max_workers=la.concurrency)
    try:
        with progress.Reporter(lambda: list(inflight.values()), say=say):
            list(pool.map(guarded, todo))
    except KeyboardInterrupt:  # the runs got SIGINT too and checkpoint-exit; start nothing new
        stop.set()
        say("[sweep] interrupted: waiting for the running runs to stop; rerun the same command to resume")
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    side.finish()
    return report_states(plan, say=say)


def _summary(run_dir: str | Path) -> str:
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


# ------------------------------------------------------------------------------------- torchrun
def run_torchrun(plan: Plan, *, say=print) -> int:
    """Multi-node: start this same command on every node (NODE_RANK=0..nnodes-1 or torchrun.node_rank).

    The runs go one after another, each over all nodes through a c10d rendezvous at
    torchrun.master_addr:(master_port + run index). Node 0 holds the run's lock and records attempts;
    torchrun restarts a failing run (--max_restarts = launch.retries) from its last checkpoint."""
    tr, la = plan.spec.torchrun, plan.spec.launch
    node_rank = tr.node_rank if tr.node_rank is not None else int(os.environ.get("NODE_RANK", "0"))
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
        say(f"[sweep] node {node_rank}: {run.name} exit {rc} {_summary(run.run_dir)}")
    if node_rank == 0:
        side.finish()
        return report_states(plan, say=say)
    return 0


def _wait_for(path: Path, *, timeout: float) -> None:
    t = time.time()
    while not path.exists():
        if time.time() - t > timeout:
            raise TimeoutError(f"{path} did not appear in {timeout:.0f}s: is node 0 running the same sweep?")
        time.sleep(0.5)


# ------------------------------------------------------------------------------------- slurm
_JOBNAME_OK = re.compile(r"[^A-Za-z0-9_.-]")


def _groups(plan: Plan) -> list[list[RunSpec]]:
    """Runs with the same (nodes, devices, time limit) share one job array."""
    out: dict[tuple, list[RunSpec]] = {}
    for r in plan.runs:
        out.setdefault((r.nodes, r.devices, r.time_limit_min), []).append(r)
    return list(out.values())


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
        f"--job-name={_JOBNAME_OK.sub('_', spec.name)[:64] or 'sweep'}",
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


def write_sbatch(plan: Plan) -> list[Path]:
    paths = []
    for gi, runs in enumerate(_groups(plan)):
        p = plan.sweep_dir / "slurm" / f"array-{gi}.sbatch"
        p.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(p, sbatch_script(plan, runs))
        paths.append(p)
    return paths


def run_slurm(plan: Plan, *, say=print) -> int:
    if plan.spec.slurm.mode == "submitit":
        return run_submitit(plan, say=say)
    prepare_dir(plan)
    todo = [r for r in plan.runs if not state.is_finished_for_now(r.run_dir)]
    if not todo:
        say(f"[sweep] {plan.spec.name}: all {len(plan.runs)} runs DONE or stopped")
        return report_states(plan, say=say)
    jobs = []
    for path in write_sbatch(plan):
        out = subprocess.run(["sbatch", "--parsable", str(path)], capture_output=True, text=True)
        if out.returncode != 0:
            say(f"[sweep] sbatch {path} failed: {out.stderr.strip()}")
            return 1
        job = out.stdout.strip().split(";")[0]
        jobs.append(job)
        say(f"[sweep] submitted {path.name} as job array {job}")
    atomic_write(plan.sweep_dir / "slurm" / "jobs.json", json.dumps(jobs))
    if not plan.spec.slurm.wait:
        say(f"[sweep] not waiting (slurm.wait=false); watch with: squeue -j {','.join(jobs)}")
        return 0
    side = Sidecars(plan, say)
    side.start_fitter()
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
        if not lines and q.returncode == 0:
            break
        time.sleep(2)
    side.finish()
    return report_states(plan, say=say)


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
            return subprocess.call(argv, preexec_fn=_die_with_parent)
        deadline = time.time() + 1.5 * la.stale_lock_s  # a requeued job waits for its old lock to expire
        while True:
            # preexec: a requeued job's old training process dies with its worker, never runs on
            rc = execute(
                r.run_dir,
                argv,
                retries=la.retries,
                stale_lock_s=la.stale_lock_s,
                log_path=self.plan.sweep_dir / "logs" / f"{r.name}.log",
                preexec=_die_with_parent,
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
    for runs in _groups(plan):
        runs = [r for r in runs if r in todo]
        if not runs:
            continue
        r0 = runs[0]
        ex = submitit.AutoExecutor(folder=str(plan.sweep_dir / "submitit" / "%j"))
        params: dict[str, Any] = {
            "timeout_min": r0.time_limit_min,
            "nodes": r0.nodes,
            "tasks_per_node": 1,
            "name": _JOBNAME_OK.sub("_", plan.spec.name),
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


BACKENDS = {"local": run_local, "torchrun": run_torchrun, "slurm": run_slurm}


_SKIP_MARKS = {"done": "  # DONE, skipped", "stopped": "  # STOPPED, skipped (--resume-stopped resumes it)"}


def dry_run_text(plan: Plan, backend: str) -> str:
    """What the backend would do: exact commands (local/torchrun) or the sbatch scripts (slurm)."""
    lines = []
    if backend == "slurm" and plan.spec.slurm.mode == "array":
        for gi, runs in enumerate(_groups(plan)):
            lines.append(
                f"# ---- {plan.sweep_dir / 'slurm' / f'array-{gi}.sbatch'} (sbatch --parsable <this file>)"
            )
            lines.append(sbatch_script(plan, runs))
        return "\n".join(lines)
    tr = plan.spec.torchrun
    for r in plan.runs:
        if backend == "torchrun":
            argv = run_argv(
                plan,
                r,
                rdzv=f"{tr.master_addr}:{tr.master_port + r.index}",
                rdzv_id=f"{plan.spec.name}-{r.name}",
                max_restarts=plan.spec.launch.retries,
            )
        else:
            argv = run_argv(plan, r)
        mark = _SKIP_MARKS.get(state.status(r.run_dir), "")
        lines.append(command_line(argv) + mark)
    if backend == "slurm":
        lines.insert(0, "# submitit: one job per run (requeued on preemption), each running:")
    return "\n".join(lines)
