"""Device statistics and noise-scale probes against direct float64 computations; the stream's JSONL contract."""

from __future__ import annotations

import math

import pytest
import torch

from scaling_train.metrics.gns import AccumGNSProbe, NoiseScaleTracker
from scaling_train.metrics.jsonl import read_jsonl
from scaling_train.metrics.stats import TokenStats
from scaling_train.metrics.stream import MetricsStream
from scaling_train.ops import linear_cross_entropy
from tests.fixtures.tolerances import sum_rtol


def test_token_stats_match_reference():
    torch.manual_seed(0)
    B, T, H, V = 3, 47, 31, 123  # odd shapes
    h, w = torch.randn(B, T, H), torch.randn(V, H)
    y = torch.randint(0, V, (B, T))
    y[0, :5] = -100
    st = TokenStats(n_bins=8, nll_max=8.0, pos_buckets=4)
    out = linear_cross_entropy(h, w, y)
    st.update_lce(out, y)
    st.update_lce(out, y)  # accumulates over a window
    row = st.summarize(st.values().tolist())
    z = (h @ w.T).double()  # (B, T, V) reference logits
    lp = torch.log_softmax(z, -1)
    valid = y != -100
    nll = -lp.gather(-1, y.clamp(min=0)[..., None])[..., 0]
    # float32 per token: logsumexp and sum(p * z) add V terms of size <= max|z| (~28 here), and every logit
    # is itself a float32 sum of H terms; each rounds by <= sum_rtol(V) * max|z|, so means do too
    atol = 2 * sum_rtol(V) * z.abs().max().item()  # ~3e-4 here, vs differences of O(0.1) for a real bug
    edges = torch.tensor(st.hist_edges()[1:-1], dtype=torch.float64)
    top2 = z.topk(2, -1).values
    # so the histogram and the accuracy below are exact: no token within rounding of a bin edge or a tie
    assert (nll[valid][:, None] - edges).abs().min() > atol and (top2[..., 0] - top2[..., 1]).min() > 2 * atol
    assert row["tok_count"] == 2 * valid.sum().item()
    assert row["tok_nll"] == pytest.approx(nll[valid].mean().item(), abs=atol)
    assert row["tok_acc"] == pytest.approx((z.argmax(-1) == y)[valid].double().mean().item())
    ent = -(lp.exp() * lp).sum(-1)
    assert row["tok_entropy"] == pytest.approx(ent[valid].mean().item(), abs=atol)
    hist = torch.bincount(torch.bucketize(nll[valid], edges, right=True), minlength=8).double() / valid.sum()
    assert row["tok_nll_hist"] == pytest.approx(hist.tolist(), abs=1e-12)
    pos = torch.arange(T) * 4 // T
    for b in range(4):
        m = valid & (pos == b)[None]
        assert row["tok_nll_by_pos"][b] == pytest.approx(nll[m].mean().item(), abs=atol)
    # logits path (HF) gives the same numbers as the fused path
    st2 = TokenStats(n_bins=8, nll_max=8.0, pos_buckets=4)
    st2.update_logits(z.float(), y, shift=False)
    r2 = st2.summarize(st2.values().tolist())
    assert r2["tok_nll"] == pytest.approx(row["tok_nll"], abs=2 * atol)  # each within atol of float64
    assert r2["tok_nll_hist"] == pytest.approx(row["tok_nll_hist"], abs=1e-9)


