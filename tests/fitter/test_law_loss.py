"""metrics.law_loss: eval -- the fitter, the law points and the report use the validation loss of each evaluation
(the same held-out tokens every time) instead of the noisy training loss of each flush."""

from __future__ import annotations

import json
import shutil

import pytest

from scaling_train.fitter.core import SweepFitter
from scaling_train.report.data import load_sweep
from tests.fixtures.training import partial_copy, run_config, train


@pytest.fixture(scope="module")
def eval_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_sweep")
    for lr in ("1e-3", "3e-3"):
        train(run_config(root / f"lr{lr}", max_steps=24, **{"optim.lr": lr, "train.eval_every": 4, "train.log_every": 2,
                                                            "metrics.law_loss": "eval"}))  # fmt: skip
    return root


def test_fitter_predicts_and_reports_the_validation_loss(eval_sweep, tmp_path):
    sw, part, rows = partial_copy(eval_sweep, tmp_path / "sw", upto=16)
    kept = [r for r in rows if r["step"] <= 16]
    assert sum("eval_loss" in r for r in kept) == 4 and len(kept) > 4  # flushes every 4 steps, evals too
    f = SweepFitter(sw, log=lambda s: None)
    f.step()
    # the curve of the running run is its evaluations only
    steps, losses = f.tails["partial"].loss_points(24)
    assert steps.tolist() == [r["step"] for r in kept if "eval_loss" in r]
    assert losses.tolist() == [r["eval_loss"] for r in kept if "eval_loss" in r]
    p = json.loads((part / "predictions.json").read_text())
    assert p["law_loss"] == "eval_loss" and p["observed_loss"] == kept[-1]["eval_loss"]
    assert p["status"] == "running" and p["low"] <= p["loss"] <= p["high"]
    # a finished run's loss is its last validation loss (DONE's final_eval_loss), not the training loss
    done = json.loads((sw / "lr1e-3" / "predictions.json").read_text())
    final = json.loads((sw / "lr1e-3" / "DONE").read_text())
    assert done["status"] == "done" and done["loss"] == pytest.approx(final["final_eval_loss"])
    assert done["loss"] != pytest.approx(final["final_loss"])
    law = json.loads((sw / "sweep_law.json").read_text())
    assert {q["run"]: q["loss"] for q in law["points"]}["lr1e-3"] == pytest.approx(final["final_eval_loss"])
    # the report reads the same column
    data = load_sweep(sw)
    r = next(x for x in data.runs if x.name == "lr1e-3")
    assert r.law_column == "eval_loss" and r.final_loss == pytest.approx(final["final_eval_loss"])


def test_training_loss_stays_the_default(eval_sweep, tmp_path):
    sw = tmp_path / "sw"
    train(run_config(sw / "plain", max_steps=8))
    f = SweepFitter(sw, log=lambda s: None)
    f.step()
    t = f.tails["plain"]
    assert t.law_column == "loss"
    done = json.loads((sw / "plain" / "predictions.json").read_text())
    assert done["loss"] == json.loads((sw / "plain" / "DONE").read_text())["final_loss"]
    assert "law_loss" not in done


def test_sweep_law_waits_for_an_ended_run_or_its_interval(eval_sweep, tmp_path, monkeypatch):
    from scaling_train.fitter import core

    sw, part, rows = partial_copy(eval_sweep, tmp_path / "sw", upto=12)
    f = SweepFitter(sw, log=lambda s: None)
    f.step()
    first = (sw / "sweep_law.json").stat().st_mtime_ns
    # the running run moves on: its prediction is refitted at once, the law is not (within LAW_EVERY_S)
    with open(part / "metrics.jsonl", "a") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in rows if 12 < r["step"] <= 16))
    assert "partial" in f.step()
    assert json.loads((part / "predictions.json").read_text())["step"] == 16
    assert (sw / "sweep_law.json").stat().st_mtime_ns == first
    # ... until the interval has passed and the run's prediction changed (its next evaluation, step 20: the
    # training rows between two leave both as they were)
    monkeypatch.setattr(core, "LAW_EVERY_S", 0.0)
    monkeypatch.setattr(f, "_law_cost", 0.0)  # its last rewrite's wall time, x LAW_COST_FACTOR, also gates it
    with open(part / "metrics.jsonl", "a") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in rows if 16 < r["step"] <= 18))
    assert f.step() == set() and (sw / "sweep_law.json").stat().st_mtime_ns == first
    with open(part / "metrics.jsonl", "a") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in rows if 18 < r["step"] <= 20))
    f.step()
    second = (sw / "sweep_law.json").stat().st_mtime_ns
    assert second > first and f._law_cost > 0
    # a law that costs much waits 10x its cost: on 2 cores the fitter shares the CPU with the runs
    f._law_cost = 1e6
    with open(part / "metrics.jsonl", "a") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in rows if r["step"] > 20))
    assert "partial" in f.step() and (sw / "sweep_law.json").stat().st_mtime_ns == second
    # but a run ended: the law follows at once
    shutil.copy(sw / "lr3e-3" / "DONE", part / "DONE")
    f.step()
    law = json.loads((sw / "sweep_law.json").read_text())
    assert (sw / "sweep_law.json").stat().st_mtime_ns > second
    assert {q["run"]: q["source"] for q in law["points"]}["partial"] == "observed"


