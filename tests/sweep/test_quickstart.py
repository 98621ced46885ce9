"""The README's main job, end to end: configs/sweeps/quickstart.yaml as shipped (12 CPU runs, the online
fitter beside them, the report at the end)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quickstart_sweep_end_to_end(tmp_path):
    out = tmp_path / "quickstart"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run(
        [sys.executable, "-m", "scaling_train.cli", "sweep", str(REPO / "configs/sweeps/quickstart.yaml"),
         "--output", str(out)],
        env=env, capture_output=True, text=True, timeout=1800, cwd=REPO,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    runs = [p for p in out.iterdir() if p.is_dir() and (p / "config.yaml").is_file()]
    assert len(runs) == 12 and all((r / "DONE").is_file() for r in runs)
    assert str(out / "report.html") in res.stdout  # the command says where the report is
    html = (out / "report.html").read_text()
    assert "<img" in html and "Fitted laws" in html
    law = json.loads((out / "sweep_law.json").read_text())
    assert "E" in law["chinchilla"] or "error" in law["chinchilla"]
    assert all((r / "predictions.json").is_file() for r in runs)
