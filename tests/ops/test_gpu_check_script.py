"""benchmarks/gpu_check.sh, the one script a session with a GPU runs, keeps running end to end on a CPU-only
machine (its CUDA parts skipped), so it has not rotted by the time a device is lent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the script is the full check (minutes)")
def test_the_gpu_check_runs_on_a_cpu_with_its_cuda_parts_skipped(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PY": sys.executable}
    env.pop("TRITON_INTERPRET", None)  # as on a fresh shell
    proc = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "no CUDA device: the GPU parts are skipped" in proc.stdout
    assert "torch" in (tmp_path / "env.txt").read_text()
    for step in ("tests", "tune", "train"):
        log = (tmp_path / f"{step}.log").read_text()
        assert log.rstrip().endswith("rc=0"), f"{step}: {log[-1000:]}"
    tests_log = (tmp_path / "tests.log").read_text()
    assert "skipped" in tests_log and "no CUDA device on this machine" in tests_log  # collected, then skipped
    assert "no CUDA device; nothing to tune" in (tmp_path / "tune.log").read_text()
