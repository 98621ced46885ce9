"""The fitter's critical batch (fitter/cbs.py): measured from a batch sweep's curves and from branches'
cbs.json, the noise scale calibrated against them, predicted at each run's final loss; every output named.

A synthetic sweep with a known truth: one size at 4 batch sizes whose loss curves are the same curve
stretched by S(B) = S_min (1 + B_noise / B), B_noise = 24 sequences at every loss, and a noise scale
B_simple(L) = 640 (L / 3)**-4 tokens logged on every row."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from scaling_train.fitter.core import SweepFitter

SEQ, B_NOISE, N = 64, 24.0, 1e6


def _b_simple(loss):
    return 640.0 * (np.asarray(loss) / 3.0) ** -4


def _write_run(sweep: Path, B: int, rng) -> Path:
    run = sweep / f"N1e6-D4.1e5-B{B}-lr1e-3-s0-0000000{B % 10}"
    run.mkdir(parents=True)
    T = 6400 // B  # the same tokens at every batch size (800 .. 100 steps, rows every 4)
    cfg = {
        "seed": 0, "model": {"seq_len": SEQ}, "train": {"batch_size": B, "max_steps": T},
        "optim": {"lr": 1e-3, "schedule": "constant", "warmup_steps": 0},
        "resolved": {"params": {"non_embedding": N}, "tokens_per_step": B * SEQ, "total_steps": T,
                     "total_tokens": T * B * SEQ},
    }  # fmt: skip
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    steps = np.arange(4, T + 1, 4)
    loss = 2 + 3 / (1 + steps / (1 + B_NOISE / B) / 50) ** 0.7 + rng.normal(0, 0.002, len(steps))
    rows = [
        {"step": int(s), "tokens": int(s) * B * SEQ, "loss": float(lo), "gns_b_simple": float(_b_simple(lo))}
        for s, lo in zip(steps, loss)
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "DONE").write_text(json.dumps({"final_loss": float(loss[-1])}))
    return run


def test_fitter_measures_calibrates_and_predicts_the_critical_batch(tmp_path):
    rng = np.random.default_rng(0)
    sweep = tmp_path / "s"
    runs = {B: _write_run(sweep, B, rng) for B in (8, 16, 32, 64)}
    # one branch measurement of the B=8 run (scaling-train cbs): [16, 32] sequences at loss 3.6
    (runs[8] / "cbs").mkdir()
    (runs[8] / "cbs" / "cbs.json").write_text(json.dumps({"measurements": [{
        "step": 200, "loss": 3.6, "tokens": 8192, "lr_rule": "sqrt", "gns_b_simple": float(_b_simple(3.6)),
        "cbs_measured": {"value": 24.0, "low": 16.0, "high": 32.0, "tokens": 24.0 * SEQ,
                         "low_tokens": 16.0 * SEQ, "high_tokens": 32.0 * SEQ, "source": "branches"},
    }]}))  # fmt: skip
    SweepFitter(sweep, log=lambda s: None).step()
    law = json.loads((sweep / "sweep_law.json").read_text())

    assert law["critical_batch"]["of"] == "gns_b_simple" and "B_star" in law["critical_batch"]
    sw = [m for m in law["cbs_measured"] if m["source"] == "batch_sweep"]
    br = [m for m in law["cbs_measured"] if m["source"] == "branches"]
    assert len(sw) == 4 and len(br) == 1 and br[0]["run"] == runs[8].name
    for m in sw:  # B_noise of the stretched curves, at every target loss
        assert m["value_sequences"] == pytest.approx(B_NOISE, rel=0.15) and m["bounded"]
        assert m["low"] <= B_NOISE * SEQ <= m["high"] and m["value"] == pytest.approx(
            m["value_sequences"] * SEQ
        )
        assert m["gns_b_simple"] == pytest.approx(_b_simple(m["loss"]), rel=0.05)
    cal = law["cbs_calibration"]
    law_g = law["gns_b_simple_law"]  # the noise scale's law over pooled windows of rows: exact here
    assert law_g["alpha_B"] == pytest.approx(0.25, rel=0.02) and law_g["B_star"] == pytest.approx(
        640 * 3**4, rel=0.05
    )
    assert (
        cal["n_points"] == 5
        and cal["sources"] == ["batch_sweep", "branches"]
        and cal["against"] == "gns_b_simple_law"
    )
    # measured is flat in L while B_simple ~ L^-4: the ratio ~ L^4, found by the loss form
    assert cal["form"] == "loss" and cal["coef"][1] == pytest.approx(4.0, abs=0.8)
    pred = law["cbs_predicted"]
    assert "calibrated gns_b_simple" in pred["source"] and set(pred["runs"]) == {
        r.name for r in runs.values()
    }
    for p in pred["runs"].values():
        assert p["low"] < p["value"] < p["high"] and p["unit"] == "tokens" and p["at"] == "final loss"
        assert p["low"] <= B_NOISE * SEQ <= p["high"]  # the truth at every run's final loss
    c = pred["curve"]
    assert len(c["loss"]) == len(c["value"]) == len(c["low"]) == 40
    one = json.loads((runs[8] / "predictions.json").read_text())
    assert one["gns_b_simple"] > 0 and one["cbs_predicted"]["value"] > 0
    assert {m["source"] for m in one["cbs_measured"]} == {"batch_sweep", "branches"}

    # the report draws the three against loss and says what each is
    from scaling_train.report import write_report

    html = write_report(sweep, n_bootstrap=0).read_text()
    assert "cbs_measured: 5 critical batches measured directly" in html
    assert "cbs_predicted = ratio(L) x B_simple(L)" in html and "it is not the critical batch" in html


def test_fitter_says_why_there_is_no_calibration(tmp_path):
    rng = np.random.default_rng(1)
    _write_run(tmp_path / "s", 16, rng)  # one batch size, no branches: nothing measured
    SweepFitter(tmp_path / "s", log=lambda s: None).step()
    law = json.loads((tmp_path / "s" / "sweep_law.json").read_text())
    assert (
        law["cbs_measured"] == []
        and "0 measured critical batches, 0 bounded" in law["cbs_calibration"]["error"]
    )
    one = json.loads(next((tmp_path / "s").glob("*/predictions.json")).read_text())
    assert "0 bounded; measure with scaling-train cbs" in one["cbs_predicted"]


def test_pooled_b_simple_is_a_ratio_of_means():
    """Rows whose own ratios are negative or huge (|G|^2 from a few sequences) still pool to tr / |G|^2."""
    from scaling_train.fitter.cbs import pooled_b_simple

    rng = np.random.default_rng(0)
    g2 = 1.0 + rng.normal(0, 1.0, 400)  # true |G|^2 = 1, single-row estimates often <= 0
    tr = 500.0 + rng.normal(0, 50.0, 400)  # true tr(Sigma) = 500
    rows = [
        {"gns_g2": float(a), "gns_trace_sigma": float(b), "gns_b_simple": float(b / a)}
        for a, b in zip(g2, tr)
    ]
    assert pooled_b_simple(rows) == pytest.approx(500.0, rel=0.15)
    assert pooled_b_simple([{"gns_b_simple": 3.0}, {"gns_b_simple": "nan"}, {"gns_b_simple": 5.0}]) == 4.0
    assert pooled_b_simple([{"gns_g2": -1.0, "gns_trace_sigma": 5.0}]) is None and pooled_b_simple([]) is None
