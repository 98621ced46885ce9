"""linear_cross_entropy, every backend, against the float64 reference (scaling_train.ops.reference)."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scaling_train.ops import LCEOutput, linear_cross_entropy
from scaling_train.ops.reference import lce_reference
from tests.ops.lce_testing import compare_with_reference, impl_params, make_inputs, run_lce

N, H, V = 47, 31, 123  # odd shape: V is not a multiple of any block size
ALL_IMPLS = impl_params("torch", "cpp", "triton")

OPTION_GRID = [
    dict(label_smoothing=ls, z_loss=zl, softcap=sc, bias=b)
    for ls, zl, sc, b in itertools.product((0.0, 0.1), (0.0, 1e-3), (None, 4.0), (False, True))
]


def _call(impl, inputs, reduction, opts, dtype=torch.float32, seed=1, **extra):
    opts = dict(opts)
    grad_output = None
    if reduction == "none":  # non-uniform per-token grad_output must be exact
        grad_output = torch.randn(inputs["targets"].numel(), generator=torch.Generator().manual_seed(seed))
    compare_with_reference(impl, inputs, grad_output, dtype=dtype, reduction=reduction, **opts, **extra)


@pytest.mark.parametrize("impl", ALL_IMPLS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("opts", OPTION_GRID, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_matches_reference_every_option(impl, reduction, opts):
    opts = dict(opts)
    inputs = make_inputs(N, H, V, bias=opts.pop("bias"), num_segments=5)
    _call(impl, inputs, reduction, opts, chunk_size=16)  # 47 tokens = 2 full chunks + a ragged one


@pytest.mark.parametrize("impl", ALL_IMPLS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_low_precision_inputs(impl, dtype, reduction):
    inputs = make_inputs(N, H, V, dtype=dtype, bias=True, num_segments=3)
    _call(impl, inputs, reduction, dict(label_smoothing=0.1, z_loss=1e-3, softcap=4.0), dtype=dtype)


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_batched_inputs_are_flattened(impl):
    inputs = make_inputs(2 * 9, H, V, num_segments=4)
    batched = {
        **inputs,
        "hidden": inputs["hidden"].view(2, 9, H),
        "targets": inputs["targets"].view(2, 9),
        "segment_ids": inputs["segment_ids"].view(2, 9),
    }
    out, grads = run_lce(linear_cross_entropy, batched, impl=impl)
    flat, flat_grads = run_lce(linear_cross_entropy, inputs, impl=impl)
    assert out.token_nll.shape == (18,) and grads["hidden"].shape == (2, 9, H)
    torch.testing.assert_close(out.loss, flat.loss)
    torch.testing.assert_close(grads["hidden"].view(18, H), flat_grads["hidden"])
    torch.testing.assert_close(out.segment_nll, flat.segment_nll)
    compare_with_reference(impl, batched)


@pytest.mark.parametrize("impl", ALL_IMPLS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_ignored_gives_zero_loss_and_grads(impl, reduction):
    inputs = make_inputs(N, H, V, bias=True, ignore_frac=1.0, num_segments=2)
    out, grads = run_lce(linear_cross_entropy, inputs, impl=impl, reduction=reduction, z_loss=1e-3)
    assert torch.isfinite(out.loss).all() and float(out.loss.detach().abs().sum()) == 0.0
    for name, g in grads.items():
        assert torch.isfinite(g).all() and float(g.abs().sum()) == 0.0, name
    assert int(out.num_tokens) == 0
    assert out.segment_tokens.tolist() == [0, 0] and out.segment_nll.tolist() == [0.0, 0.0]
    assert not out.token_correct.any() and float(out.token_nll.abs().sum()) == 0.0


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_empty_and_unused_segments(impl):
    inputs = make_inputs(N, H, V, num_segments=6)
    seg = torch.full((N,), -1, dtype=torch.int64)
    seg[:10], seg[20:30] = 0, 3  # segments 1, 2, 4, 5 are empty; tokens 10:20 and 30: belong to none
    inputs["segment_ids"] = seg
    compare_with_reference(impl, inputs)
    out = linear_cross_entropy(**{k: v for k, v in inputs.items()}, impl=impl)
    assert out.segment_tokens[[1, 2, 4, 5]].tolist() == [0, 0, 0, 0]
    assert out.segment_nll.shape == (6,) and out.segment_tokens.dtype == torch.int64
    zero_segments = make_inputs(N, H, V, num_segments=0)
    assert linear_cross_entropy(**zero_segments, impl=impl).segment_nll.shape == (0,)


@pytest.mark.parametrize("impl", ALL_IMPLS)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_chunk_size_invariance(impl, reduction):
    inputs = make_inputs(N, H, V, bias=True, num_segments=3)
    g = torch.randn(N) if reduction == "none" else None
    base, base_grads = run_lce(linear_cross_entropy, inputs, g, impl=impl, reduction=reduction, chunk_size=N)
    for chunk in (1, 7, 32):
        out, grads = run_lce(
            linear_cross_entropy, inputs, g, impl=impl, reduction=reduction, chunk_size=chunk
        )
        torch.testing.assert_close(out.loss, base.loss, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.token_nll, base.token_nll, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.segment_nll, base.segment_nll, atol=1e-4, rtol=1e-5)
        for name in grads:
            torch.testing.assert_close(grads[name], base_grads[name], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_stats_off_same_loss_and_grads(impl):
    inputs = make_inputs(N, H, V, num_segments=3)
    on, g_on = run_lce(linear_cross_entropy, inputs, impl=impl)
    off, g_off = run_lce(linear_cross_entropy, inputs, impl=impl, stats=False)
    assert off.token_correct is None and off.token_entropy is None and off.segment_correct is None
    assert off.segment_nll is not None
    torch.testing.assert_close(off.loss, on.loss)
    torch.testing.assert_close(g_off["weight"], g_on["weight"])


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_no_grad_and_partial_requires_grad(impl):
    inputs = make_inputs(N, H, V, bias=True)
    with torch.no_grad():
        out = linear_cross_entropy(
            inputs["hidden"], inputs["weight"], inputs["targets"], bias=inputs["bias"], impl=impl
        )
    assert not out.loss.requires_grad
    ref = lce_reference(inputs["hidden"], inputs["weight"], inputs["targets"], bias=inputs["bias"])
    torch.testing.assert_close(out.loss.double(), ref.loss, atol=2e-5, rtol=2e-5)
    # frozen weight and bias: only hidden gets a gradient
    hidden = inputs["hidden"].clone().requires_grad_(True)
    linear_cross_entropy(
        hidden, inputs["weight"], inputs["targets"], bias=inputs["bias"], impl=impl
    ).loss.backward()
    ref_h = inputs["hidden"].double().requires_grad_(True)
    lce_reference(ref_h, inputs["weight"], inputs["targets"], bias=inputs["bias"]).loss.backward()
    torch.testing.assert_close(hidden.grad.double(), ref_h.grad, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("impl", impl_params("torch", "cpp"))
def test_second_backward_is_refused(impl):
    inputs = make_inputs(N, H, V)
    hidden = inputs["hidden"].requires_grad_(True)
    out = linear_cross_entropy(hidden, inputs["weight"], inputs["targets"], impl=impl)
    out.loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.loss.backward()


def test_output_fields_follow_the_contract():
    inputs = make_inputs(N, H, V, num_segments=4)
    out = linear_cross_entropy(**inputs, impl="torch")
    assert isinstance(out, LCEOutput)
    assert out.loss.shape == () and out.loss.requires_grad is False  # inputs are not leaves requiring grad
    assert out.token_nll.shape == (N,) and out.token_nll.dtype == torch.float32
    assert out.token_correct.dtype == torch.bool and out.token_entropy.dtype == torch.float32
    assert out.lse.shape == (N,)
    assert out.segment_nll.dtype == torch.float32 and out.segment_tokens.dtype == torch.int64
    assert out.segment_correct.dtype == torch.int64 and out.num_tokens.dtype == torch.int64
    ignored = inputs["targets"] == -100
    assert float(out.token_nll[ignored].abs().sum()) == 0.0 and not out.token_correct[ignored].any()


def test_auto_picks_a_cpu_backend():
    from scaling_train.ops import resolve_impl
    from scaling_train.ops._cpp_loader import cpp_available

    assert resolve_impl("auto", torch.device("cpu")) == ("cpp" if cpp_available() else "torch")


BAD_INPUTS = [
    (dict(weight=torch.randn(V, H + 1)), r"weight must be \(V, H\) with H=31"),
    (dict(targets=torch.zeros(N + 1, dtype=torch.int64)), r"targets shape \(48,\) must equal"),
    (dict(targets=torch.full((N,), V, dtype=torch.int64)), r"target 123 is out of range.*\[0, 123\)"),
    (dict(targets=torch.full((N,), -5, dtype=torch.int64)), r"target -5 is out of range"),
    (dict(targets=torch.zeros(N)), r"targets must be int64"),
    (dict(segment_ids=torch.full((N,), 4), num_segments=4), r"segment id 4 is out of range.*\[-1, 4\)"),
    (dict(segment_ids=torch.full((N,), -2), num_segments=4), r"segment id -2 is out of range"),
    (dict(segment_ids=torch.zeros(N, dtype=torch.int64)), r"segment_ids and num_segments go together"),
    (dict(segment_ids=torch.zeros(N - 1, dtype=torch.int64), num_segments=2), r"segment_ids shape \(46,\)"),
    (dict(impl="cuda"), r"impl='cuda' is not one of"),
    (dict(reduction="avg"), r"reduction='avg' is not one of"),
    (dict(label_smoothing=1.0), r"label_smoothing=1.0 must be in \[0, 1\)"),
    (dict(z_loss=-1.0), r"z_loss=-1.0 must be >= 0"),
    (dict(softcap=0.0), r"softcap=0.0 must be > 0"),
    (dict(bias=torch.zeros(V + 1)), r"bias must be \(123,\)"),
    (dict(weight=torch.randn(V, H, dtype=torch.float64)), r"weight.dtype=torch.float64 must equal"),
    (dict(chunk_size=0), r"chunk_size=0 must be >= 1"),
]


@pytest.mark.parametrize("override,message", BAD_INPUTS, ids=[m for _, m in BAD_INPUTS])
def test_bad_input_raises_clear_value_error(override, message):
    inputs = make_inputs(N, H, V)
    with pytest.raises(ValueError, match=message):
        linear_cross_entropy(**{**inputs, **override, "impl": override.get("impl", "torch")})


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 40),
    h=st.integers(1, 24),
    v=st.integers(2, 70),
    chunk=st.integers(1, 50),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    label_smoothing=st.sampled_from([0.0, 0.05]),
    z_loss=st.sampled_from([0.0, 1e-2]),
    softcap=st.sampled_from([None, 2.5]),
    bias=st.booleans(),
    ignore_frac=st.sampled_from([0.0, 0.5, 1.0]),
    seed=st.integers(0, 2**16),
    impl=st.sampled_from(["torch", "cpp"]),
)
def test_fuzz_against_reference(
    n, h, v, chunk, reduction, label_smoothing, z_loss, softcap, bias, ignore_frac, seed, impl
):
    from tests.ops.lce_testing import cpp_ok

    if impl == "cpp" and not cpp_ok():
        impl = "torch"
    inputs = make_inputs(n, h, v, bias=bias, ignore_frac=ignore_frac, num_segments=3, seed=seed)
    opts = dict(label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap)
    _call(impl, inputs, reduction, opts, seed=seed, chunk_size=chunk)


@pytest.mark.parametrize("impl", impl_params("torch", "cpp"))
def test_autocast_runs_the_loss_in_the_autocast_dtype(impl):
    """Under bf16 autocast the fp32 hidden state and head weight are cast first (as F.linear would be):
    the same result, bitwise, as calling with bf16 inputs outside autocast; fp32 leaves get fp32 grads."""
    inputs = make_inputs(33, 24, 70, bias=True)
    h = inputs["hidden"].requires_grad_(True)
    w = inputs["weight"].requires_grad_(True)
    b = inputs["bias"].requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = linear_cross_entropy(h, w, inputs["targets"], bias=b, impl=impl)
    out.loss.backward()
    h16, w16, b16 = (t.detach().bfloat16().requires_grad_(True) for t in (h, w, b))
    ref = linear_cross_entropy(h16, w16, inputs["targets"], bias=b16, impl=impl)
    ref.loss.backward()
    assert torch.equal(out.token_nll, ref.token_nll) and torch.equal(out.loss, ref.loss)
    for leaf, low in ((h, h16), (w, w16), (b, b16)):
        assert leaf.grad.dtype == torch.float32
        assert torch.equal(leaf.grad, low.grad.float())
    # outside autocast nothing is cast: fp32 in, fp32 statistics of fp32 logits
    plain = linear_cross_entropy(h.detach(), w.detach(), inputs["targets"], bias=b.detach(), impl=impl)
    assert not torch.equal(plain.token_nll, ref.token_nll)


@pytest.mark.parametrize("impl", impl_params("torch", "cpp", "triton"))
def test_no_grad_computes_no_gradients(impl, monkeypatch):
    """Under torch.no_grad (an eval of a model whose parameters require grad) the kernel is asked for no
    gradient; the statistics are those of the grad-enabled call."""
    import scaling_train.ops.lce as lce_mod

    asked = []
    real = lce_mod.lce_forward

    def spy(*args, **kwargs):
        asked.append(kwargs.get("need_grads", (False, False, False)))
        return real(*args, **kwargs)

    monkeypatch.setattr(lce_mod, "lce_forward", spy)
    inputs = make_inputs(40, 12, 50, bias=True)
    h, w, b = (inputs[k].requires_grad_(True) for k in ("hidden", "weight", "bias"))
    with torch.no_grad():
        out = linear_cross_entropy(h, w, inputs["targets"], bias=b, impl=impl)
    assert asked == [(False, False, False)]
    grad_out = linear_cross_entropy(h, w, inputs["targets"], bias=b, impl=impl)
    assert asked[1] == (True, True, True)
    assert torch.equal(out.loss, grad_out.loss.detach()) and torch.equal(out.token_nll, grad_out.token_nll)
    assert not out.loss.requires_grad
