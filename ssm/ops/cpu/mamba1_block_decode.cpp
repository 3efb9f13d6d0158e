// One decoded token through a whole prenorm Mamba-1 block on the CPU, in one call: the residual
// add + norm per batch row, then in_proj, the layer's inner part (mamba1_decode) and out_proj through
// the small-batch kernels, each pass threaded inside. Replaces a block's ~10 op calls and their Python.
#include <vector>

#include "cpu/kernels.h"
#include "cpu/row_ops.h"

namespace ssm::cpu::SSM_ISA {
namespace {

// Row b: s = hidden (+ residual), residual = s, normed = norm(s) * weight (+ bias) in dtype.
void add_norm_row(const Mamba1BlockDecodeParams& p, int64_t b, float* s, float* tmp) {
  const int64_t n = p.d_model;
  const DType dt = p.inner.dtype;
  load_any(s, elem_ptr(p.hidden, dt, b, 0), dt, p.hidden.stride[1], n);
  float* res = static_cast<float*>(elem_ptr(p.residual, DType::f32, b, 0));
  if (p.add_residual) {
    load_row(tmp, res, p.residual.stride[1], n);
    for (int64_t i = 0; i < n; ++i) s[i] += tmp[i];
  }
  store_row(res, p.residual.stride[1], s, n);
  const float mean = p.is_rms ? 0.f : row_sum(s, n) / float(n);
  const float rstd = 1.f / std::sqrt(row_sq_dev(s, mean, n) / float(n) + p.eps);
  // the expressions of layer_norm_fwd (contiguous weight and bias), so the results match it bit for bit
  const float* w = ptr<float>(p.norm_weight);
  if (p.norm_bias.present()) {
    const float* bias = ptr<float>(p.norm_bias);
    for (int64_t i = 0; i < n; ++i) s[i] = (s[i] - mean) * rstd * w[i] + bias[i];
  } else {
    for (int64_t i = 0; i < n; ++i) s[i] = (s[i] - mean) * rstd * w[i];
  }
  store_any(elem_ptr(p.normed, dt, b, 0), dt, p.normed.stride[1], s, n);
}

GemvParams linear(const Mamba1BlockDecodeParams& p, const TensorArg& x, const TensorArg& w, const TensorArg& bias,
                  const TensorArg& out, int64_t in_features, int64_t out_features) {
  GemvParams g;
  g.batch = p.inner.batch, g.in_features = in_features, g.out_features = out_features, g.dtype = p.inner.dtype;
  g.x = x, g.weight = w, g.bias = bias, g.out = out;
  return g;
}

}  // namespace

void mamba1_block_decode(const Mamba1BlockDecodeParams& p, int nthreads) {
  if (p.inner.batch == 0) return;
  std::vector<float> s(p.d_model), tmp(p.d_model);
  for (int64_t b = 0; b < p.inner.batch; ++b) add_norm_row(p, b, s.data(), tmp.data());
  const int64_t D = p.inner.dim;
  gemv(linear(p, p.normed, p.in_proj_weight, p.in_proj_bias, p.xz, p.d_model, 2 * D), nthreads);
  mamba1_decode(p.inner, nthreads);
  gemv(linear(p, p.inner.out, p.out_proj_weight, p.out_proj_bias, p.hidden, D, p.d_model), nthreads);
}

}  // namespace ssm::cpu::SSM_ISA
