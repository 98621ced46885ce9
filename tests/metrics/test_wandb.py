"""W&B offline: the run folder's W&B log holds the expected keys, axes, group, and a resumed run keeps its id."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("wandb")

from tests.fixtures.training import finished_wandb_records, history_rows, run_config, train  # noqa: E402


def test_wandb_offline_run_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = run_config(tmp_path / "sw" / "r", max_steps=12, sweep="sw", **{"metrics.wandb.mode": "offline"})
    train(cfg)
    run_id = json.loads((tmp_path / "sw" / "r" / "wandb_run.json").read_text())["id"]
    files = sorted((tmp_path / "sw" / "r" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1 and run_id in files[0].name
    recs = finished_wandb_records(files[0])
    run = [r.run for r in recs if r.WhichOneof("record_type") == "run"][0]
    assert run.run_id == run_id and run.run_group == "sw" and run.display_name == "r"
    metrics = {
        r.metric.name or r.metric.glob_name: r.metric.step_metric
        for r in recs
        if r.WhichOneof("record_type") == "metric"
    }
    assert metrics.get("*") == "tokens" and metrics.get("flops/*") == "flops"
    hist = history_rows(recs)
    assert [h["step"] for h in hist] == [4, 8, 12]
    for key in (
        "loss",
        "tokens",
        "flops",
        "tok_nll",
        "tok_acc",
        "gns_sq_small",
        "flops/loss",
        "tok_nll_pos/0",
    ):
        assert key in hist[-1], key
    assert hist[-1]["tokens"] == 12 * cfg.tokens_per_step
    assert hist[-1]["flops/loss"] == hist[-1]["loss"]
    assert "eval_loss" in hist[-1]
    # read while W&B still appends (a CI failure: "Wire format was corrupt"): a file cut anywhere gives the
    # records before the cut, never a half-read one
    from scaling_train.metrics.wandb_sink import read_wandb_records

    data = files[0].read_bytes()
    full = [r.SerializeToString() for r in recs]
    cut_file = tmp_path / "cut.wandb"
    for cut in (8, 20, len(data) // 3, len(data) // 2, len(data) - 3):
        cut_file.write_bytes(data[:cut])
        got = [r.SerializeToString() for r in read_wandb_records(cut_file)]
        assert got == full[: len(got)] and len(got) < len(full), cut
