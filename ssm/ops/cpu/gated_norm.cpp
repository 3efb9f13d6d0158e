// Gated RMSNorm / LayerNorm of Mamba-2 on the CPU, forward and backward, over groups of
// `group` features of each row. The row (and silu(z)) is widened to float32 once; group
// statistics are recomputed in the backward instead of being stored.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/kernels.h"
#include "cpu/row_ops.h"
#include "cpu/runtime/parallel.h"

namespace ssm::cpu::SSM_ISA {
namespace {

int threads_for(int64_t work, int nthreads) {
  return int(std::max<int64_t>(1, std::min<int64_t>(nthreads, work / 32768)));
}

// u = x (* silu(z) when gating before the norm); zr = z, zs = sigmoid(z) (for the gate's gradient).
void load_row_inputs(const GatedNormParams& p, int64_t row, float* u, float* zr, float* zs) {
  load_any(u, elem_ptr(p.x, p.dtype, row, 0), p.dtype, p.x.stride[1], p.cols);
  if (!p.z.present()) return;
  load_any(zr, elem_ptr(p.z, p.z_dtype, row, 0), p.z_dtype, p.z.stride[1], p.cols);
  sigmoid_row(zs, zr, p.cols);
  if (!p.norm_before_gate)
    for (int64_t i = 0; i < p.cols; ++i) u[i] *= zr[i] * zs[i];
}

// Normalizes each group of u in place (u becomes xhat); rstd[k] of group k.
void normalize_groups(const GatedNormParams& p, float* u, float* rstd) {
  const int64_t g = p.group;
  for (int64_t k = 0; k < p.cols / g; ++k) {
    float* v = u + k * g;
    float mean = p.is_rms ? 0.f : row_sum(v, g) / float(g);
    rstd[k] = 1.f / std::sqrt(row_sq_dev(v, mean, g) / float(g) + p.eps);
    for (int64_t i = 0; i < g; ++i) v[i] = (v[i] - mean) * rstd[k];
  }
}

}  // namespace

void gated_norm_fwd(const GatedNormParams& p, int nthreads) {
  const int64_t n = p.cols;
  const float* w = ptr<float>(p.weight);
  const float* b = p.bias.present() ? ptr<float>(p.bias) : nullptr;
  const bool gate_after = p.z.present() && p.norm_before_gate;
  parallel_for(p.rows, threads_for(p.rows * n, nthreads), [&](int64_t begin, int64_t end) {
    std::vector<float> u(n), zr(p.z.present() ? n : 0), zs(zr.size()), rstd(n / p.group);
    for (int64_t row = begin; row < end; ++row) {
      load_row_inputs(p, row, u.data(), zr.data(), zs.data());
      normalize_groups(p, u.data(), rstd.data());
      for (int64_t i = 0; i < n; ++i) u[i] = u[i] * w[i] + (b ? b[i] : 0.f);
      if (gate_after)
        for (int64_t i = 0; i < n; ++i) u[i] *= zr[i] * zs[i];
      store_any(elem_ptr(p.out, p.dtype, row, 0), p.dtype, p.out.stride[1], u.data(), n);
    }
  });
}

// o = xhat * w + b; y = o * silu(z) (gate after) or y = o. Per group of the normalized u:
// du = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = do * w (no mean(g) for RMSNorm);
// gating before the norm: dx = du * silu(z), dz = du * x * silu'(z).
void gated_norm_bwd(const GatedNormParams& p, int nthreads) {
  const int64_t n = p.cols, gs = p.group, parts = p.parts, rows_per_part = (p.rows + parts - 1) / parts;
  const float* w = ptr<float>(p.weight);
  const float* b = p.bias.present() ? ptr<float>(p.bias) : nullptr;
  const bool has_z = p.z.present(), gate_after = has_z && p.norm_before_gate;
  parallel_for(parts, threads_for(p.rows * n, nthreads), [&](int64_t part_begin, int64_t part_end) {
    std::vector<float> u(n), zr(has_z ? n : 0), zs(zr.size()), dy(n), g(n), dz(zr.size()), rstd(n / gs);
    for (int64_t part = part_begin; part < part_end; ++part) {
      float* dw = mut_ptr<float>(p.dweight_parts) + part * p.dweight_parts.stride[0];
      float* db = b ? mut_ptr<float>(p.dbias_parts) + part * p.dbias_parts.stride[0] : nullptr;
      std::fill(dw, dw + n, 0.f);
      if (db) std::fill(db, db + n, 0.f);
      const int64_t row_end = std::min(p.rows, (part + 1) * rows_per_part);
      for (int64_t row = part * rows_per_part; row < row_end; ++row) {
        load_row_inputs(p, row, u.data(), zr.data(), zs.data());
        normalize_groups(p, u.data(), rstd.data());
        load_any(dy.data(), elem_ptr(p.dout, p.dout_dtype, row, 0), p.dout_dtype, p.dout.stride[1], n);
        if (gate_after) {
          for (int64_t i = 0; i < n; ++i) {
            float o = u[i] * w[i] + (b ? b[i] : 0.f);
            dz[i] = dy[i] * o * silu_grad_from_sigmoid(zr[i], zs[i]);
            dy[i] *= zr[i] * zs[i];
          }
        }
        for (int64_t i = 0; i < n; ++i) {
          g[i] = dy[i] * w[i];
          dw[i] += dy[i] * u[i];
        }
        if (db)
          for (int64_t i = 0; i < n; ++i) db[i] += dy[i];
        for (int64_t k = 0; k < n / gs; ++k) {
          float* gk = g.data() + k * gs;
          const float* xk = u.data() + k * gs;
          const float c1 = row_dot(gk, xk, gs) / float(gs);
          const float c2 = p.is_rms ? 0.f : row_sum(gk, gs) / float(gs);
          for (int64_t i = 0; i < gs; ++i) gk[i] = rstd[k] * (gk[i] - c2 - xk[i] * c1);
        }
        if (has_z && !gate_after) {
          // the raw x again (u now holds xhat)
          load_any(u.data(), elem_ptr(p.x, p.dtype, row, 0), p.dtype, p.x.stride[1], n);
          for (int64_t i = 0; i < n; ++i) {
            dz[i] = g[i] * u[i] * silu_grad_from_sigmoid(zr[i], zs[i]);
            g[i] *= zr[i] * zs[i];
          }
        }
        store_any(elem_ptr(p.dx, p.dtype, row, 0), p.dtype, p.dx.stride[1], g.data(), n);
        if (has_z) store_any(elem_ptr(p.dz, p.z_dtype, row, 0), p.z_dtype, p.dz.stride[1], dz.data(), n);
      }
    }
  });
}

}  // namespace ssm::cpu::SSM_ISA
