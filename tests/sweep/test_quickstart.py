"""The README's main job, end to end: configs/sweeps/quickstart.yaml as shipped (12 CPU runs, the online
fitter beside them, the report at the end), and a sensible scaling result: the final loss falls with N at
every budget and with D at every size, and the fitted Chinchilla exponents are in a plausible range."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scaling_train.sweep.plan import parse_run_name

REPO = Path(__file__).resolve().parents[2]
NOISE = 0.02  # nats: allowed rise of the final loss from one size to the next bigger one (one seed)


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
    assert all((r / "predictions.json").is_file() for r in runs)
    check_scaling_result(out)


def check_scaling_result(out: Path) -> str:
    """Assert the quickstart's scaling result in sweep folder ``out``; return the loss table.

    Also usable on a sweep run by hand: ``check_scaling_result(Path("runs/quickstart"))``."""
    runs = [p for p in out.iterdir() if p.is_dir() and (p / "DONE").is_file()]
    loss: dict[tuple[float, float], float] = {}  # (N, D) -> final loss (each run's DONE), one seed
    for r in runs:
        coords = parse_run_name(r.name)
        loss[coords["N"], coords["D"]] = json.loads((r / "DONE").read_text())["final_loss"]
    sizes = sorted({n for n, _ in loss})
    budgets = sorted({d for _, d in loss})
    assert len(sizes) == 4 and len(budgets) == 3 and len(loss) == 12, sorted(loss)
    table = "\n".join(f"N={n:.3g}: " + " ".join(f"{loss[n, d]:.3f}" for d in budgets) for n in sizes)
    for d in budgets:  # bigger is better at every budget (non-increasing, up to single-seed noise)
        col = [loss[n, d] for n in sizes]
        assert all(b <= a + NOISE for a, b in zip(col, col[1:])), f"not monotone in N at D={d:.3g}:\n{table}"
    for n in sizes:  # more tokens are better at every size
        row = [loss[n, d] for d in budgets]
        assert all(b < a for a, b in zip(row, row[1:])), f"not decreasing in D at N={n:.3g}:\n{table}"
    assert loss[sizes[-1], budgets[-1]] < loss[sizes[0], budgets[-1]] - 0.1, table  # a visible N effect

    ch = json.loads((out / "sweep_law.json").read_text())["chinchilla"]
    assert "error" not in ch, ch
    assert ch["n_points"] == 12, ch
    assert 0.05 < ch["alpha"] < 2 and 0.05 < ch["beta"] < 2, f"degenerate Chinchilla fit {ch}\n{table}"
    return table