def test_accum_probe_equals_explicit_gradients():
    # float64 model: the probe's sums and the reference differ only by float64 rounding (eps ~2.2e-16 over
    # < 30 summed terms, condition < 10), far below rel 1e-12; a wrong probe (a factor, a missing micro-batch)
    # is off by O(1). In float32 the summation order alone moves gns_g2 by ~1e-6 from one CPU/BLAS to another.
    torch.manual_seed(0)
    model = torch.nn.Linear(7, 3).double()
    xs, ys = torch.randn(4, 5, 7, dtype=torch.float64), torch.randn(4, 5, 3, dtype=torch.float64)
    probe = AccumGNSProbe(model.parameters(), accum=4, micro_tokens=5)
    grads = []
    for i in range(4):
        loss = ((model(xs[i]) - ys[i]) ** 2).mean()
        g = torch.autograd.grad(loss, list(model.parameters()), retain_graph=True)
        grads.append(torch.cat([x.flatten() for x in g]))  # (24,) this micro-batch's gradient
        (loss / 4).backward()
        probe.after_backward()
    probe.end_step()
    small = grads[0].pow(2).sum().item()
    big = torch.stack(grads).mean(0).pow(2).sum().item()
    s = probe.sums.tolist()
    assert s[0] == pytest.approx(small, rel=1e-12) and s[1] == pytest.approx(big, rel=1e-12) and s[2] == 1
    row = NoiseScaleTracker(decay=0.0).summarize(s, probe.b_small, probe.b_big)
    g2 = (20 * big - 5 * small) / 15  # b_small = 5 tokens, b_big = 4 * 5 = 20
    trace_sigma = (small - big) / (1 / 5 - 1 / 20)
    assert row["gns_g2"] == pytest.approx(g2, rel=1e-12)
    assert row["gns_trace_sigma"] == pytest.approx(trace_sigma, rel=1e-12)
    assert row["gns_b_simple"] == pytest.approx(trace_sigma / g2, rel=1e-12)


def test_stream_rollback_and_torn_tail(tmp_path):
    class Recorder:
        def __init__(self):
            self.rows, self.rollbacks = [], []

        def log(self, rows):
            self.rows += [r["step"] for r in rows]

        def rollback(self, **kw):
            self.rollbacks.append(kw)

    rec = Recorder()
    s = MetricsStream(tmp_path, sinks=[rec])
    offsets = {}
    for step in range(1, 7):
        s.write({"step": step, "loss": 1.0 / step})
        offsets[step] = s.flush()
    assert rec.rows == [1, 2, 3, 4, 5, 6]  # sinks see rows only after the file has them
    s.truncate(offsets[3])
    assert rec.rollbacks == [{"kept_step": 3, "logged_step": 6}]
    s.write({"step": 4, "loss": math.nan})
    s.flush()
    s.close()
    with open(tmp_path / "metrics.jsonl", "ab") as f:
        f.write(b'{"step": 5, "lo')  # a torn tail after a crash
    res = read_jsonl(tmp_path / "metrics.jsonl")
    assert (
        [r["step"] for r in res.rows] == [1, 2, 3, 4] and math.isnan(res.rows[-1]["loss"]) and res.torn_tail
    )
    s2 = MetricsStream(tmp_path)  # reopening cuts the torn tail
    s2.write({"step": 5, "loss": 0.2})
    s2.close()
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl").rows] == [1, 2, 3, 4, 5]


def test_broken_sink_never_stops_the_stream(tmp_path):
    class Broken:
        def log(self, rows):
            raise RuntimeError("network down")

    s = MetricsStream(tmp_path, sinks=[Broken()])
    s.write({"step": 1, "loss": 1.0})
    with pytest.warns(UserWarning, match="network down"):
        s.flush()
    assert s.sinks == []
    s.close()


def test_probe_squared_norm_is_accurate_on_large_float32_tensors():
    """A 4e6-element float32 gradient: the probe's squared norm against float64 (a single float32 norm of
    this size drifts by ~1e-4 relative on the CPU; the chunked one stays at float32 rounding)."""
    from scaling_train.metrics.gns import _sq_norm

    g = torch.randn(4_000_000, generator=torch.Generator().manual_seed(0)) * 0.01 + 0.003
    ref = g.double().pow(2).sum().item()
    # measured: one float32 norm -1.7e-4, the chunked one ~2e-7 (64K-term float32 partial sums, each within
    # ~4 sqrt(65,536) eps32 ~ 1.2e-4 worst case but ~1e-7 typically). 2e-5 separates the two by 8x either side.
    assert _sq_norm([g, g[:7].clone()]).item() == pytest.approx(
        ref + g[:7].double().pow(2).sum().item(), rel=2e-5
    )
