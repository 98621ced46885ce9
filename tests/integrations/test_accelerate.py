"""accelerate users: the tracker writes the run folder and the in-process fitter predicts the final loss."""

from __future__ import annotations

import json
import math

import pytest

accelerate = pytest.importorskip("accelerate")

from scaling_train.integrations import ScalingLawTracker  # noqa: E402
from scaling_train.metrics.jsonl import read_jsonl  # noqa: E402


def _loss(step: int, lr_area: float) -> float:
    return 2.0 + 3.0 * (1 + lr_area) ** -0.5  # a smooth, decreasing curve


def test_tracker_writes_rows_and_predictions(tmp_path):
    T = 40
    lr = [1e-3 * min(1.0, (k + 1) / 4) for k in range(T)]
    tr = ScalingLawTracker(tmp_path / "run", total_steps=T, lr_schedule=lr, params=1_000_000)
    acc = accelerate.Accelerator(log_with=[tr], cpu=True)
    acc.init_trackers("proj", config={"lr": 1e-3})
    area = 0.0
    for step in range(1, T + 1):
        area += lr[step - 1] * 1000
        if step % 4 == 0:
            acc.log({"loss": _loss(step, area), "tokens": step * 512}, step=step)
        if step == 20:
            acc.log({"loss": 99.0, "tokens": 0}, step=20)  # a repeated step (resumed loop) is dropped
            pred = tr.prediction
            assert pred["status"] == "running" and pred["low"] <= pred["loss"] <= pred["high"]
    acc.end_training()
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl").rows
    assert [r["step"] for r in rows] == list(range(4, T + 1, 4)) and all(r["loss"] < 99 for r in rows)
    assert json.loads((tmp_path / "run" / "hparams.json").read_text()) == {"lr": 1e-3}
    final = json.loads((tmp_path / "run" / "predictions.json").read_text())
    assert final["status"] == "done" and math.isclose(final["loss"], rows[-1]["loss"])
