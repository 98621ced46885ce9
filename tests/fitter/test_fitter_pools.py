"""The fitter on data pools (issue 18): runs on pools get the pool law (``laws.fit_data_pools``) in
``sweep_law.json``'s ``data_pools`` block; errors go into the block, never out of the fitter."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml

from scaling_train.fitter.core import SweepFitter
from tests.fixtures.pools import TRUE, write_pooled_run, write_pooled_sweep
from tests.fixtures.training import run_config, train

POOLS = (
    "[{name: clean, tokens: 2560}, {name: noisy, tokens: 12800, noise: 0.3}]"  # 40 and 200 sequences of 64
)


def _law(sweep) -> dict:
    SweepFitter(sweep, log=lambda s: None).step()
    return json.loads((sweep / "sweep_law.json").read_text())


def test_pool_law_from_runs_drawn_from_a_known_law(tmp_path):
    """24 finished runs (2 sizes x 4 budgets x clean / noisy / half-half) whose held-out losses follow a known
    pool law with 1% noise: the block recovers the noisy pool's utility and picks the true law's best mix."""
    law = _law(write_pooled_sweep(tmp_path / "s"))
    assert law["law"] == "data_pools" and "train on data pools (clean, noisy)" in law["law_reason"]
    dp = law["data_pools"]
    assert "error" not in dp and dp["reference"] == "clean" and dp["n_points"] == 24
    assert dp["loss_used"] == "eval_loss" and dp["mixes"] == ["clean", "noisy", "clean:0.5+noisy:0.5"]
    q = dp["pools"]["noisy"]["utility"]
    assert 0.15 < q < 0.6 and dp["ci"]["utility[noisy]"][0] <= q <= dp["ci"]["utility[noisy]"][1]
    assert (
        dp["pools"]["clean"]["identified"] and not dp["pools"]["noisy"]["identified"]
    )  # noisy never repeats
    assert dp["fit_error"]["mean_abs"] < 0.02 and dp["fit_error"]["max_abs"] < 0.06
    c_max = max(6 * r["N"] * r["D"] for r in dp["runs"])
    assert [b["compute"] for b in dp["best"]] == pytest.approx([c_max, 10 * c_max])
    for b in dp["best"]:
        assert set(b["candidates"]) == set(dp["mixes"]) and 0.0 <= b["best_share"] <= 1.0
        truth = TRUE.best(b["compute"], dp["mixes"])
        assert b["best"] == truth.best, (b, truth)
        for m, c in b["candidates"].items():
            assert c["low"] <= c["loss"] <= c["high"] and 6 * c["N"] * c["D"] == pytest.approx(b["compute"])
            assert c["loss"] == pytest.approx(truth.loss[m], rel=0.03)
    r = dp["runs"][0]
    assert (
        r["fitted"]
        and abs(r["predicted"] / r["eval_loss"] - 1) < 0.06
        and set(r["epochs"]) <= {"clean", "noisy"}
    )
    assert law["chinchilla"]["n_points"] == 24  # the rest of the law is unchanged


def test_pool_law_errors_go_into_the_block(tmp_path):
    """Too few runs, no finished run, inconsistent pools and a malformed resolved.pools: the block says what
    was wrong, the law stays Chinchilla and says why; the fitter never raises."""
    s = tmp_path / "few"
    write_pooled_run(s, 3e5, 1e5, "clean")
    write_pooled_run(s, 1e6, 1e5, "noisy")
    law = _law(s)
    assert law["law"] == "chinchilla" and "pool law could not be fitted" in law["law_reason"]
    assert "2 runs for 7 parameters" in law["data_pools"]["error"] and len(law["data_pools"]["runs"]) == 2
    s = tmp_path / "running"
    write_pooled_run(s, 3e5, 1e5, "clean", done=False)
    assert "none of the 1 run(s) on data pools has finished" in _law(s)["data_pools"]["error"]
    s = write_pooled_sweep(tmp_path / "bad", N=(3e5,), D=(1e5, 2e5))
    runs = sorted(p for p in s.iterdir() if p.is_dir())
    cfg = yaml.safe_load((runs[0] / "config.yaml").read_text())
    first = next(iter(cfg["resolved"]["pools"]))
    cfg["resolved"]["pools"][first]["unique_tokens"] *= 2  # the same pool name, another slice
    (runs[0] / "config.yaml").write_text(yaml.safe_dump(cfg))
    cfg = yaml.safe_load((runs[1] / "config.yaml").read_text())
    cfg["resolved"]["pools"] = {"clean": {"weight": "half"}}
    (runs[1] / "config.yaml").write_text(yaml.safe_dump(cfg))
    dp = _law(s)["data_pools"]
    assert f"pool {first!r} holds" in dp["error"] and "rename the pools" in dp["error"]
    assert len(dp["malformed"]) == 1 and "resolved.pools.clean" in dp["malformed"][0]
    s = tmp_path / "plain"  # no run on pools: no block at all
    shutil.copytree(tmp_path / "few", s)
    for d in s.iterdir():
        if d.is_dir():
            cfg = yaml.safe_load((d / "config.yaml").read_text())
            del cfg["resolved"]["pools"]
            (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    for f in s.glob(".fitter_state.json"):
        f.unlink()
    assert "data_pools" not in _law(s)


def test_real_pooled_runs_give_their_epochs_and_too_few_runs_an_error(tmp_path):
    """Two real tiny runs on pools (the trainer's own folders): the block lists their per-pool epochs from the
    metrics rows (20 steps x 8 sequences x 64 tokens, half from each pool) and says 2 runs are too few."""
    for i, (mix, steps) in enumerate((("clean", 10), ("clean:0.5+noisy:0.5", 20))):
        over = {"data.pools": POOLS, "data.mix": mix, "train.eval_every": 0}
        train(run_config(tmp_path / f"r{i}", max_steps=steps, **over))
    law = _law(tmp_path)
    dp = law["data_pools"]
    assert law["law"] == "chinchilla" and "2 runs for 7 parameters" in dp["error"]
    runs = {r["mix"]: r for r in dp["runs"]}
    assert set(runs) == {"clean", "clean:0.5+noisy:0.5"}
    assert runs["clean"]["epochs"] == {"clean": pytest.approx(2.0)}  # 10 x 8 x 64 = 5120 tokens of 2560
    assert runs["clean:0.5+noisy:0.5"]["epochs"] == {"clean": pytest.approx(2.0), "noisy": pytest.approx(0.4)}
    assert all(r["eval_loss"] and np.isfinite(r["eval_loss"]) for r in dp["runs"])


@pytest.mark.slow  # ~25 s on a loaded 2-core machine: 12 real tiny runs, then the report
def test_real_pooled_sweep_gets_the_pool_law_and_the_report_panel(tmp_path):
    """12 real tiny runs (2 sizes x 2 budgets x clean / noisy / half-half): the law is data_pools with a
    finite fit and a best mix at both budgets, and the report draws the Data pools panel from it."""
    from scaling_train.report import write_report

    for size in ("0.2M", "0.5M"):
        for steps in (10, 30):
            for mix in ("clean", "noisy", "clean:0.5+noisy:0.5"):
                over = {"data.pools": POOLS, "data.mix": mix, "train.eval_every": 0, "model.size": size}
                name = f"{size}-{steps}-{mix.replace(':', '').replace('+', '_')}"
                train(run_config(tmp_path / name, max_steps=steps, **over))
    law = _law(tmp_path)
    assert law["law"] == "data_pools", law.get("data_pools", {}).get("error")
    dp = law["data_pools"]
    assert (
        dp["n_points"] == 12
        and np.isfinite(dp["fit_error"]["mean_abs"])
        and dp["fit_error"]["mean_abs"] < 0.1
    )
    assert [b["best"] in dp["mixes"] for b in dp["best"]] == [True, True]
    html = write_report(tmp_path, n_bootstrap=0).read_text()
    panel = html.split("id='fig-data-pools'")[1][:400]
    assert "<img" in panel and "Not drawn" not in panel
