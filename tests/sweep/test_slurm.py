"""A real single-node Slurm cluster (launch/slurm/local_cluster.sh) runs a 2x2 sweep of tiny models
through an sbatch job array to completion; a rerun submits nothing."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from scaling_train.sweep import state
from scaling_train.sweep.plan import make_plan
from scaling_train.sweep.spec import load_spec
from tests.fixtures.sweeps import REPO, sweep_cmd, tiny_spec, write_spec

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _slurm_sweep(path, out, env, *, timeout: int) -> subprocess.CompletedProcess:
    cmd = sweep_cmd(path, "--output", str(out), "--backend", "slurm")
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_slurm_array_runs_a_2x2_sweep(tmp_path, env, slurm_cluster):
    spec = tiny_spec(
        "slurm 2x2",
        grid={"sizes": ["0.1M", "0.2M"], "tokens": [2560, 5120]},
        launch={"retries": 1},
        slurm={"mode": "array", "max_parallel": 2},
    )
    path = write_spec(tmp_path / "s.yaml", spec)
    out = tmp_path / "sweep out"  # a space in the path: quoted everywhere
    res = _slurm_sweep(path, out, env, timeout=900)
    logs = "\n".join(p.read_text(errors="replace")[-2000:] for p in (out / "logs").glob("*"))
    assert res.returncode == 0, res.stdout + res.stderr + logs
    assert "submitted array-0.sbatch as job array" in res.stdout
    plan = make_plan(load_spec(path), output=out)
    assert len(plan.runs) == 4
    for r in plan.runs:
        assert state.is_done(r.run_dir), r.name
        assert len(state.attempts(r.run_dir)) == 1  # each run executed exactly once
    script = (out / "slurm" / "array-0.sbatch").read_text()
    assert "#SBATCH --array=0-3%2" in script and "srun" in script
    again = _slurm_sweep(path, out, env, timeout=120)
    assert again.returncode == 0 and "all 4 runs DONE" in again.stdout


def test_submitit_mode_runs_and_skips_done(tmp_path, env, slurm_cluster):
    spec = tiny_spec("submitit", grid={"sizes": ["0.1M"], "tokens": [2560, 5120]}, slurm={"mode": "submitit"})
    path = write_spec(tmp_path / "s.yaml", spec)
    out = tmp_path / "out"
    res = _slurm_sweep(path, out, env, timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "submitit: 2 jobs submitted" in res.stdout
    plan = make_plan(load_spec(path), output=out)
    for r in plan.runs:
        assert state.is_done(r.run_dir) and len(state.attempts(r.run_dir)) == 1
    assert list((out / "submitit").rglob("*_submitted.pkl"))  # submitit's own job records


def test_submitit_requeue_on_preemption_resumes(tmp_path, env, slurm_cluster):
    """USR2 (Slurm's pre-timeout signal; submitit's checkpoint trigger) mid-run: submitit requeues the
    job, the new job takes over the run's lock and resumes from the last checkpoint."""
    steps = 150
    spec = tiny_spec("requeue", grid={"sizes": ["0.1M"], "tokens": [256 * steps]}, slurm={"mode": "submitit"})
    spec["run"] = {**spec["run"], "train": {**spec["run"]["train"], "ckpt_every": 10}}
    path = write_spec(tmp_path / "s.yaml", spec)
    out = tmp_path / "out"
    (run,) = make_plan(load_spec(path), output=out).runs
    sweep = subprocess.Popen(
        sweep_cmd(path, "--output", str(out), "--backend", "slurm"),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    ckpts = Path(run.run_dir) / "checkpoints"
    deadline = time.time() + 300
    while not list(ckpts.glob("step-*.pt")) and time.time() < deadline:
        assert sweep.poll() is None, sweep.stdout.read()
        time.sleep(0.2)
    job = subprocess.run(
        ["squeue", "-h", "-n", "requeue", "-o", "%i"], capture_output=True, text=True
    ).stdout.split()
    assert job, "the submitit job is not in the queue"
    subprocess.run(["scancel", "--signal=USR2", job[0]], check=True)
    # Slurm holds a requeued job ~2 min (BeginTime); release it as an admin would, to keep the test short
    while sweep.poll() is None and time.time() < deadline + 300:
        subprocess.run(["scontrol", "update", f"JobId={job[0]}", "StartTime=now"], capture_output=True)
        time.sleep(1)
    outs = sweep.communicate(timeout=600)[0]
    assert sweep.returncode == 0, outs
    assert state.is_done(run.run_dir)
    log = (out / "logs" / f"{run.name}.log").read_text()
    assert "resumed" in log, log[-3000:]
    rows = [
        json.loads(ln) for ln in (Path(run.run_dir) / "metrics.jsonl").read_text().splitlines() if ln.strip()
    ]
    assert [r["step"] for r in rows] == sorted({r["step"] for r in rows}) and rows[-1]["step"] == steps


def test_slurm_array_submits_branches_mid_run(tmp_path, env, slurm_cluster):
    """With a cbs block the Slurm backend submits a run's branches as their own job array once the run has
    checkpointed the branch point, while it still trains; each branch runs once and cbs.json counts it."""
    spec = tiny_spec(
        "slurm-cbs",
        grid={"sizes": ["0.1M"], "tokens": [256 * 400]},
        cbs={"every": 25, "factors": [2]},
        slurm={"mode": "array"},
    )
    path = write_spec(tmp_path / "s.yaml", spec)
    out = tmp_path / "out"
    res = _slurm_sweep(path, out, env, timeout=900)
    logs = "\n".join(p.read_text(errors="replace")[-2000:] for p in (out / "logs").glob("*"))
    assert res.returncode == 0, res.stdout + res.stderr + logs
    (run,) = make_plan(load_spec(path), output=out).runs
    assert run.cbs_steps == [100, 200, 300]
    assert "submitted branches-s100-0.sbatch as job array" in res.stdout
    got = json.loads((Path(run.run_dir) / "cbs" / "cbs.json").read_text())
    assert [m["step"] for m in got["measurements"]] == [100, 200, 300]
    assert all(m["cbs_measured"] and not m["pending"] for m in got["measurements"])
    (parent_try,) = state.attempts(run.run_dir)
    first = Path(run.run_dir) / "cbs" / got["measurements"][0]["branches"][0]["run"]
    (branch_try,) = state.attempts(first)
    assert branch_try["start"] < parent_try["end"], "the step-100 branch waited for its parent to end"
    assert "[cbs] 1 branched run(s) had every branch DONE already (mid-run)" in res.stdout
