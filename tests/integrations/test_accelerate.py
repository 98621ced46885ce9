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


def test_tracker_imports_without_transformers():
    """The accelerate tracker needs accelerate only, not the ``hf`` extra (transformers)."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['transformers'] = None\n"  # any `import transformers` now raises
        "from scaling_train.integrations import ScalingLawTracker\n"
        "from scaling_train.integrations.meta import count_params, write_run_meta\n"
        "assert sys.modules['transformers'] is None\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]


def _run(script, run_dir, nproc: int) -> list[dict]:
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    pre = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)] if nproc > 1 else []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    res = subprocess.run(
        [sys.executable, *pre, str(script), str(run_dir)], env=env, capture_output=True, text=True, timeout=600,
        cwd=repo,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return read_jsonl(run_dir / "metrics.jsonl").rows


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    from pathlib import Path

    run_dir = tmp_path_factory.mktemp("acc") / "one"
    rows = _run(Path(__file__).with_name("accelerate_script.py"), run_dir, 1)
    return rows, json.loads((run_dir / "manual.json").read_text())


def test_watch_gives_token_stats_and_noise_scale(one_process):
    rows, manual = one_process
    assert [r["step"] for r in rows] == [2, 4, 6, 8]
    for i, r in enumerate(rows):
        win = manual[2 * i : 2 * i + 2]  # the two optimizer steps of this row's window
        # both square the same float32 gradients in float64 (watch.AccumProbe), in another order: ~eps64
        assert r["gns_sq_small"] == pytest.approx(sum(m[0] for m in win) / 2, rel=1e-12)
        assert r["gns_sq_big"] == pytest.approx(sum(m[1] for m in win) / 2, rel=1e-12)
        assert r["tok_nll"] == pytest.approx(r["loss"], rel=1e-4)  # the model's loss: mean over targets
        assert r["tok_count"] == 2 * 8 * 31 and r["tokens"] == (i + 1) * 2 * 8 * 31
        assert 0 <= r["tok_acc"] <= 1 and sum(r["tok_nll_hist"]) == pytest.approx(1.0)
    assert math.isfinite(rows[-1]["gns_b_simple"]) and rows[-1]["gns_b_simple"] > 0


@pytest.mark.multiproc
@pytest.mark.slow
def test_watch_under_ddp_matches_one_process(tmp_path, one_process):
    from pathlib import Path

    one, _ = one_process
    ddp = _run(Path(__file__).with_name("accelerate_script.py"), tmp_path / "ddp", 2)
    assert [r["step"] for r in ddp] == [r["step"] for r in one]
    for a, b in zip(ddp, one):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["tokens"] == b["tokens"]  # rank 0's counted targets x 2 ranks
        for k in ("gns_sq_small", "gns_sq_big"):
            assert a[k] == pytest.approx(b[k], rel=1e-3), k
        # token statistics are rank 0's half of each step
        assert a["tok_count"] == b["tok_count"] / 2 and 0 <= a["tok_acc"] <= 1


def test_noise_scale_state_round_trip(tmp_path):
    from scaling_train.metrics.gns import NoiseScaleTracker

    tr = ScalingLawTracker(tmp_path / "run", total_steps=2, lr_schedule=[1e-3, 1e-3], params=10)
    tr.gns_tracker = NoiseScaleTracker()
    tr.gns_tracker.summarize([4.0, 1.0, 1.0], 32.0, 64.0)
    tr2 = ScalingLawTracker(tmp_path / "run2", total_steps=2, lr_schedule=[1e-3, 1e-3], params=10)
    tr2.load_state_dict(tr.state_dict())
    assert tr2.gns_tracker.state_dict() == tr.gns_tracker.state_dict() and tr2.gns_tracker.gns.n_updates == 1


def test_rows_mirrored_to_accelerates_wandb_run(tmp_path, monkeypatch):
    """log_with=["wandb", tracker] (offline): our rows also land in accelerate's W&B run as scaling/* at
    the same steps (read back with wandb's own records)."""
    pytest.importorskip("wandb")
    from tests.fixtures.training import fresh_offline_wandb, wandb_history

    fresh_offline_wandb(monkeypatch, tmp_path)
    T = 12
    tr = ScalingLawTracker(tmp_path / "run", total_steps=T, lr_schedule=[1e-3] * T, params=1_000_000)
    acc = accelerate.Accelerator(log_with=["wandb", tr], cpu=True)
    acc.init_trackers("proj")
    for step in range(4, T + 1, 4):
        acc.log({"loss": _loss(step, step * 1.0), "tokens": step * 512}, step=step)
    acc.end_training()
    files = sorted(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1
    by_step = {h["_step"]: h for h in wandb_history(files[0])}
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl").rows
    for r in rows:
        h = by_step[r["step"]]
        assert h["scaling/loss"] == pytest.approx(r["loss"]) and h["loss"] == pytest.approx(r["loss"])
        assert h["scaling/tokens"] == r["tokens"]
