"""The first screen (report/summary.py): the law with intervals, the compute-optimal outlook, the critical batch
there and this sweep's own mid-run accuracy, on a synthetic sweep whose true law is known."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from scaling_train.laws import ChinchillaFit
from scaling_train.report import SUMMARY_FILE, write_report
from scaling_train.report.analysis import analyse
from scaling_train.report.data import load_sweep
from scaling_train.report.summary import _cbs_at, first_screen, lines
from tests.fixtures import synth


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    return synth.write_sweep(tmp_path_factory.mktemp("screen") / "iso")


@pytest.mark.slow  # ~6 s on a loaded 2-core machine (fast-tier budget, issue 16)
def test_first_screen_on_a_known_law(sweep_dir):
    sweep = load_sweep(sweep_dir)
    s = first_screen(sweep, analyse(sweep, n_bootstrap=30))
    for k in ("E", "alpha", "beta"):
        v, lo, hi = s["law"][k]
        assert lo <= v <= hi and v == pytest.approx(synth.TRUE[k], rel=0.05), k
    true = ChinchillaFit(**synth.TRUE, objective=0.0, n_points=0, n_starts=0)
    (r10, r100) = s["outlook"]
    assert r100["C"] == pytest.approx(10 * r10["C"]) and r10["C"] == pytest.approx(10 * s["largest_compute"])
    for r in (r10, r100):
        n_true, d_true, _ = true.optimal(r["C"])
        assert r["N"] == pytest.approx(n_true, rel=0.25) and r["D"] == pytest.approx(d_true, rel=0.25)
        for k in ("N", "D", "L"):
            lo, hi = r["interval"][k]
            assert lo <= r[k] <= hi, k
    assert r100["N"] > r10["N"] and r100["L"] < r10["L"]
    a = s["accuracy"]
    assert a["n"] == 15 and 0 <= a["good"] <= a["n"]  # every finished run has a prediction made by 40%
    assert all(x["fraction"] <= 0.4 + 1e-9 for x in a["runs"])
    text = "\n".join(lines(s))
    assert "at 10x the largest run's compute" in text and "critical batch: n/a" in text
    assert f"{a['good']} of 15 finished runs" in text


def test_critical_batch_continues_the_fitters_calibrated_curve():
    """cbs_predicted is linear in log-log (a power law in loss times a ratio linear in log loss): the first
    screen continues it to the compute-optimal loss, and says when it extrapolates."""
    loss = np.geomspace(3.0, 5.0, 40)
    law = {"cbs_predicted": {"source": "branches", "curve": {
        "loss": list(loss), "value": list(1e5 * loss**-2.0), "low": list(5e4 * loss**-2.0),
        "high": list(2e5 * loss**-2.0)}}}  # fmt: skip
    c = _cbs_at(law, 2.0)
    assert c["value"] == pytest.approx(1e5 / 4.0) and c["low"] == pytest.approx(5e4 / 4.0)
    assert c["extrapolated"] and not _cbs_at(law, 4.0)["extrapolated"]
    assert "no measured" in _cbs_at({}, 2.0)["error"]


@pytest.mark.slow  # 14 s on 2 idle cores
def test_report_writes_and_prints_the_first_screen(sweep_dir, tmp_path):
    out = write_report(sweep_dir, output=tmp_path / "r.html", n_bootstrap=10)
    assert 'id="first-screen"' in out.read_text() and "What this sweep says" in out.read_text()
    s = json.loads((tmp_path / SUMMARY_FILE).read_text())
    assert s["sweep"] and len(s["outlook"]) == 2
    p = subprocess.run(
        [sys.executable, "-m", "scaling_train.cli", "report", str(sweep_dir), "--bootstrap", "0"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "what this sweep says" in p.stdout and "mid-run predictions: at 40% of each run" in p.stdout


def test_a_sweep_at_one_token_budget_fits_no_chinchilla_law_and_says_why():
    """A batch-size sweep (3 sizes, one token budget: D differs only by a step's tokens between batches) does not
    identify the D term: before the check the fit returned beta = -157 and the first screen's held-out check
    printed +nan%. Now the law is not fitted and its row says why (the first screen prints that row's error)."""
    from scaling_train.report.analysis import Point, _fit_chinchilla

    rng = np.random.default_rng(0)
    pts = []
    for n in (1.07e5, 3.32e5, 9.53e5):
        for b in (8, 16, 32, 64):
            d = 3.2e5 + 64 * b * rng.integers(0, 4)  # the last step's tokens differ by batch
            pts.append(Point(f"N{n:g}-B{b}", n, d, 3.0 + 40 * n**-0.3 + rng.normal(0, 0.01), "observed"))
    fit, row = _fit_chinchilla(pts, 0)
    assert fit is None
    assert "1 token count(s)" in row.error and "3 model size(s)" in row.error, row.error
    # two budgets 2x apart: fitted as before
    pts2 = pts + [Point(f"N{p.N:g}-2x", p.N, 2 * p.D, p.loss - 0.05, "observed") for p in pts[::4]]
    fit2, row2 = _fit_chinchilla(pts2, 0)
    assert fit2 is not None and row2.error is None
