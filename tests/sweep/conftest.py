"""Fixtures of the sweep tests: a shared data cache, the environment of a sweep subprocess, a real Slurm.
The tiny specs themselves are in ``tests/fixtures/sweeps.py``."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.sweeps import REPO


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> Path:
    """One tokenizer/shard cache for every test of the session (built once, under a file lock)."""
    d = Path(os.environ.get("SCALING_TRAIN_TEST_CACHE") or tmp_path_factory.mktemp("st_cache"))
    return d


@pytest.fixture()
def env(data_cache) -> dict[str, str]:
    e = dict(os.environ)
    e.update({"SCALING_TRAIN_CACHE": str(data_cache), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    return e


@pytest.fixture(scope="session")
def slurm_cluster():
    """A real one-node Slurm cluster (launch/slurm/local_cluster.sh); skips with the reason otherwise."""
    missing = [b for b in ("slurmctld", "slurmd", "sbatch", "munged") if shutil.which(b) is None]
    if missing:
        pytest.skip(f"Slurm not installed (missing {', '.join(missing)}): apt-get install -y slurm-wlm munge")
    if os.geteuid() != 0:
        pytest.skip("the local Slurm cluster needs root (munged key, slurmd)")
    script = REPO / "launch" / "slurm" / "local_cluster.sh"
    out = subprocess.run(["bash", str(script), "start"], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        pytest.fail(f"local Slurm cluster did not start:\n{out.stdout}\n{out.stderr}")
    yield script