def test_law_burn_in_reaches_every_fit_of_the_run(tmp_path):
    """metrics.law_burn_in: the run accepts it, and the fitter's curve of the run (its own prediction, and the
    reference it is for others) carries it, so the fits leave out the points before that step."""
    from scaling_train.laws.curve import _prepare
    from scaling_train.metrics.config import MetricsConfig, law_burn_in

    sw = tmp_path / "sw"
    train(run_config(sw / "burn", max_steps=24, **{"train.log_every": 2, "metrics.law_burn_in": 10}))
    f = SweepFitter(sw, log=lambda s: None)
    f.step()
    curve = f._curve(f.tails["burn"])
    assert curve.burn_in == 10 and law_burn_in(f.tails["burn"].config) == 10
    kept = _prepare(curve, max_points=500, n_bins=8).t
    assert kept.min() >= 10 and curve.steps.min() < 10  # the early points exist and are not fitted
    assert curve.observed_until(16).burn_in == 10
    plain = tmp_path / "plain"
    train(run_config(plain / "p", max_steps=8))
    g = SweepFitter(plain, log=lambda s: None)
    g.step()
    assert g._curve(g.tails["p"]).burn_in == 0
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match=rf"metrics.law_burn_in={bad!r} must be an integer step >= 0"):
            MetricsConfig(law_burn_in=bad)


def test_a_running_reference_refits_nobody_until_it_is_done(eval_sweep, tmp_path):
    """predict_final_loss leaves running references out, so a second running run's new point refits only
    that run (with 2 runs in flight the fitter did twice the predictions for nothing); its DONE refits the
    others, which now use it."""
    sw, part, rows = partial_copy(eval_sweep, tmp_path / "sw", upto=12)
    other = sw / "other"
    shutil.copytree(sw / "lr1e-3", other)
    (other / "DONE").unlink()
    full = (other / "metrics.jsonl").read_text().splitlines(keepends=True)
    (other / "metrics.jsonl").write_text("".join(full[: len(full) // 2]))
    f = SweepFitter(sw, log=lambda s: None)
    f.step()
    before = json.loads((part / "predictions.json").read_text())
    assert "other" in before["running_references_ignored"]
    (other / "metrics.jsonl").write_text("".join(full))  # its points up to the end, no DONE yet
    assert f.step() == {"other"}
    shutil.copy(sw / "lr1e-3" / "DONE", other / "DONE")
    assert "partial" in f.step()
    after = json.loads((part / "predictions.json").read_text())
    assert "other" in after["references"] and after["updated"] > before["updated"]


def test_state_is_saved_at_most_every_interval_and_when_follow_returns(eval_sweep, tmp_path):
    """The fitter's state (every run's rows) is rewritten at most every STATE_EVERY_S while following: on every
    poll with a new row it was ~40% of the live fitter's CPU. Each save is one consistent snapshot, and
    ``follow`` saves what it read when it returns."""
    sw, part, rows = partial_copy(eval_sweep, tmp_path / "sw", upto=12)
    state = sw / ".fitter_state.json"
    f = SweepFitter(sw, log=lambda s: None)
    f.step()
    first = json.loads(state.read_text())["runs"]["partial"]
    assert first["offset"] == (part / "metrics.jsonl").stat().st_size
    with open(part / "metrics.jsonl", "a") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in rows if 12 < r["step"] <= 16))
    assert "partial" in f.step()
    assert json.loads(state.read_text())["runs"]["partial"] == first  # within the interval: not rewritten
    f.follow(interval=0.0, max_polls=f.polls + 1)
    last = json.loads(state.read_text())["runs"]["partial"]
    assert last["offset"] == (part / "metrics.jsonl").stat().st_size and last["rows"][-1][0] == 16
