"""The local backend end to end on real runs: a sweep finishes; killed mid-way and rerun, it resumes
the partial run from its checkpoint and runs nothing twice; shell metacharacters stay data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from scaling_train.sweep import state
from scaling_train.sweep.backends import sbatch_script
from scaling_train.sweep.plan import make_plan
from scaling_train.sweep.spec import load_spec
from tests.fixtures.sweeps import REPO, sweep_cmd, tiny_spec, write_spec


def _steps(run_dir: Path) -> list[int]:
    return [
        json.loads(ln)["step"] for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()
    ]


@pytest.mark.slow
def test_kill_mid_sweep_and_rerun_resumes_and_runs_nothing_twice(tmp_path, env):
    spec = tiny_spec("kill", grid={"sizes": ["0.1M", "0.2M"], "tokens": [256 * 40]})  # 40 steps each
    path = write_spec(tmp_path / "kill.yaml", spec)
    out = tmp_path / "out"
    plan = make_plan(load_spec(path), output=out)
    first, second = sorted(plan.runs, key=lambda r: -r.est_s)  # the order the local backend uses
    log = open(tmp_path / "sweep1.log", "wb")
    proc = subprocess.Popen(
        sweep_cmd(path, "--output", str(out)),
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.time() + 240
    second_dir = Path(second.run_dir)
    while time.time() < deadline:
        if state.is_done(first.run_dir) and list((second_dir / "checkpoints").glob("step-*.pt")):
            break
        assert proc.poll() is None, (tmp_path / "sweep1.log").read_text()
        time.sleep(0.2)
    else:
        pytest.fail("the sweep did not reach the kill point in 240 s")
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its run die mid-way (no cleanup)
    proc.wait()
    log.close()
    assert not state.is_done(second.run_dir)
    assert (second_dir / state.LOCK).exists()  # left behind by the killed worker: must not block the rerun

    again = subprocess.run(
        sweep_cmd(path, "--output", str(out)), cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"{first.name}: DONE already, skipped" in again.stdout or "1/2 runs DONE" in again.stdout
    assert state.is_done(first.run_dir) and state.is_done(second.run_dir)
    assert len(state.attempts(first.run_dir)) == 1  # not run twice
    run_log = (out / "logs" / f"{second.name}.log").read_text()
    assert "resumed" in run_log
    steps = _steps(second_dir)
    assert steps == sorted(set(steps)) and steps[-1] == 40  # resumed rows replace the cut ones, no duplicates
    # and a third invocation is a no-op
    third = subprocess.run(
        sweep_cmd(path, "--output", str(out)), cwd=REPO, env=env, capture_output=True, text=True
    )
    assert third.returncode == 0 and "2/2 runs DONE, 0 to run" in third.stdout


EVIL = "x'; touch {p}/PWNED; echo ' $(touch {p}/PWNED2) `touch {p}/PWNED3` \"; && | > {p}/PWNED4"


def _evil_spec(tmp_path: Path) -> tuple[Path, Path]:
    evil = EVIL.format(p=tmp_path)
    spec = tiny_spec("evil", overrides={"data.cache_dir": evil})  # harmless key ($SCALING_TRAIN_CACHE wins)
    out = tmp_path / "out dir $(touch PWNED5) 'q'"
    return write_spec(tmp_path / "evil.yaml", spec), out


def _pwned(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.rglob("PWNED*"))


def test_shell_metacharacters_stay_quoted_in_the_sbatch_script(tmp_path):
    path, out = _evil_spec(tmp_path)
    plan = make_plan(load_spec(path), output=out)
    script = sbatch_script(plan, plan.runs)
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    # Execute the script's own lines up to the launch with real bash, printing the argv it would run.
    head = script.split('\necho "[sbatch]')[0]
    head = head.replace(
        'HEAD="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"', "HEAD=localhost"
    )
    probe = head + '\nprintf "%s\\0" "$RUN_DIR" "${TRAIN[@]}"\n'
    res = subprocess.run(
        ["bash", "-c", probe],
        capture_output=True,
        cwd=tmp_path,
        env={**os.environ, "SLURM_ARRAY_TASK_ID": "0", "SLURM_JOB_NODELIST": "localhost"},
    )
    assert res.returncode == 0, res.stderr.decode()
    argv = res.stdout.decode().split("\0")[:-1]
    assert argv == [plan.runs[0].run_dir, *plan.train_argv(plan.runs[0])]
    assert f"data.cache_dir={EVIL.format(p=tmp_path)}" in argv or any(
        EVIL.format(p=tmp_path) in a for a in argv
    )
    assert _pwned(tmp_path) == []


@pytest.mark.slow
def test_shell_metacharacters_in_a_real_local_sweep(tmp_path, env):
    path, out = _evil_spec(tmp_path)
    res = subprocess.run(
        sweep_cmd(path, "--output", str(out)), cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stdout + res.stderr
    (run,) = make_plan(load_spec(path), output=out).runs
    cfg = yaml.safe_load((Path(run.run_dir) / "config.yaml").read_text())
    assert cfg["data"]["cache_dir"] == EVIL.format(p=tmp_path)  # arrived as data, byte for byte
    assert _pwned(tmp_path) == []


@pytest.mark.slow
def test_ctrl_c_stops_without_retrying(tmp_path, env):
    spec = tiny_spec("intr", grid={"sizes": ["0.1M"], "tokens": [256 * 400]}, launch={"retries": 2})
    path = write_spec(tmp_path / "intr.yaml", spec)
    out = tmp_path / "out"
    (run,) = make_plan(load_spec(path), output=out).runs
    proc = subprocess.Popen(
        sweep_cmd(path, "--output", str(out)),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.time() + 240
    while not list((Path(run.run_dir) / "checkpoints").glob("step-*.pt")) and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the sweep and its run
    outs = proc.communicate(timeout=60)[0]
    assert proc.returncode != 0 and "rerun the same command to resume" in outs, outs
    assert len(state.attempts(run.run_dir)) == 1  # stopped, not retried
    assert not (Path(run.run_dir) / state.LOCK).exists() and not state.is_done(run.run_dir)
