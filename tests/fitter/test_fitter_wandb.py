"""The fitter's own W&B run (offline): predictions and laws as they change, in the runs' group, resumed
by a restarted fitter; W&B settings taken from the runs' config.yaml."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

pytest.importorskip("wandb")

from scaling_train.metrics.jsonl import read_jsonl  # noqa: E402
from tests.fixtures.training import cli, finished_wandb_records, history_rows, run_config, train  # noqa: E402


@pytest.fixture(scope="module")
def wb_sweep(tmp_path_factory):
    """Two finished runs of sweep "wbsw" that log to W&B offline."""
    import os

    os.environ.setdefault("WANDB_SILENT", "true")
    root = tmp_path_factory.mktemp("wbsweep")
    for lr in ("1e-3", "3e-3"):
        train(
            run_config(
                root / f"lr{lr}",
                max_steps=24,
                sweep="wbsw",
                **{"optim.lr": lr, "metrics.wandb.mode": "offline"},
            )
        )
    return root


def _fit(sw, *extra):
    p = cli("fit", str(sw), *extra, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    return out


def _fitter_records(sw, run_id):
    files = sorted((sw / "wandb").glob(f"offline-run-*/run-{run_id}.wandb"))
    return files, [rec for f in files for rec in finished_wandb_records(f)]


@pytest.mark.slow  # ~11 s on a loaded 2-core machine
def test_fitter_logs_predictions_and_laws_to_wandb(wb_sweep, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    sw = tmp_path / "sw"
    shutil.copytree(wb_sweep, sw)
    part = sw / "partial"  # a running run: the first 3 of 6 rows
    shutil.copytree(sw / "lr3e-3", part)
    (part / "DONE").unlink()
    shutil.rmtree(part / "wandb")
    rows = read_jsonl(part / "metrics.jsonl").rows
    (part / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))

    out = _fit(sw, "--follow", "--max-polls", "1", "--interval", "0.1", "--no-report")
    run_id = json.loads((sw / "wandb_fitter.json").read_text())["id"]
    assert f"W&B: predictions and laws -> run {run_id} (offline, group wbsw)" in out
    files, recs = _fitter_records(sw, run_id)
    assert len(files) == 1
    run = [r.run for r in recs if r.WhichOneof("record_type") == "run"][0]
    assert run.run_group == "wbsw" and run.job_type == "fitter" and run.display_name == "wbsw-fitter"
    metrics = {
        r.metric.name or r.metric.glob_name: r.metric.step_metric
        for r in recs
        if r.WhichOneof("record_type") == "metric"
    }
    assert metrics.get("*") == "fit/hours"
    hist = history_rows(recs)
    first = hist[0]
    pred = json.loads((part / "predictions.json").read_text())
    assert first["pred/partial/loss"] == pytest.approx(pred["loss"])
    assert first["pred/partial/low"] <= first["pred/partial/loss"] <= first["pred/partial/high"]
    assert first["pred/partial/observed"] == 0 and first["pred/lr1e-3/observed"] == 1
    assert first["pred/partial/progress"] == pytest.approx(12 / 24)
    assert first["law/n_points"] == 3 and not any(
        k.startswith("law/chinchilla") for k in first
    )  # 3 < 5 points

    # the run finishes; a restarted one-pass fitter continues the same W&B run with the observed loss
    (part / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (part / "DONE").write_text("{}")
    _fit(sw)
    assert json.loads((sw / "wandb_fitter.json").read_text())["id"] == run_id
    files, recs = _fitter_records(sw, run_id)
    assert len(files) == 2  # a second offline segment of the same run id
    last = history_rows(recs)[-1]
    assert last["pred/partial/observed"] == 1 and last["pred/partial/loss"] == pytest.approx(rows[-1]["loss"])


def test_fitter_wandb_auto_stays_off_without_wandb_runs(tmp_path):
    sw = tmp_path / "sw"
    train(run_config(sw / "r", max_steps=8))
    out = _fit(sw)
    assert "W&B" not in out and not (sw / "wandb_fitter.json").exists() and not (sw / "wandb").exists()


def test_find_runs_skips_wandb_folders_inside_the_sweep_only(tmp_path):
    from scaling_train.fitter.tail import find_runs

    sw = tmp_path / "wandb" / "sweeps" / "sw"  # a sweep kept under a folder that happens to be named wandb
    for rel in ("a", "group/b", "wandb/offline-run-x", "a/checkpoints"):
        (sw / rel).mkdir(parents=True, exist_ok=True)
        (sw / rel / "config.yaml").write_text("{}\n")
    assert [p.relative_to(sw).as_posix() for p in find_runs(sw)] == ["a", "group/b"]
