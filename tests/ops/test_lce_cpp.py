"""C++ extension: build/loader behaviour, segment_sum op, torch.compile tracing through fake kernels."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from scaling_train.ops import linear_cross_entropy
from tests.ops.lce_testing import cpp_ok, impl_params, make_inputs, run_lce

needs_cpp = pytest.mark.skipif(not cpp_ok(), reason="C++ extension unavailable (see _cpp_loader)")


@needs_cpp
def test_segment_sum_op_matches_index_add():
    g = torch.Generator().manual_seed(0)
    values = torch.randn(50, 3, generator=g)
    ids = torch.randint(-1, 7, (50,), generator=g)
    out = torch.ops.scaling_train.segment_sum(values, ids, 7)
    expected = torch.zeros(7, 3, dtype=torch.float64)
    keep = ids >= 0
    expected.index_add_(0, ids[keep], values[keep].double())
    assert out.shape == (7, 3) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, atol=1e-6, rtol=1e-6)
    assert torch.ops.scaling_train.segment_sum(values, torch.full((50,), -1), 2).abs().sum() == 0


@needs_cpp
def test_segment_sum_op_rejects_bad_ids():
    with pytest.raises(RuntimeError, match=r"segment id 5 at token 0 is out of range \[-1, 5\)"):
        torch.ops.scaling_train.segment_sum(torch.ones(2, 1), torch.tensor([5, 0]), 5)


@needs_cpp
def test_cpp_kernel_rejects_out_of_range_target_without_python_validation():
    inputs = make_inputs(8, 4, 10, ignore_frac=0.0)
    inputs["targets"][3] = 10
    with pytest.raises(RuntimeError, match=r"target 10 at token 3 is out of range \[0, 10\)"):
        linear_cross_entropy(**inputs, impl="cpp", validate=False)


@needs_cpp
def test_fake_kernel_matches_real_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    inputs = make_inputs(9, 5, 13, bias=True)
    args = (inputs["hidden"], inputs["weight"], inputs["bias"], inputs["targets"], None, -100, 0.1, 0.0, 0.0)
    for stats, need in [(True, (True, True, True)), (False, (False, True, False))]:
        real = torch.ops.scaling_train.lce_fwd(*args, stats, 4, *need)
        with FakeTensorMode() as mode:
            fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
            fake = torch.ops.scaling_train.lce_fwd(*fake_args, stats, 4, *need)
        assert [(t.shape, t.dtype) for t in fake] == [(t.shape, t.dtype) for t in real]


def test_cpp_unavailable_is_a_clear_error_and_auto_falls_back(monkeypatch):
    from scaling_train.ops import _cpp_loader, lce

    monkeypatch.setattr(_cpp_loader, "cpp_available", lambda: False)
    monkeypatch.setattr(_cpp_loader, "_reason", "scaling_train._C is not built (test)")
    assert lce.resolve_impl("auto", torch.device("cpu")) == "torch"
    inputs = make_inputs(8, 4, 10)
    with pytest.raises(
        RuntimeError, match=r"impl='cpp' is unavailable: scaling_train._C is not built \(test\)"
    ):
        linear_cross_entropy(**inputs, impl="cpp")


class TinyLM(nn.Module):
    """Embedding -> linear -> fused head: enough to check tracing, not a real model."""

    def __init__(self, vocab: int, dim: int, impl: str) -> None:
        super().__init__()
        self.impl = impl
        self.emb = nn.Embedding(vocab, dim)
        self.proj = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, idx, targets, segment_ids):
        h = torch.tanh(self.proj(self.emb(idx)))  # (B, T, H)
        return linear_cross_entropy(
            h, self.head.weight, targets, segment_ids=segment_ids, num_segments=3, z_loss=1e-4, impl=self.impl
        )


@pytest.mark.parametrize("impl", impl_params("torch", "cpp"))
@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])  # ~5 s
def test_torch_compile_of_a_model_matches_eager(impl, backend):
    torch.manual_seed(0)
    model = TinyLM(37, 16, impl)
    idx = torch.randint(0, 37, (2, 11))
    targets = torch.randint(0, 37, (2, 11))
    targets[0, :3] = -100
    seg = torch.randint(-1, 3, (2, 11))
    eager = model(idx, targets, seg)
    eager.loss.backward()
    eager_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    out = compiled(idx, targets, seg)
    out.loss.backward()
    torch.testing.assert_close(out.loss, eager.loss)
    torch.testing.assert_close(out.segment_nll, eager.segment_nll)
    assert torch.equal(out.segment_tokens, eager.segment_tokens)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, eager_grads[name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("impl", impl_params("torch", "cpp"))
def test_never_allocates_n_by_v(impl):
    """No single allocation of (N, V) fp32 logits: the profiler sees every CPU allocation."""
    n, h, v, chunk = 256, 16, 512, 32
    inputs = make_inputs(n, h, v)
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
    ) as prof:
        run_lce(linear_cross_entropy, inputs, impl=impl, chunk_size=chunk)
    largest = max(e.cpu_memory_usage for e in prof.events())
    full_logits = n * v * 4  # = 512 KiB
    assert largest >= chunk * v * 4  # the profiler did see the chunk buffer
    assert largest < full_logits / 2, f"an allocation of {largest} bytes ~ (N, V) logits ({full_logits})"


@pytest.mark.slow
def test_jit_build_when_the_prebuilt_extension_is_absent(tmp_path):
    """The loader's fallback: compile csrc/ with torch.utils.cpp_extension.load (~1 min on 2 cores)."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['scaling_train._C'] = None\n"  # makes `import scaling_train._C` fail
        "import torch\n"
        "from scaling_train.ops._cpp_loader import cpp_available, cpp_unavailable_reason\n"
        "assert cpp_available(), cpp_unavailable_reason()\n"
        "from scaling_train.ops import linear_cross_entropy\n"
        "out = linear_cross_entropy(torch.randn(5, 3), torch.randn(7, 3), torch.arange(5), impl='cpp')\n"
        "print('ok', float(out.loss))\n"
    )
    env = {**__import__("os").environ, "TORCH_EXTENSIONS_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]
