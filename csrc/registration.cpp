// Operator schemas of the scaling_train namespace. CPU kernels: lce.cpp, segment_sum.cpp.
// Fake (meta) kernels for torch.compile are registered from Python (scaling_train/ops/lce_cpp.py).
#include <torch/library.h>

TORCH_LIBRARY(scaling_train, m) {
  // Fused LM head + cross-entropy + statistics over token chunks. Outputs not requested are empty (0,).
  // softcap <= 0 disables the softcap. Gradients are those of sum_i token_scale[i] * loss[i].
  m.def(
      "lce_fwd(Tensor hidden, Tensor weight, Tensor? bias, Tensor targets, Tensor? token_scale, "
      "int ignore_index, float label_smoothing, float z_loss, float softcap, bool compute_stats, "
      "int chunk_size, bool need_d_hidden, bool need_d_weight, bool need_d_bias) -> "
      "(Tensor loss, Tensor nll, Tensor lse, Tensor correct, Tensor entropy, Tensor d_hidden, "
      "Tensor d_weight, Tensor d_bias)");
  // out[s, k] = sum over i with segment_ids[i] == s of values[i, k]; ids of -1 are skipped.
  m.def("segment_sum(Tensor values, Tensor segment_ids, int num_segments) -> Tensor");
}
