// Residual add + LayerNorm / RMSNorm on the CPU, forward and backward. One task per block of
// rows: each row is widened to float32 once, its statistics computed from the buffer (two
// passes: mean, then the centred variance), and the outputs written in their dtypes.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/kernels.h"
#include "cpu/row_ops.h"
#include "cpu/runtime/parallel.h"

namespace ssm::cpu::SSM_ISA {
namespace {

struct RowStats {
  float mean, rstd;
};

RowStats row_stats(const float* s, int64_t n, float eps, bool is_rms) {
  float mean = is_rms ? 0.f : row_sum(s, n) / float(n);
  float var = row_sq_dev(s, mean, n) / float(n);
  return {mean, 1.f / std::sqrt(var + eps)};
}

// xhat[i] = (s[i] - mean) * rstd, in place.
void normalize(float* s, RowStats st, int64_t n) {
  for (int64_t i = 0; i < n; ++i) s[i] = (s[i] - st.mean) * st.rstd;
}

// s = x (+ residual) for one row; writes residual_out when present.
void load_sum(const LayerNormParams& p, int64_t row, float* s, float* tmp) {
  const int64_t n = p.cols;
  load_any(s, elem_ptr(p.x, p.dtype, row, 0), p.dtype, p.x.stride[1], n);
  if (p.residual.present()) {
    load_any(tmp, elem_ptr(p.residual, p.residual_dtype, row, 0), p.residual_dtype, p.residual.stride[1], n);
    for (int64_t i = 0; i < n; ++i) s[i] += tmp[i];
  }
  if (p.residual_out.present())
    store_any(elem_ptr(p.residual_out, p.residual_out_dtype, row, 0), p.residual_out_dtype,
              p.residual_out.stride[1], s, n);
}

// Threads for `work` float operations: small problems stay on the calling thread.
int threads_for(int64_t work, int nthreads) {
  return int(std::max<int64_t>(1, std::min<int64_t>(nthreads, work / 32768)));
}

}  // namespace

void layer_norm_fwd(const LayerNormParams& p, int nthreads) {
  const int64_t n = p.cols;
  const float* w = ptr<float>(p.weight);
  const float* b = p.bias.present() ? ptr<float>(p.bias) : nullptr;
  parallel_for(p.rows, threads_for(p.rows * n, nthreads), [&](int64_t begin, int64_t end) {
    std::vector<float> s(n), tmp(n);
    for (int64_t row = begin; row < end; ++row) {
      load_sum(p, row, s.data(), tmp.data());
      RowStats st = row_stats(s.data(), n, p.eps, p.is_rms);
      if (b) {
        for (int64_t i = 0; i < n; ++i) s[i] = (s[i] - st.mean) * st.rstd * w[i] + b[i];
      } else {
        for (int64_t i = 0; i < n; ++i) s[i] = (s[i] - st.mean) * st.rstd * w[i];
      }
      store_any(elem_ptr(p.out, p.dtype, row, 0), p.dtype, p.out.stride[1], s.data(), n);
    }
  });
}

// ds = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dy * w (no mean(g) term for RMSNorm);
// the rows are split into `parts` blocks, each accumulating its own dweight/dbias row.
void layer_norm_bwd(const LayerNormBwdParams& p, int nthreads) {
  const int64_t n = p.cols, parts = p.parts, rows_per_part = (p.rows + parts - 1) / parts;
  const float* w = ptr<float>(p.weight);
  const bool has_bias = p.dbias_parts.present();
  parallel_for(parts, threads_for(p.rows * n, nthreads), [&](int64_t part_begin, int64_t part_end) {
    std::vector<float> xhat(n), dy(n), g(n);
    for (int64_t part = part_begin; part < part_end; ++part) {
      float* dw = mut_ptr<float>(p.dweight_parts) + part * p.dweight_parts.stride[0];
      float* db = has_bias ? mut_ptr<float>(p.dbias_parts) + part * p.dbias_parts.stride[0] : nullptr;
      std::fill(dw, dw + n, 0.f);
      if (db) std::fill(db, db + n, 0.f);
      const int64_t row_end = std::min(p.rows, (part + 1) * rows_per_part);
      for (int64_t row = part * rows_per_part; row < row_end; ++row) {
        load_any(xhat.data(), elem_ptr(p.s, p.dtype, row, 0), p.dtype, p.s.stride[1], n);
        RowStats st = row_stats(xhat.data(), n, p.eps, p.is_rms);
        normalize(xhat.data(), st, n);
        load_any(dy.data(), elem_ptr(p.dout, p.dout_dtype, row, 0), p.dout_dtype, p.dout.stride[1], n);
        for (int64_t i = 0; i < n; ++i) {
          g[i] = dy[i] * w[i];
          dw[i] += dy[i] * xhat[i];
        }
        if (db)
          for (int64_t i = 0; i < n; ++i) db[i] += dy[i];
        const float c1 = row_dot(g.data(), xhat.data(), n) / float(n);
        const float c2 = p.is_rms ? 0.f : row_sum(g.data(), n) / float(n);
        for (int64_t i = 0; i < n; ++i) g[i] = st.rstd * (g[i] - c2 - xhat[i] * c1);
        if (p.dresidual_out.present()) {
          load_any(dy.data(), elem_ptr(p.dresidual_out, p.dres_dtype, row, 0), p.dres_dtype,
                   p.dresidual_out.stride[1], n);
          for (int64_t i = 0; i < n; ++i) g[i] += dy[i];
        }
        store_any(elem_ptr(p.dx, p.dx_dtype, row, 0), p.dx_dtype, p.dx.stride[1], g.data(), n);
        if (p.dresidual.present())
          store_any(elem_ptr(p.dresidual, p.dresidual_dtype, row, 0), p.dresidual_dtype, p.dresidual.stride[1],
                    g.data(), n);
      }
    }
  });
}

}  // namespace ssm::cpu::SSM_ISA
