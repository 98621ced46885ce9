"""A stock transformers Trainer on a tiny randomly initialised GPT-2 (no download), CPU, with only our callback."""

from __future__ import annotations

import json
import math

import pytest

transformers = pytest.importorskip("transformers")

from scaling_train.integrations import ScalingLawCallback  # noqa: E402
from scaling_train.metrics.jsonl import read_jsonl  # noqa: E402
from tests.integrations import tiny_gpt2  # noqa: E402

T = tiny_gpt2.T


def _model():
    return tiny_gpt2.model(dropout=0.1)  # GPT2Config's default dropout


_data = tiny_gpt2.pattern_data


def _args(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path / "hf_out"), max_steps=12, per_device_train_batch_size=4,
        gradient_accumulation_steps=2, logging_steps=2, learning_rate=3e-3, lr_scheduler_type="cosine",
        warmup_steps=2, report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True,
        include_num_input_tokens_seen=True, dataloader_num_workers=0, seed=0,
    )  # fmt: skip
    base.update(kw)
    return transformers.TrainingArguments(**base)


def test_stock_trainer_with_callback_only(tmp_path):
    run_dir = tmp_path / "run"
    cb = ScalingLawCallback(str(run_dir))
    tr = transformers.Trainer(model=_model(), args=_args(tmp_path), train_dataset=_data(64), callbacks=[cb])
    tr.train()
    res = read_jsonl(run_dir / "metrics.jsonl")
    rows = [r for r in res.rows if "loss" in r]
    assert [r["step"] for r in rows] == [2, 4, 6, 8, 10, 12]
    assert res.malformed == 0
    # tokens axis from num_input_tokens_seen: 12 steps x 8 sequences x 32 tokens
    assert rows[-1]["tokens"] == 12 * 8 * T
    for r in rows:
        # same tokens, same logits; HF normalises by num_items_in_batch counted before the label shift
        # (8 x 32 labels, of which 8 x 31 are targets), the device statistics by the counted targets
        assert r["tok_nll"] == pytest.approx(r["loss"] * T / (T - 1), rel=1e-3)
        assert r["tok_count"] == 2 * 8 * (T - 1)
        assert sum(r["tok_nll_hist"]) == pytest.approx(1.0)
        assert 0 <= r["tok_acc"] <= 1
        assert math.isfinite(r["gns_sq_small"]) and r["gns_sq_small"] > r["gns_sq_big"] > 0
    assert "gns_b_simple" in rows[-1]
    pred = json.loads((run_dir / "predictions.json").read_text())
    assert pred["run"] == "run" and pred["status"] == "done"
    assert (run_dir / "DONE").is_file()
    lr = json.loads((run_dir / "lr_schedule.json").read_text())
    assert len(lr) == 12 and max(lr) == pytest.approx(3e-3)


def test_fused_loss_matches_stock_loss(tmp_path):
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    cb_a = ScalingLawCallback(str(run_a), gns=False)
    transformers.Trainer(
        model=_model(), args=_args(tmp_path, max_steps=4), train_dataset=_data(64), callbacks=[cb_a]
    ).train()
    m = _model()
    cb_b = ScalingLawCallback(str(run_b), gns=False)
    tr = transformers.Trainer(
        model=m,
        args=_args(tmp_path, max_steps=4),
        train_dataset=_data(64),
        callbacks=[cb_b],
        compute_loss_func=cb_b.fused_loss(m),
    )
    tr.train()
    ra = [r for r in read_jsonl(run_a / "metrics.jsonl").rows if "loss" in r]
    rb = [r for r in read_jsonl(run_b / "metrics.jsonl").rows if "loss" in r]
    assert len(ra) == len(rb) == 2
    for a, b in zip(ra, rb):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
        assert b["tok_nll"] == pytest.approx(a["tok_nll"], rel=1e-4)
        assert b["tok_acc"] == pytest.approx(a["tok_acc"], abs=1e-6)


