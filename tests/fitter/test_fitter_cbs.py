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


def _write_folder(run: Path, *, n_params: float, B: int, T: int, steps: np.ndarray, loss: np.ndarray) -> Path:
    """A finished run folder of ``T`` steps at batch ``B`` with training-loss rows ``loss`` at ``steps``
    and the noise scale ``_b_simple`` on every row."""
    run.mkdir(parents=True)
    cfg = {
        "seed": 0, "model": {"seq_len": SEQ}, "train": {"batch_size": B, "max_steps": T},
        "optim": {"lr": 1e-3, "schedule": "constant", "warmup_steps": 0},
        "resolved": {"params": {"non_embedding": n_params}, "tokens_per_step": B * SEQ, "total_steps": T,
                     "total_tokens": T * B * SEQ},
    }  # fmt: skip
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    rows = [
        {"step": int(s), "tokens": int(s) * B * SEQ, "loss": float(lo), "gns_b_simple": float(_b_simple(lo))}
        for s, lo in zip(steps, loss)
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "DONE").write_text(json.dumps({"final_loss": float(loss[-1])}))
    return run


def _write_run(sweep: Path, B: int, rng) -> Path:
    T = 6400 // B  # the same tokens at every batch size (800 .. 100 steps, rows every 4)
    steps = np.arange(4, T + 1, 4)
    loss = 2 + 3 / (1 + steps / (1 + B_NOISE / B) / 50) ** 0.7 + rng.normal(0, 0.002, len(steps))
    return _write_folder(
        sweep / f"N1e6-D4.1e5-B{B}-lr1e-3-s0-0000000{B % 10}", n_params=N, B=B, T=T, steps=steps, loss=loss
    )


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
    }, {  # one whose lower bound is only the smallest batch measured (k = 2 paid already): an upper bound
        "step": 400, "loss": 3.3, "tokens": 8192, "lr_rule": "sqrt", "gns_b_simple": float(_b_simple(3.3)),
        "cbs_measured": {"value": 12.0, "low": 8.0, "high": 16.0, "tokens": 12.0 * SEQ, "low_tokens": 8.0 * SEQ,
                         "high_tokens": 16.0 * SEQ, "low_is_reference": True, "source": "branches"},
    }]}))  # fmt: skip
    SweepFitter(sweep, log=lambda s: None).step()
    law = json.loads((sweep / "sweep_law.json").read_text())

    assert law["critical_batch"]["of"] == "gns_b_simple" and "B_star" in law["critical_batch"]
    sw = [m for m in law["cbs_measured"] if m["source"] == "batch_sweep"]
    br = [m for m in law["cbs_measured"] if m["source"] == "branches"]
    assert len(sw) == 4 and len(br) == 2 and br[0]["run"] == runs[8].name
    assert br[0]["bounded"] and not br[1]["bounded"] and br[1]["low_is_reference"]
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
    assert "cbs_measured: 6 critical batches measured directly" in html
    assert "(1 with a lower bound that is only the smallest batch measured: arrow down" in html
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
    assert "no batch sweep measured" in law["cbs_scaling"]["error"]
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


# ---------------------------------------------------------------------------------------------------
# cbs_scaling: the critical batch across sizes from the batch sweeps alone (laws.fit_cbs_scaling).
# Truth: B_noise(L) = 32 (L / 3)**-4 sequences at every size (a law in the loss), and at size N
# S_min(L) solves L = L_inf(N) + 3 / (1 + S_min / 50)**0.7 with L_inf(N) = 1.5 + 1.5 (1e6 / N)**0.35;
# the run at batch B reaches L after S(B, L) = S_min(L) (1 + B_noise(L) / B) steps.

SIZES, BATCHES = (1e6, 4e6, 1.6e7), (8, 16, 32, 64)


def _b_noise(loss):
    return 32.0 * (np.asarray(loss) / 3.0) ** -4


