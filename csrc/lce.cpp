// Fused LM head + cross-entropy + statistics + gradient, CPU.
//
// For each chunk of C tokens: z = h @ W^T through ATen (BLAS, all cores), then one fused pass per
// row (rows in parallel with at::parallel_for) computes max / argmax, log-sum-exp, NLL, smoothed
// loss, z-loss, entropy and overwrites the row with dloss/dlogits; then dH = dz @ W and
// dW += dz^T @ h, again through BLAS. Memory: one (C, V) fp32 buffer, never (N, V).
//
// Gradient of one token's loss w.r.t. its softcapped logits (p = softmax(z), eps = label smoothing):
//   dz_j = p_j (1 + 2 z_loss lse) - (1 - eps) [j == t] - eps / V,   times 1 - (z_j / cap)^2 with a softcap.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <tuple>

namespace {

using at::Tensor;

// exp(x): Cody-Waite reduction + Cephes degree-6 polynomial, ~2 ulp. Branch-free arithmetic only, so
// the `omp simd` loops below vectorise (a std::exp call would not). x is clamped to [-87, 88]:
// exp(-87) = 1.6e-38 stands in for anything smaller, which is negligible next to the row max's 1.
inline float exp_approx(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float k = std::floor(x * 1.44269504088896341f + 0.5f);  // round(x / ln 2)
  const float r = x - k * 0.693359375f + k * 2.12194440e-4f;     // x - k ln 2, in two parts
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;  // 2^k
  float two_k;
  std::memcpy(&two_k, &bits, sizeof(float));
  return y * two_k;
}

// tanh(x): odd Taylor polynomial for |x| < 0.25 (rel. error < 1e-8), 1 - 2 / (e^{2x} + 1) elsewhere
// (abs. error ~1e-7); both computed and blended so the loop stays branch-free.
inline float tanh_approx(float x) {
  const float x2 = x * x;
  const float small = x * (1.0f + x2 * (-1.0f / 3 + x2 * (2.0f / 15 + x2 * (-17.0f / 315 + x2 * (62.0f / 2835)))));
  const float large = 1.0f - 2.0f / (exp_approx(2.0f * x) + 1.0f);
  return std::fabs(x) < 0.25f ? small : large;
}

struct RowParams {
  int64_t vocab;
  float eps;         // label smoothing
  float z_loss;
  float cap;         // softcap, <= 0 = off
  bool stats;        // argmax + entropy
  bool grad;         // overwrite the row with dloss/dlogits
  const float* bias;  // (V,) or nullptr
};

struct RowOut {
  float loss, nll, lse, entropy;
  bool correct;
};

// One token: z (V,) holds h . W^T on entry; on exit (grad) it holds row_scale * dloss/d(pre-cap logits).
inline RowOut lce_row(float* __restrict z, int64_t target, float row_scale, const RowParams& P) {
  const int64_t V = P.vocab;
  if (P.bias != nullptr) {
    const float* __restrict b = P.bias;
#pragma omp simd
    for (int64_t j = 0; j < V; ++j) z[j] += b[j];
  }
  const float cap = P.cap, inv_cap = cap > 0.0f ? 1.0f / cap : 0.0f;
  if (cap > 0.0f) {
#pragma omp simd
    for (int64_t j = 0; j < V; ++j) z[j] = cap * tanh_approx(z[j] * inv_cap);
  }
  float m = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < V; ++j) m = z[j] > m ? z[j] : m;
  float s = 0.0f, sez = 0.0f, sz = 0.0f;  // sum e^{z-m}, sum e^{z-m} z, sum z
#pragma omp simd reduction(+ : s, sez, sz)
  for (int64_t j = 0; j < V; ++j) {
    const float e = exp_approx(z[j] - m);
    s += e;
    sez += e * z[j];
    sz += z[j];
  }
  RowOut out;
  const float zt = z[target];
  out.lse = m + std::log(s);
  out.nll = out.lse - zt;
  out.loss = (1.0f - P.eps) * out.nll + P.eps * (out.lse - sz / static_cast<float>(V)) + P.z_loss * out.lse * out.lse;
  out.entropy = P.stats ? out.lse - sez / s : 0.0f;
  out.correct = false;
  if (P.stats) {  // first index of the max, as torch.argmax
    int64_t arg = 0;
    while (arg < V - 1 && z[arg] != m) ++arg;  // bounded: a NaN row never matches
    out.correct = arg == target;
  }
  if (P.grad) {
    const float a = row_scale * (1.0f + 2.0f * P.z_loss * out.lse);
    const float b = row_scale * P.eps / static_cast<float>(V);
    const float lse = out.lse;
    const float dcap_t = cap > 0.0f ? 1.0f - (zt * inv_cap) * (zt * inv_cap) : 1.0f;
    if (cap > 0.0f) {
#pragma omp simd
      for (int64_t j = 0; j < V; ++j) {
        const float t = z[j] * inv_cap;  // tanh(y / cap)
        z[j] = (exp_approx(z[j] - lse) * a - b) * (1.0f - t * t);
      }
    } else {
#pragma omp simd
      for (int64_t j = 0; j < V; ++j) z[j] = exp_approx(z[j] - lse) * a - b;
    }
    z[target] -= (1.0f - P.eps) * row_scale * dcap_t;
  }
  return out;
}

using LceResult = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

