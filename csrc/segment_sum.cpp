// segment_sum: per-sample sums of per-token values (packed documents -> sample statistics).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <vector>

namespace {

at::Tensor segment_sum_cpu(const at::Tensor& values, const at::Tensor& segment_ids, int64_t num_segments) {
  TORCH_CHECK(values.dim() == 2, "segment_sum: values must be (N, K), got ", values.sizes());
  TORCH_CHECK(segment_ids.dim() == 1 && segment_ids.size(0) == values.size(0),
              "segment_sum: segment_ids must be (N,) with N=", values.size(0), ", got ", segment_ids.sizes());
  TORCH_CHECK(num_segments >= 0, "segment_sum: num_segments=", num_segments, " must be >= 0");
  const auto vals = values.to(at::kDouble).contiguous();  // (N, K) fp64: exact counts, stable sums
  const auto ids = segment_ids.to(at::kLong).contiguous();
  const int64_t n = vals.size(0), k = vals.size(1);
  std::vector<double> acc(static_cast<size_t>(num_segments * k), 0.0);  // (S, K)
  const double* v = vals.data_ptr<double>();
  const int64_t* s = ids.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {  // O(N K): a few thousand tokens, serial and deterministic
    const int64_t seg = s[i];
    TORCH_CHECK(seg >= -1 && seg < num_segments, "segment_sum: segment id ", seg, " at token ", i,
                " is out of range [-1, ", num_segments, ")");
    if (seg < 0) continue;
    for (int64_t j = 0; j < k; ++j) acc[seg * k + j] += v[i * k + j];
  }
  auto out = at::empty({num_segments, k}, values.options());
  auto out64 = at::from_blob(acc.data(), {num_segments, k}, at::TensorOptions().dtype(at::kDouble));
  out.copy_(out64);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(scaling_train, CPU, m) { m.impl("segment_sum", &segment_sum_cpu); }
