"""Helpers shared by the kernel tests (`from tests.ops.lce_testing import ...`)."""

from __future__ import annotations

import os

import pytest
import torch


def cpp_ok() -> bool:
    from scaling_train.ops._cpp_loader import cpp_available

    return cpp_available()


def triton_ok() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


def impl_params(*impls: str) -> list:
    """pytest params for the given backends, skipped with a reason where they cannot run."""
    params = []
    for impl in impls:
        marks = []
        if impl == "cpp":
            marks.append(
                pytest.mark.skipif(not cpp_ok(), reason="C++ extension unavailable (see _cpp_loader)")
            )
        if impl == "triton":
            marks.append(pytest.mark.triton)
            marks.append(
                pytest.mark.skipif(not triton_ok(), reason="triton needs CUDA or TRITON_INTERPRET=1")
            )
        params.append(pytest.param(impl, marks=marks, id=impl))
    return params


# atol/rtol of (loss and stats, gradients) against the float64 reference, per input dtype. Inputs are
# rounded to the dtype first and the reference sees the same rounded values, so these tolerances only
# cover the kernels' own rounding: fp32 accumulation, and the final cast of gradients to the dtype.
TOL = {
    torch.float32: dict(stat=(2e-5, 2e-5), grad=(2e-5, 1e-4)),
    torch.bfloat16: dict(stat=(2e-4, 2e-4), grad=(1e-2, 1e-2)),
    torch.float16: dict(stat=(2e-4, 2e-4), grad=(2e-3, 2e-3)),
}


def make_inputs(
    n: int,
    h: int,
    v: int,
    *,
    dtype: torch.dtype = torch.float32,
    bias: bool = False,
    ignore_frac: float = 0.2,
    num_segments: int | None = None,
    seed: int = 0,
    ignore_index: int = -100,
) -> dict:
    """Random inputs with logits of O(3) (softmax neither flat nor one-hot)."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g).to(dtype)
    weight = (torch.randn(v, h, generator=g) * (3.0 / max(h, 1) ** 0.5)).to(dtype)
    b = (torch.randn(v, generator=g) * 0.5).to(dtype) if bias else None
    targets = torch.randint(0, v, (n,), generator=g)
    targets[torch.rand(n, generator=g) < ignore_frac] = ignore_index
    inputs = dict(hidden=hidden, weight=weight, targets=targets, bias=b)
    if num_segments is not None:
        inputs["segment_ids"] = torch.randint(-1, max(num_segments, 0), (n,), generator=g)
        inputs["num_segments"] = num_segments
    return inputs


def run_lce(fn, inputs: dict, grad_output: torch.Tensor | None = None, dtype=None, **kwargs):
    """Call `fn` (linear_cross_entropy or lce_reference) on leaf copies (of `dtype`) of the inputs;
    backprop `grad_output` (ones when None); return (out, {name: grad})."""
    leaves = {}
    call = dict(inputs)
    for name in ("hidden", "weight", "bias"):
        if inputs.get(name) is not None:
            leaf = inputs[name].detach().to(dtype or inputs[name].dtype).requires_grad_(True)
            leaves[name] = call[name] = leaf
    out = fn(call.pop("hidden"), call.pop("weight"), call.pop("targets"), **call, **kwargs)
    g = torch.ones_like(out.loss) if grad_output is None else grad_output.to(out.loss.dtype)
    out.loss.backward(g)
    return out, {k: v.grad for k, v in leaves.items()}


def assert_close(actual, expected, tol, name):
    atol, rtol = tol
    torch.testing.assert_close(
        actual.double(), expected.double(), atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}"
    )


def assert_grad_close(actual, expected, tol, name):
    """Gradients: tolerance relative to the largest reference entry (entries span many magnitudes)."""
    atol, rtol = tol
    scale = float(expected.abs().max()) or 1.0
    torch.testing.assert_close(
        actual.double(), expected.double(), atol=atol * scale, rtol=rtol, msg=lambda m: f"{name}: {m}"
    )


def compare_with_reference(impl: str, inputs: dict, grad_output=None, dtype=torch.float32, **kwargs) -> None:
    """Every output and gradient of `impl` against the float64 reference on the same (rounded) inputs."""
    from scaling_train.ops import linear_cross_entropy
    from scaling_train.ops.reference import lce_reference, top2_margin

    tol = TOL[dtype]
    out, grads = run_lce(linear_cross_entropy, inputs, grad_output, impl=impl, **kwargs)
    ref_kwargs = {k: v for k, v in kwargs.items() if k not in ("chunk_size", "stats", "validate")}
    ref, ref_grads = run_lce(lce_reference, inputs, grad_output, dtype=torch.float64, **ref_kwargs)

    assert out.token_nll.dtype == torch.float32 and out.lse.dtype == torch.float32
    assert_close(out.loss, ref.loss, tol["stat"], "loss")
    assert_close(out.token_nll, ref.token_nll, tol["stat"], "token_nll")
    assert_close(out.lse, ref.lse, tol["stat"], "lse")
    assert int(out.num_tokens) == int(ref.num_tokens)
    if kwargs.get("stats", True):
        assert_close(out.token_entropy, ref.token_entropy, tol["stat"], "token_entropy")
        # argmax ties within rounding error may resolve either way; elsewhere it must agree exactly
        margin = top2_margin(inputs["hidden"], inputs["weight"], inputs.get("bias"), kwargs.get("softcap"))
        decisive = margin > 1e-3
        assert torch.equal(out.token_correct[decisive], ref.token_correct[decisive]), "token_correct"
    if inputs.get("segment_ids") is not None:
        assert_close(out.segment_nll, ref.segment_nll, (tol["stat"][0] * 50, tol["stat"][1]), "segment_nll")
        assert torch.equal(out.segment_tokens, ref.segment_tokens), "segment_tokens"
        if kwargs.get("stats", True):
            assert (out.segment_correct - ref.segment_correct).abs().sum() <= int((~decisive).sum())
    for name, g in grads.items():
        assert g.dtype == inputs[name].dtype, f"grad {name} dtype {g.dtype}"
        assert_grad_close(g, ref_grads[name], tol["grad"], f"grad_{name}")