LceResult lce_fwd_cpu(const Tensor& hidden, const Tensor& weight, const std::optional<Tensor>& bias,
                      const Tensor& targets, const std::optional<Tensor>& token_scale, int64_t ignore_index,
                      double label_smoothing, double z_loss, double softcap, bool compute_stats, int64_t chunk_size,
                      bool need_d_hidden, bool need_d_weight, bool need_d_bias) {
  TORCH_CHECK(hidden.dim() == 2 && weight.dim() == 2 && hidden.size(1) == weight.size(1),
              "lce_fwd: hidden must be (N, H) and weight (V, H), got ", hidden.sizes(), " and ", weight.sizes());
  TORCH_CHECK(hidden.device().is_cpu() && weight.device().is_cpu(), "lce_fwd: the C++ kernel runs on CPU tensors");
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == hidden.size(0), "lce_fwd: targets must be (N,) with N=",
              hidden.size(0), ", got ", targets.sizes());
  const int64_t N = hidden.size(0), H = hidden.size(1), V = weight.size(0);
  const bool has_bias = bias.has_value() && bias->defined();
  const auto f32 = hidden.options().dtype(at::kFloat);

  const Tensor w32 = weight.to(at::kFloat).contiguous();  // (V, H) fp32; no copy when already fp32
  const Tensor b32 = has_bias ? bias->to(at::kFloat).contiguous() : Tensor();
  const Tensor tgt = targets.to(at::kLong).contiguous();
  const Tensor scale = token_scale.has_value() && token_scale->defined() ? token_scale->to(at::kFloat).contiguous()
                                                                         : Tensor();
  Tensor loss = at::empty({N}, f32), nll = at::empty({N}, f32), lse = at::empty({N}, f32);
  Tensor correct = at::empty({compute_stats ? N : 0}, f32.dtype(at::kBool));
  Tensor entropy = at::empty({compute_stats ? N : 0}, f32);
  need_d_bias = need_d_bias && has_bias;
  const bool grad = need_d_hidden || need_d_weight || need_d_bias;
  Tensor d_hidden = need_d_hidden ? at::empty_like(hidden) : at::empty({0}, hidden.options());
  Tensor d_weight = need_d_weight ? at::zeros({V, H}, f32) : at::empty({0}, f32);  // fp32 accumulation
  Tensor d_bias = need_d_bias ? at::zeros({V}, f32) : at::empty({0}, f32);

  const int64_t C = std::max<int64_t>(1, std::min<int64_t>(chunk_size, N));
  Tensor zbuf = at::empty({N > 0 ? C : 0, V}, f32);  // (C, V) fp32 logits of one chunk, never (N, V)
  const bool cast_h = hidden.scalar_type() != at::kFloat;
  Tensor hbuf = cast_h ? at::empty({C, H}, f32) : Tensor();  // (C, H) fp32 copy of low-precision hidden

  RowParams P{V,
              static_cast<float>(label_smoothing),
              static_cast<float>(z_loss),
              static_cast<float>(softcap),
              compute_stats,
              grad,
              has_bias ? b32.data_ptr<float>() : nullptr};
  const int64_t* t_ptr = tgt.data_ptr<int64_t>();
  const float* s_ptr = scale.defined() ? scale.data_ptr<float>() : nullptr;
  float *loss_p = loss.data_ptr<float>(), *nll_p = nll.data_ptr<float>(), *lse_p = lse.data_ptr<float>();
  float* ent_p = compute_stats ? entropy.data_ptr<float>() : nullptr;
  bool* cor_p = compute_stats ? correct.data_ptr<bool>() : nullptr;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(V, 1));  // >= ~16k logits per task

  for (int64_t start = 0; start < N; start += C) {
    const int64_t rows = std::min(C, N - start);
    const Tensor h_in = hidden.narrow(0, start, rows).contiguous();
    const Tensor h = cast_h ? hbuf.narrow(0, 0, rows).copy_(h_in) : h_in;  // (rows, H) fp32
    Tensor z = zbuf.narrow(0, 0, rows);                                    // (rows, V)
    at::mm_out(z, h, w32.t());
    float* z_ptr = z.data_ptr<float>();
    at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t i = start + r;
        const int64_t t = t_ptr[i];
        float* zr = z_ptr + r * V;
        if (t == ignore_index) {  // counts nowhere: zero outputs, zero gradient row
          loss_p[i] = nll_p[i] = lse_p[i] = 0.0f;
          if (ent_p) ent_p[i] = 0.0f;
          if (cor_p) cor_p[i] = false;
          if (grad) std::fill(zr, zr + V, 0.0f);
          continue;
        }
        TORCH_CHECK(t >= 0 && t < V, "lce_fwd: target ", t, " at token ", i, " is out of range [0, ", V,
                    ") and is not ignore_index=", ignore_index);
        const RowOut o = lce_row(zr, t, s_ptr ? s_ptr[i] : 1.0f, P);
        loss_p[i] = o.loss;
        nll_p[i] = o.nll;
        lse_p[i] = o.lse;
        if (ent_p) ent_p[i] = o.entropy;
        if (cor_p) cor_p[i] = o.correct;
      }
    });
    if (need_d_hidden) d_hidden.narrow(0, start, rows).copy_(at::mm(z, w32));  // (rows, V) @ (V, H)
    if (need_d_weight) d_weight.addmm_(z.t(), h);                              // (V, rows) @ (rows, H)
    if (need_d_bias) d_bias.add_(z.sum(0));                                    // (V,)
  }
  return {loss, nll, lse, correct, entropy, d_hidden, d_weight, d_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(scaling_train, CPU, m) { m.impl("lce_fwd", &lce_fwd_cpu); }
