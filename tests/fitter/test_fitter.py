"""The online fitter: incremental tails, malformed/diverged runs, runs added mid-way, kill -9 of a run and
of the fitter itself, restart of both."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from scaling_train.fitter.core import SweepFitter
from scaling_train.metrics.jsonl import read_jsonl
from tests.fixtures.training import cli, overrides, partial_copy, run_config, train


def test_predictions_law_malformed_diverged_and_new_runs(sweep, tmp_path):
    # a running run: the first 12 of 24 steps (3 rows), plus a malformed line
    sw, part, rows = partial_copy(sweep, tmp_path / "sw", upto=12)
    assert [r["step"] for r in read_jsonl(part / "metrics.jsonl").rows] == [r["step"] for r in rows[:3]]
    with open(part / "metrics.jsonl", "a") as f:
        f.write("{not json\n")
    f = SweepFitter(sw, log=lambda s: None)
    f.step()
    p = json.loads((part / "predictions.json").read_text())
    assert p["status"] == "running" and p["malformed_lines"] == 1
    assert p["low"] <= p["loss"] <= p["high"] and set(p["references"]) == {"lr1e-3", "lr3e-3"}
    # the predicted remaining curve and its band, ending at the predicted final loss; candidates named
    cur = p["curve"]
    assert cur["step"][-1] == p["total_steps"] and cur["loss"][-1] == pytest.approx(p["loss"])
    assert all(lo <= v <= hi for lo, v, hi in zip(cur["low"], cur["loss"], cur["high"]))
    assert "same_size" in p["mode"] and abs(sum(p["weights"].values()) - 1) < 1e-9
    # the live record: one line per published prediction, the same numbers as predictions.json
    log = read_jsonl(part / "predictions.jsonl").rows
    assert len(log) == 1 and log[0]["loss"] == pytest.approx(p["loss"]) and log[0]["step"] == p["step"]
    assert log[0]["fraction"] == pytest.approx(p["step"] / p["total_steps"]) and log[0]["references"]
    assert not (sw / "lr1e-3" / "predictions.jsonl").exists()  # finished runs publish no prediction
    done = json.loads((sw / "lr1e-3" / "predictions.json").read_text())
    assert (
        done["status"] == "done"
        and done["loss"] == read_jsonl(sw / "lr1e-3" / "metrics.jsonl").rows[-1]["loss"]
    )
    law = json.loads((sw / "sweep_law.json").read_text())
    assert {q["run"]: q["source"] for q in law["points"]}["partial"] == "predicted"
    assert (
        law["malformed_lines"] == {"partial": 1} and "error" in law["chinchilla"]
    )  # 3 points < 5 parameters
    # the run goes on: only the new bytes are read
    off = f.tails["partial"].offset
    with open(part / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps(rows[3]) + "\n")
    f.step()
    assert f.tails["partial"].offset == off + len(json.dumps(rows[3])) + 1
    assert json.loads((part / "predictions.json").read_text())["step"] == rows[3]["step"]
    assert [r["step"] for r in read_jsonl(part / "predictions.jsonl").rows] == [
        rows[2]["step"],
        rows[3]["step"],
    ]
    # a diverged run added mid-way is picked up, marked and left out of the law
    div = sw / "diverged"
    shutil.copytree(sw / "lr1e-3", div)
    (div / "DONE").unlink()
    with open(div / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"step": 25, "loss": "nan"}) + "\n")
    f.step()
    assert json.loads((div / "predictions.json").read_text())["status"] == "diverged"
    law = json.loads((sw / "sweep_law.json").read_text())
    assert law["diverged"] == ["diverged"] and "diverged" not in {q["run"] for q in law["points"]}


def _wait_rows(path, n, proc, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if path.exists() and len(read_jsonl(path).rows) >= n:
            return
        assert proc.poll() is None, "process ended early"
        time.sleep(0.05)
    raise TimeoutError(path)


@pytest.mark.slow  # ~24 s on a loaded 2-core machine
def test_kill9_run_and_fitter_then_restart(sweep, tmp_path):
    sw = tmp_path / "sw"
    shutil.copytree(sweep / "lr1e-3", sw / "ref")
    run_dir = sw / "run"
    args = overrides(run_dir, max_steps=48, ckpt_every=8, **{"train.log_every": 2, "optim.lr": "1e-3"})
    args = [a.replace("train.log_every=4", "train.log_every=2") for a in args]
    fit_args = ["fit", str(sw), "--follow", "--interval", "0.1", "--until-done"]
    train_p = cli(
        "train", *args, stdout=open(tmp_path / "train1.log", "w"), stderr=open(tmp_path / "train1.err", "w")
    )
    _wait_rows(run_dir / "metrics.jsonl", 1, train_p)  # --until-done would exit at once with only "ref" there
    fit_p = cli(*fit_args, stdout=open(tmp_path / "fit1.log", "w"), stderr=open(tmp_path / "fit1.err", "w"))
    _wait_rows(run_dir / "metrics.jsonl", 9, train_p)  # past the step-16 checkpoint
    os.kill(train_p.pid, signal.SIGKILL)  # rows after the last checkpoint will be rolled back on restart
    t0 = time.time()
    while not (run_dir / "predictions.json").exists() and time.time() - t0 < 120:
        time.sleep(0.05)
    time.sleep(0.3)
    os.kill(fit_p.pid, signal.SIGKILL)  # the fitter mid-way (following, between or inside refits)
    train_p.wait(), fit_p.wait()
    pred = json.loads((run_dir / "predictions.json").read_text())  # whole, never torn
    assert pred["status"] == "running"
    assert len(read_jsonl(run_dir / "metrics.jsonl").rows) < 24, "the run finished before it was killed"
    # restart both with the same commands
    train_p = cli(
        "train", *args, stdout=open(tmp_path / "train2.log", "w"), stderr=open(tmp_path / "train2.err", "w")
    )
    fit_p = cli(*fit_args, stdout=open(tmp_path / "fit2.log", "w"), stderr=open(tmp_path / "fit2.err", "w"))
    assert train_p.wait(timeout=300) == 0, (tmp_path / "train2.err").read_text()
    assert fit_p.wait(timeout=120) == 0, (tmp_path / "fit2.err").read_text()
    res = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in res.rows] == list(range(2, 49, 2)) and res.malformed == 0 and not res.torn_tail
    # the resumed run's rows equal an uninterrupted run's bitwise (batch order and state are restored
    # exactly, as tests/train/test_trainer.py::test_kill9_and_resume_equals_uninterrupted checks)
    ref = run_config(
        tmp_path / "clean", max_steps=48, ckpt_every=8, **{"train.log_every": 2, "optim.lr": "1e-3"}
    )
    train(ref)
    clean = read_jsonl(tmp_path / "clean" / "metrics.jsonl").rows
    assert [r["loss"] for r in res.rows] == [r["loss"] for r in clean]
    # the restarted fitter continued from its saved offsets and ends with the file's rows, no duplicates
    state = json.loads((sw / ".fitter_state.json").read_text())["runs"]["run"]
    assert [s for s, _ in state["rows"]] == list(range(2, 49, 2))
    assert state["offset"] == (run_dir / "metrics.jsonl").stat().st_size
    pred = json.loads((run_dir / "predictions.json").read_text())
    assert pred["status"] == "done" and pred["step"] == 48 and math.isfinite(pred["loss"])
    json.loads((sw / "sweep_law.json").read_text())


def test_isoflop_section_on_a_synthetic_isoflop_sweep(tmp_path):
    """Finished runs on an IsoFLOP grid drawn from a known Chinchilla law: the sweep law carries the
    IsoFLOP exponents (regression: the fitter once read attributes IsoFLOPFit does not have)."""
    from tests.fixtures.synth import write_sweep

    sweep = write_sweep(tmp_path / "iso")
    fitter = SweepFitter(sweep, log=lambda s: None)
    fitter.step()
    law = json.loads((sweep / "sweep_law.json").read_text())
    iso = law["isoflop"]
    assert "error" not in iso, iso
    assert 0.3 < iso["a"] < 0.7 and 0.3 < iso["b"] < 0.7 and iso["coef_n"] > 0 and iso["coef_d"] > 0
    assert len(iso["optima"]) >= 3


def test_follow_refreshes_the_report(tmp_path):
    from scaling_train.cli import main
    from tests.fixtures.synth import write_sweep

    sweep = write_sweep(tmp_path / "s", runs=[{"N": 1e5, "D": 3e5, "status": "partial", "fraction": 0.5}])
    argv = ["fit", str(sweep), "--follow", "--max-polls", "1", "--interval", "0.01", "--wandb", "disabled"]
    assert main(argv) == 0  # the command line wires the refresh: the fitter imports no report code
    html = (sweep / "report.html").read_text()
    assert "<img" in html and "not finished" in html


def test_until_done_waits_for_planned_runs_not_started_yet(tmp_path):
    from tests.fixtures.synth import write_sweep

    sweep = write_sweep(tmp_path / "s", runs=[{"N": 1e5, "D": 3e5}])
    fitter = SweepFitter(sweep, log=lambda s: None)
    fitter.step()
    names = [p.name for p in sweep.iterdir() if (p / "config.yaml").is_file()]
    (sweep / "plan.json").write_text(json.dumps({"runs": [{"name": n} for n in names] + [{"name": "later"}]}))
    assert not fitter.all_done  # the planned run 'later' has no folder yet
    (sweep / "plan.json").write_text(json.dumps({"runs": [{"name": n} for n in names]}))
    assert fitter.all_done


def test_sweep_law_switches_to_the_data_constrained_law_when_runs_repeat_data():
    """Real multi-epoch runs (datablations, tests/data/laws): the law is the data-constrained one and says
    why; the same runs with U >= D (no repetition) keep Chinchilla."""
    import csv

    from scaling_train.fitter.core import _repetition_law

    path = Path(__file__).resolve().parents[1] / "data" / "laws" / "datablations" / "final_losses.csv"
    with path.open() as f:
        rows = list(csv.DictReader(f))
    pts = [
        {"run": f"r{i}", "N": float(r["params"]), "D": float(r["tokens"]), "U": float(r["unique_tokens"]),
         "eval_loss": float(r["val_loss"]), "loss": 0.5 * float(r["val_loss"])}
        for i, r in enumerate(rows)
    ]  # fmt: skip
    out = _repetition_law(pts)
    assert out["law"] == "data_constrained" and "repeat their training data" in out["law_reason"]
    assert len(out["repeating_runs"]) == sum(p["D"] / p["U"] > 1.05 for p in pts) > 50
    assert out["loss_used"] == "eval_loss"  # the training loss ("loss") of repeated tokens is memorisation
    import numpy as np

    from scaling_train.laws import DataConstrainedFit

    dc = out["data_constrained"]
    law = DataConstrainedFit(**{k: dc[k] for k in ("E", "A", "B", "alpha", "beta", "R_D_star", "R_N_star", "rho")},
                             objective=0.0, n_points=0, n_starts=0)  # fmt: skip
    assert (
        "span" in dc["rho_reason"] and "held" not in dc["rho_reason"] and dc["rho"] > 0.3
    )  # 10+ sizes repeat
    pred = law.predict(*(np.array([p[k] for p in pts]) for k in ("N", "D", "U")))
    err = np.median(np.abs(pred / np.array([p["eval_loss"] for p in pts]) - 1))
    assert err < 0.05, err  # fitted on val_loss, not on the halved training loss (~50% off)
    no_eval = _repetition_law([{**p, "eval_loss": None} for p in pts])
    assert no_eval["law"] == "chinchilla" and "could not be fitted" in no_eval["law_reason"]
    dc = out["data_constrained"]
    assert 0 < dc["alpha"] < 1 and 0 < dc["beta"] < 1 and dc["R_D_star"] > 1
    assert len(dc["diverged"]) >= 2  # the runs near ln(vocab) are named, not fitted
    two = [p for p in pts if p["N"] in sorted({q["N"] for q in pts})[-2:] or p["D"] <= p["U"]]
    dc2 = _repetition_law(two)["data_constrained"]
    assert dc2["rho"] == 0.0 and "span 2 sizes (< 3): rho held at 0" in dc2["rho_reason"]
    single = [{**p, "U": max(p["U"], p["D"])} for p in pts]
    assert _repetition_law(single)["law"] == "chinchilla"
    assert _repetition_law([{**p, "U": None} for p in pts])["law"] == "chinchilla"  # older runs: no U


def test_a_non_finite_prediction_is_never_published(sweep, tmp_path, monkeypatch):
    """Whatever the predictor returns, a nan is recorded as an error in predictions.json, never as a number
    and never in the live record predictions.jsonl (the adaptive policy and the report read it)."""
    from dataclasses import replace

    import scaling_train.laws as laws

    sw, part, _ = partial_copy(sweep, tmp_path / "sw", upto=12)
    real = laws.predict_final_loss
    monkeypatch.setattr(laws, "predict_final_loss", lambda *a, **k: replace(real(*a, **k), loss=float("nan")))
    SweepFitter(sw, log=lambda s: None).step()
    p = json.loads((part / "predictions.json").read_text())
    assert p["status"] == "running" and p["loss"] is None and p["low"] is None
    assert p["error"].startswith("FloatingPointError: non-finite prediction nan")
    assert not (part / "predictions.jsonl").exists()


def test_a_run_memorising_repeated_data_is_neither_predicted_nor_a_reference(sweep, tmp_path):
    """Past its first epoch a run's training loss measures memorisation (issue 18): with metrics.law_loss:
    train the fitter publishes no final-loss prediction for a run planned over > 1.05 epochs, says why, and
    leaves it out of the other runs' references."""
    import yaml

    from scaling_train.metrics.config import memorised_loss_reason

    sw, part, _ = partial_copy(sweep, tmp_path / "sw", upto=12)

    def set_epochs(run: Path, epochs: float) -> None:
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        cfg.setdefault("resolved", {})["epochs"] = epochs
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))

    set_epochs(sw / "lr3e-3", 8.0)  # a finished run that repeated its data 8 times
    f = SweepFitter(sw, log=lambda s: None)
    f.step()
    p = json.loads((part / "predictions.json").read_text())
    assert p["loss"] is not None and p["references"] == ["lr1e-3"]
    n_published = len(read_jsonl(part / "predictions.jsonl").rows)
    set_epochs(part, 8.0)
    f = SweepFitter(sw, log=lambda s: None)
    f.step()
    p = json.loads((part / "predictions.json").read_text())
    assert p["status"] == "running" and p["loss"] is None and "memorisation" in p["error"]
    assert "8 epochs planned" in p["error"]
    assert len(read_jsonl(part / "predictions.jsonl").rows) == n_published  # nothing more published
    # the report does not replay a prediction for it either (a finished run without the fitter's record)
    from scaling_train.report.analysis import replay_history
    from scaling_train.report.data import load_sweep

    runs = {r.name: r for r in load_sweep(sw).runs}
    assert replay_history(runs["lr3e-3"]) == [] and replay_history(runs["lr1e-3"])
    # the rule itself: only the training loss, only past 1.05 epochs, never for a run on data pools
    cfg = {"resolved": {"epochs": 8.0}}
    assert memorised_loss_reason(cfg) and memorised_loss_reason({**cfg, "metrics": {"law_loss": "train"}})
    assert memorised_loss_reason({**cfg, "metrics": {"law_loss": "eval"}}) is None
    assert memorised_loss_reason({"resolved": {"epochs": 1.04}}) is None
    assert memorised_loss_reason({"resolved": {"epochs": 8.0, "pools": {"a": {}}}}) is None
    assert memorised_loss_reason({}) is None and memorised_loss_reason(None) is None
    # the law's own "repeated" threshold (laws sit below metrics, so it is restated there) is the same
    from scaling_train.laws.data_constrained import REPEATED_EPOCHS
    from scaling_train.metrics.config import REPEAT_EPOCHS

    assert REPEATED_EPOCHS == REPEAT_EPOCHS