def _write_scaling_run(sweep: Path, n_params: float, B: int, rng) -> Path:
    T = 12800 // B  # the same sequences at every batch size: 1600 .. 200 steps, ~100 rows
    l_inf = 1.5 + 1.5 * (1e6 / n_params) ** 0.35
    grid = np.linspace(l_inf + 1e-4, l_inf + 3.0, 20000)
    s_min = 50 * ((3.0 / (grid - l_inf)) ** (1 / 0.7) - 1)
    s_b = s_min * (1 + _b_noise(grid) / B)  # decreasing in L: invert by interpolation
    steps = np.arange(T // 100, T + 1, T // 100)
    loss = np.interp(steps, s_b[::-1], grid[::-1]) + rng.normal(0, 0.002, len(steps))
    name = f"N{n_params:.1e}-D{T * B * SEQ:.1e}-B{B}-lr1e-3-s0-{int(n_params) % 97:04d}{B:04d}"
    return _write_folder(sweep / name, n_params=n_params, B=B, T=T, steps=steps, loss=loss)


def test_fitter_predicts_the_critical_batch_across_sizes(tmp_path):
    rng = np.random.default_rng(0)
    sweep = tmp_path / "s"
    runs = {(n, B): _write_scaling_run(sweep, n, B, rng) for n in SIZES for B in BATCHES}
    planned = {
        "name": "N6.4e7-D1e6-B32-lr1e-3-s0-planned0",
        "n_params": 6.4e7,
        "tokens": 1e6,
        "batch_size": 32,
    }
    plan = [
        {"name": r.name, "n_params": n, "tokens": (12800 // B) * B * SEQ, "batch_size": B}
        for (n, B), r in runs.items()
    ]
    (sweep / "plan.json").write_text(json.dumps({"runs": [*plan, planned]}))
    SweepFitter(sweep, log=lambda s: None).step()
    law = json.loads((sweep / "sweep_law.json").read_text())
    b = law["cbs_scaling"]
    assert "error" not in b, b.get("error")
    assert b["of"] == "cbs_predicted" and b["source"] == "batch-sweep law" and b["unit"] == "tokens"
    # the variable: the loss (the tokens and the parameters alone predict a held-out size far worse)
    assert "loss" in b["exponents"] and b["exponents"]["loss"] == pytest.approx(-4.0, abs=0.3)
    assert abs(b["exponents"].get("params", 0.0)) < 0.1
    assert b["held_out_rmse_log"] < b["loso_rmse"]["params"] / 5
    # D_min of a held-out size is unknown: with 3 sizes no fold has the 3 sizes its L(N, D_min) law needs
    assert not any("tokens" in f for f in b["loso_rmse"]) and b["tokens_known"] is False
    assert b["held_out_rmse_log"] == b["loso_rmse"][b["form"]] == min(b["loso_rmse"].values())
    assert b["sizes"] == list(SIZES) and b["n_sweeps"] == 12 and b["n_excluded"] == 0
    # every run, finished or planned, has its prediction in tokens and sequences
    assert set(b["runs"]) == {r.name for r in runs.values()} | {planned["name"]}
    for r in runs.values():
        e = b["runs"][r.name]
        assert e["at"] == "final loss" and e["low"] < e["value"] < e["high"]
        assert e["value"] == pytest.approx(e["value_sequences"] * SEQ) and not e["extrapolated"]
        # both predictions kept, each named: the calibrated noise scale's beside the batch-sweep law's
        assert "calibrated gns_b_simple" in e["cbs_predicted_calibrated"]["source"]
        assert law["cbs_predicted"]["runs"][r.name]["source"] == e["cbs_predicted_calibrated"]["source"]
    # the largest measured size: within 20% of the truth at each run's final loss, inside the interval
    for B in BATCHES:
        e = b["runs"][runs[(SIZES[-1], B)].name]
        truth = float(_b_noise(e["loss"]))
        assert e["value_sequences"] == pytest.approx(truth, rel=0.2)
        assert e["low_sequences"] <= truth <= e["high_sequences"]
    # the largest planned run (no folder yet) is named; its loss would come from the sweep's Chinchilla law,
    # which these runs cannot give: every one trains the same 12800 x 64 tokens, so the data term is a
    # constant beside E (an optimizer used to stop anywhere there: beta <= 0 with older scipy, 0.50 with 1.17)
    big = b["largest"]
    assert big["run"] == planned["name"] and "value" not in big
    assert "chinchilla law is not fitted" in big["error"] and "have D = 819200" in big["error"]
    assert "have D = 819200" in law["chinchilla"]["error"]
    # at a given loss (e.g. a usable law's), the planned size is predicted from the three measured ones
    from scaling_train.fitter.cbs import cbs_scaling_block

    target = {"run": planned["name"], "N": 6.4e7, "D": 1e6, "batch_size": 32, "loss": 2.7, "at": "given"}
    e = cbs_scaling_block(law["cbs_measured"], [target])["largest"]
    truth = float(_b_noise(2.7))  # = 49.9 sequences
    assert e["extrapolated"] and e["value_sequences"] == pytest.approx(truth, rel=0.2)
    assert e["low_sequences"] <= truth <= e["high_sequences"] and e["source"] == "batch-sweep law"

    # each run's predictions.json carries the across-size prediction at its own size and loss
    one = json.loads((runs[(SIZES[1], 16)] / "predictions.json").read_text())
    assert one["cbs_scaling"]["value"] == b["runs"][runs[(SIZES[1], 16)].name]["value"]
    assert one["cbs_scaling"]["source"] == "batch-sweep law" and one["cbs_predicted"]["value"] > 0

    from scaling_train.report import write_report

    html = write_report(sweep, n_bootstrap=0).read_text()
    assert "cbs_scaling (diamonds): the law of the batch sweeps across sizes" in html
    assert f"the largest planned run {planned['name']}: no loss to predict at" in html


def test_cbs_scaling_says_why_with_one_size(tmp_path):
    rng = np.random.default_rng(2)
    sweep = tmp_path / "s"
    for B in BATCHES:
        _write_scaling_run(sweep, SIZES[0], B, rng)
    SweepFitter(sweep, log=lambda s: None).step()
    law = json.loads((sweep / "sweep_law.json").read_text())
    b = law["cbs_scaling"]
    assert "over 1 size(s); the law needs bounded sweeps of >= 2 sizes" in b["error"]
    assert b["sizes"] == [SIZES[0]] and b["n_sweeps"] == 4 and "runs" not in b
    assert len([m for m in law["cbs_measured"] if m["source"] == "batch_sweep"]) == 4  # still measured
    one = json.loads(next(sweep.glob("*/predictions.json")).read_text())
    assert "the law needs bounded sweeps of >= 2 sizes" in one["cbs_scaling"]


def test_batch_sweeps_follow_the_lr_rule_of_the_batch_axis():
    """Runs of one size form a batch sweep when their peak LR is one (lr_batch none), or follows the batch
    by its square root or linearly (rules.lr_batch sqrt / linear; LRs rounded to 3 digits as a plan writes
    them); a run off every rule, or two LR levels, never mix into one sweep."""
    from types import SimpleNamespace

    from scaling_train.fitter.cbs import _lr_batch_groups

    def runs(lr_of, batches=(8, 16, 32, 64)):
        return [
            SimpleNamespace(name=f"B{b}-{lr_of(b):.3g}", config={"train": {"batch_size": b}, "optim": {"lr": float(f"{lr_of(b):.3g}")}})
            for b in batches
        ]  # fmt: skip

    def got(rs):
        return sorted((rule, sorted(t.name for t in g)) for rule, g in _lr_batch_groups(rs))

    for rule, f in (
        ("none", lambda b: 1.0),
        ("sqrt", lambda b: (b / 16) ** 0.5),
        ("linear", lambda b: b / 16),
    ):
        rs = runs(lambda b, f=f: 3e-3 * f(b))
        assert got(rs) == [(rule, sorted(t.name for t in rs))]
    two = runs(lambda b: 1e-3, (8, 16, 32)) + runs(lambda b: 2e-3, (8, 16, 32))
    assert [(r, len(g)) for r, g in got(two)] == [("none", 3), ("none", 3)]
    off = runs(lambda b: 3e-3 * (b / 16) ** 0.5) + runs(lambda b: 9e-3, (16,))
    assert got(off) == [("sqrt", sorted(t.name for t in off[:4]))]  # the 9e-3 run joins no sweep
    assert got(runs(lambda b: 1e-3, (8, 16))) == []  # two batches are no sweep
