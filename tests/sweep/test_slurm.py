"""A real single-node Slurm cluster (launch/slurm/local_cluster.sh) runs a 2x2 sweep of tiny models
through an sbatch job array to completion; a rerun submits nothing."""

from __future__ import annotations

import subprocess

import pytest
from conftest import REPO, sweep_cmd, tiny_spec, write_spec

from scaling_train.sweep import state
from scaling_train.sweep.plan import make_plan
from scaling_train.sweep.spec import load_spec

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