def test_resume_keeps_rows_and_state(tmp_path):
    run_dir = tmp_path / "run"
    args = _args(tmp_path, save_strategy="steps", save_steps=6, max_steps=12)
    cb = ScalingLawCallback(str(run_dir))
    tr = transformers.Trainer(model=_model(), args=args, train_dataset=_data(64), callbacks=[cb])
    tr.train()
    full = [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl").rows if "loss" in r]
    # resume from the step-6 checkpoint: the rows 8..12 are rolled back and written again, once
    cb2 = ScalingLawCallback(str(run_dir))
    tr2 = transformers.Trainer(model=_model(), args=args, train_dataset=_data(64), callbacks=[cb2])
    tr2.train(resume_from_checkpoint=str(tmp_path / "hf_out" / "checkpoint-6"))
    steps = [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl").rows if "loss" in r]
    assert steps == full == [2, 4, 6, 8, 10, 12]
    restored = [c for c in tr2.callback_handler.callbacks if isinstance(c, ScalingLawCallback)]
    assert restored and restored[0].gns_state is not None and restored[0].gns_state["n"] >= 1


def test_early_stop_on_narrow_interval(tmp_path):
    run_dir = tmp_path / "run"
    cb = ScalingLawCallback(str(run_dir), tolerance=10.0, min_progress=0.5)  # any interval is narrower
    tr = transformers.Trainer(
        model=_model(), args=_args(tmp_path, max_steps=20), train_dataset=_data(64), callbacks=[cb]
    )
    tr.train()
    assert cb.stopped_early
    assert 10 <= tr.state.global_step < 20
    assert not (run_dir / "DONE").exists()


@pytest.mark.multiproc
@pytest.mark.slow
def test_ddp_gradient_noise_scale_matches_accumulation(tmp_path):
    """torchrun, 2 ranks x 4 sequences (comm hook: rank 0's gradient vs the all-reduced one) against one
    process with 2 micro-batches of 4 (micro-batch vs step): the same two squared norms per step."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).with_name("hf_ddp_script.py")
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    out = {}
    for name, pre in [
        ("one", []),
        ("ddp", ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]),
    ]:
        res = subprocess.run(
            [sys.executable, *pre, str(script), str(tmp_path / name)], env=env, capture_output=True, text=True,
            timeout=600, cwd=repo,
        )  # fmt: skip
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
        out[name] = [r for r in read_jsonl(tmp_path / name / "metrics.jsonl").rows if "loss" in r]
    one, ddp = out["one"], out["ddp"]
    assert [r["step"] for r in ddp] == [r["step"] for r in one] == [2, 4, 6, 8]
    for a, b in zip(ddp, one):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["gns_sq_big"] == pytest.approx(b["gns_sq_big"], rel=1e-3)
        assert a["gns_sq_small"] == pytest.approx(b["gns_sq_small"], rel=1e-3)
        assert a["gns_sq_small"] > a["gns_sq_big"] > 0
        assert a["tokens"] == b["tokens"]
        assert a["gns_trace_sigma"] == pytest.approx(b["gns_trace_sigma"], rel=1e-2)
        assert a["gns_b_simple"] == pytest.approx(b["gns_b_simple"], rel=1e-2, nan_ok=True)
    assert math.isfinite(ddp[-1]["gns_b_simple"]) and ddp[-1]["gns_b_simple"] > 0


def test_no_accumulation_single_process_says_noise_scale_is_off(tmp_path):
    cb = ScalingLawCallback(str(tmp_path / "run"))
    args = _args(tmp_path, gradient_accumulation_steps=1, max_steps=2)
    tr = transformers.Trainer(model=_model(), args=args, train_dataset=_data(64), callbacks=[cb])
    with pytest.warns(UserWarning, match=r"gradient noise scale off: gradient_accumulation_steps=1 < 2"):
        tr.train()
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl").rows
    assert rows and all("gns_sq_small" not in r for r in rows) and "tok_nll" in rows[-1]


@pytest.mark.parametrize(
    "kw, msg",
    [
        ({"tolerance": 0.0}, "tolerance=0.0 must be None or a finite number > 0"),
        ({"tolerance": float("nan")}, "tolerance=nan must be"),
        ({"min_progress": 1.5}, r"min_progress=1.5 must be in \[0, 1\]"),
        ({"fit_every": 0}, "fit_every=0 must be an integer >= 1"),
        ({"nll_bins": 2.5}, "nll_bins=2.5 must be an integer >= 1"),
        ({"pos_buckets": "8"}, "pos_buckets='8' must be an integer >= 1"),
    ],
)
def test_bad_arguments_name_value_and_range(tmp_path, kw, msg):
    with pytest.raises(ValueError, match=r"ScalingLawCallback: " + msg):
        ScalingLawCallback(str(tmp_path / "run"), **kw)


def test_rows_mirrored_to_the_trainers_wandb_run(tmp_path, monkeypatch):
    """report_to="wandb" (offline): our rows also land in HF's W&B run as scaling/* against
    train/global_step (read back with wandb's own records)."""
    wandb = pytest.importorskip("wandb")
    from tests.fixtures.training import fresh_offline_wandb, wandb_history

    fresh_offline_wandb(monkeypatch, tmp_path)
    run_dir = tmp_path / "run"
    tr = transformers.Trainer(
        model=_model(), args=_args(tmp_path, report_to=["wandb"], max_steps=6), train_dataset=_data(64),
        callbacks=[ScalingLawCallback(str(run_dir))],
    )  # fmt: skip
    tr.train()
    wandb.finish()
    files = sorted(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1
    ours = [h for h in wandb_history(files[0]) if "scaling/tok_nll" in h]
    assert [h["train/global_step"] for h in ours] == [2, 4, 6]
    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl").rows if "loss" in r]
    for h, r in zip(ours, rows):
        assert h["scaling/tok_nll"] == pytest.approx(r["tok_nll"]) and h["scaling/tokens"] == r["tokens"]
        assert h["scaling/gns_sq_small"] == pytest.approx(r["gns_sq_small"])
    assert any("scaling/pred/loss" in h for h in ours)


def test_wandb_true_without_a_wandb_run_says_so(tmp_path):
    cb = ScalingLawCallback(str(tmp_path / "run"), wandb=True)
    tr = transformers.Trainer(
        model=_model(), args=_args(tmp_path, max_steps=2), train_dataset=_data(64), callbacks=[cb]
    )
    with pytest.warns(UserWarning, match=r"wandb=True\): no active W&B run"):
        tr.train()
    assert (tmp_path / "run" / "metrics.jsonl").stat().st_size > 0


def test_tokens_axis_counted_when_the_trainer_does_not_count(tmp_path):
    run_dir = tmp_path / "run"
    cb = ScalingLawCallback(str(run_dir), token_stats=False)
    args = _args(tmp_path, max_steps=4, include_num_input_tokens_seen=False)
    transformers.Trainer(model=_model(), args=args, train_dataset=_data(64), callbacks=[cb]).train()
    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl").rows if "loss" in r]
    # 2 steps per row x 8 sequences x (T - 1) targets
    assert [r["tokens"] for r in rows] == [2 * 8 * (T - 1), 4 * 8 * (T - 1)] and "tok_nll" not in rows[0]
