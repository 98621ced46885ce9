"""Noise-scale probe with one micro-batch: its two halves give the small batch, their sum the step."""

from __future__ import annotations

import pytest
import torch

from scaling_train.metrics.gns import AccumGNSProbe, NoiseScaleTracker
from scaling_train.metrics.jsonl import read_jsonl
from tests.fixtures.training import run_config, train


def _flat_grad(loss: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params, retain_graph=True)])


@pytest.mark.parametrize("mb", [4, 5])  # even and odd micro-batch: halves of 2 + 2 and 2 + 3 sequences
def test_split_probe_equals_explicit_gradients(mb):
    # float64 model: probe and reference differ by float64 rounding only (< 1e-13 relative over these few
    # terms), far below rel 1e-12; a wrong weight or a missing half is off by O(1)
    torch.manual_seed(0)
    T = 6  # tokens per sequence; the loss is a per-token mean as in the trainer
    model = torch.nn.Linear(7, 3).double()
    params = list(model.parameters())
    x = torch.randn(mb, T, 7, dtype=torch.float64)
    y = 3.0 * x[..., :3] + 0.5 * torch.randn(
        mb, T, 3, dtype=torch.float64
    )  # a clear mean gradient: |G|^2 > 0
    probe = AccumGNSProbe(params, accum=1, micro_tokens=mb * T, split=True, micro_seqs=mb)
    assert probe.enabled and probe.begin_step(0)
    h = mb // 2
    g_half = _flat_grad(((model(x[:h]) - y[:h]) ** 2).mean(), params)
    g_full = _flat_grad(((model(x) - y) ** 2).mean(), params)
    for part in (slice(0, h), slice(h, mb)):  # what the trainer does on a split step
        n_i = part.stop - part.start
        (((model(x[part]) - y[part]) ** 2).mean() / (mb / n_i)).backward()
        probe.after_backward()
    probe.end_step()
    assert torch.cat([p.grad.flatten() for p in params]).tolist() == pytest.approx(g_full.tolist(), rel=1e-12)
    small, big = g_half.pow(2).sum().item(), g_full.pow(2).sum().item()
    s = probe.sums.tolist()
    assert s[0] == pytest.approx(small, rel=1e-12) and s[1] == pytest.approx(big, rel=1e-12) and s[2] == 1
    assert (probe.b_small, probe.b_big) == (h * T, mb * T)
    row = NoiseScaleTracker(decay=0.0).summarize(s, probe.b_small, probe.b_big)
    bs, bb = h * T, mb * T
    g2 = (bb * big - bs * small) / (bb - bs)
    trace_sigma = (small - big) / (1 / bs - 1 / bb)
    assert row["gns_g2"] == pytest.approx(g2, rel=1e-12)
    assert row["gns_trace_sigma"] == pytest.approx(trace_sigma, rel=1e-12)
    assert g2 > 0 and row["gns_b_simple"] == pytest.approx(trace_sigma / g2, rel=1e-12)


def test_split_probe_measures_only_every_kth_step_and_needs_two_sequences():
    model = torch.nn.Linear(3, 1).double()
    probe = AccumGNSProbe(model.parameters(), accum=1, micro_tokens=8, every=3, split=True, micro_seqs=4)
    assert [probe.begin_step(s) for s in range(7)] == [True, False, False, True, False, False, True]
    model(torch.ones(2, 3, dtype=torch.float64)).sum().backward()
    probe.begin_step(1)
    probe.after_backward()  # a step that was not split: nothing is measured
    assert probe.sums.tolist() == [0.0, 0.0, 0.0]
    one = AccumGNSProbe(model.parameters(), accum=1, micro_tokens=8, split=True, micro_seqs=1)
    assert not one.enabled and not one.begin_step(0)
    accum = AccumGNSProbe(model.parameters(), accum=2, micro_tokens=8, split=True, micro_seqs=4)
    assert not accum.split and not accum.begin_step(0)  # accumulation already gives two batches


def test_trainer_with_one_micro_batch_writes_noise_scale(tmp_path):
    # batch 8 = one micro-batch of 8: split into 4 + 4 on every step; the update is the same gradient
    # (up to float32 rounding of the two halves' sum), so the loss curve matches the unsplit run closely
    one = run_config(
        tmp_path / "a", max_steps=8, **{"train.micro_batch_size": 8, "metrics.gns_split_every": 1}
    )
    off = run_config(tmp_path / "b", max_steps=8, **{"train.micro_batch_size": 8, "metrics.gns": "false"})
    train(one)
    train(off)
    rows = read_jsonl(tmp_path / "a" / "metrics.jsonl").rows
    plain = read_jsonl(tmp_path / "b" / "metrics.jsonl").rows
    for r in rows:
        assert r["gns_sq_small"] > r["gns_sq_big"] > 0  # half a batch is noisier than the whole
        assert r["gns_b_simple"] == r["gns_b_simple"]  # not nan
    assert all("gns_g2" not in r for r in plain)
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in plain], rel=1e-4)


def test_trainer_with_one_sequence_per_step_says_why_no_noise_scale(tmp_path):
    cfg = run_config(
        tmp_path / "r",
        max_steps=2,
        **{"train.batch_size": 1, "train.micro_batch_size": 1, "train.log_every": 2},
    )
    from scaling_train.train import Trainer

    lines: list[str] = []
    Trainer(cfg, log=lines.append).run()
    assert any("cannot be split in two" in s for s in lines)
    assert all("gns_g2" not in r for r in read_jsonl(tmp_path / "r" / "metrics.jsonl").rows)


def test_by_default_a_lone_micro_batch_is_split_every_fourth_step(tmp_path):
    """metrics.gns_split_every=4 (default): 8 steps -> steps 0 and 4 split, the noise scale still in the rows."""
    cfg = run_config(tmp_path / "d", max_steps=8, **{"train.micro_batch_size": 8, "train.log_every": 4})
    from scaling_train.train import Trainer

    t = Trainer(cfg, log=lambda s: None)
    t.run()
    probe = next(cb for cb in t.callbacks if getattr(cb, "probe", None) is not None).probe
    assert probe.every == 4 and probe.split
    rows = read_jsonl(tmp_path / "d" / "metrics.jsonl").rows
    assert len(rows) == 2 and all(r["gns_sq_small"] > r["gns_sq_big"] > 0 for r in rows)
