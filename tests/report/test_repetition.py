"""The repeated-data panel: drawn from the fitter's data-constrained law, absent for a sweep without repetition."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scaling_train.laws import DataConstrainedFit
from scaling_train.report.analysis import analyse
from scaling_train.report.data import load_sweep
from scaling_train.report.figures import NoData
from scaling_train.report.html import render
from scaling_train.report.repetition import fit_from_law, repetition

TRUE = {"E": 1.8, "A": 60.0, "B": 150.0, "alpha": 0.35, "beta": 0.4, "R_D_star": 6.0, "R_N_star": 20.0}


def _law(tmp_path, law: str = "data_constrained"):
    f = DataConstrainedFit(**TRUE, objective=0.0, n_points=16, n_starts=0)
    pts = [
        {
            "run": f"r{i}",
            "N": N,
            "D": D,
            "U": U,
            "eval_loss": float(f.predict(N, D, U)),
            "loss": 0.1,
            "source": "observed",
        }
        for i, (N, D, U) in enumerate(
            (N, D, U) for N in (3e5, 1e6) for D in (5e4, 1e5, 2e5, 4e5) for U in (5e4, 4e5)
        )
    ]
    body = {"points": pts, "law": law, "loss_used": "eval_loss", "law_reason": "8 run(s) repeat their training data (D / U > 1.05)",
            "repeating_runs": [p["run"] for p in pts if p["D"] / p["U"] > 1.05],
            "data_constrained": {**TRUE, "objective": 0.0, "n_points": 16}}  # fmt: skip
    (tmp_path / "sweep_law.json").write_text(json.dumps(body))
    sweep = load_sweep(tmp_path)
    return sweep, analyse(sweep, n_bootstrap=0), f


@pytest.mark.slow  # ~7 s on a loaded 2-core machine (fast-tier budget, issue 16)
def test_panel_draws_the_data_constrained_law(tmp_path):
    sweep, an, f = _law(tmp_path)
    fig = repetition(sweep, an)
    assert fig.png.startswith(b"\x89PNG") and len(fig.png) > 10_000
    n_rep = len(sweep.law["repeating_runs"])
    assert n_rep == 6 and "R_D*=6" in fig.caption and f"{n_rep} of 16 runs repeat" in fig.caption
    g = fit_from_law(sweep.law["data_constrained"])
    N, D, U = np.array([1e6, 1e6]), np.array([4e5, 4e5]), np.array([5e4, 4e5])
    assert np.allclose(g.predict(N, D, U), f.predict(N, D, U))
    assert g.predict(1e6, 4e5, 5e4) > g.predict(1e6, 4e5, 4e5)  # 8 epochs lose to fresh data
    html = render(sweep, an)
    assert 'id="repetition"' in html or "Repeated data" in html


def test_panel_absent_without_repetition_and_clear_when_broken(tmp_path):
    sweep, an, _ = _law(tmp_path, law="chinchilla")
    with pytest.raises(NoData, match="repeat"):
        repetition(sweep, an)
    assert "Repeated data" not in render(sweep, an)
    with pytest.raises(NoData, match=r"lacks \['R_D_star'\] \(no error given\)"):
        fit_from_law({k: v for k, v in TRUE.items() if k != "R_D_star"})
