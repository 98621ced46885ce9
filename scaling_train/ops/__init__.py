"""Kernels: the fused LM-head cross-entropy with per-token and per-sample statistics.

    from scaling_train.ops import linear_cross_entropy, LCEOutput
    out = linear_cross_entropy(hidden, weight, targets, segment_ids=seg, num_segments=S)
    out.loss.backward()

Backends: impl="triton" (GPU, or CPU under TRITON_INTERPRET=1), "cpp" (csrc/, CPU), "torch"
(chunked PyTorch), "auto". See docs/ops.md.
"""

from .lce import LCEOutput, LinearCrossEntropyFunction, linear_cross_entropy, resolve_impl

__all__ = ["LCEOutput", "LinearCrossEntropyFunction", "linear_cross_entropy", "resolve_impl"]
