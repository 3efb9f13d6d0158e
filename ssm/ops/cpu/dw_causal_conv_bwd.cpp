// Depthwise causal conv, backward, on the CPU. One task per block of channels (so dweight and
// dbias of a channel are summed over the batch by one thread, without races): per (batch,
// channel) row the forward conv is recomputed for silu's derivative, then
// dxs[j] = sum_k w[k] g[j - k] over xs = [history, x] gives dx and dinitial_states, and
// dweight[k] = sum_t g[t] xs[t + k].
#include <algorithm>
#include <vector>

#include "cpu/conv_rows.h"
#include "cpu/kernels.h"
#include "cpu/row_ops.h"
#include "cpu/runtime/parallel.h"

namespace ssm::cpu::SSM_ISA {
namespace {

// Per-thread buffers for one row: xs = [history, x], pre-activation and its sigmoid, padded
// gradient, dxs.
struct RowBuffers {
  std::vector<float> xs, pre, sig, gp, dxs;
  std::vector<int64_t> seg_start;
  RowBuffers(int64_t L, int64_t H, bool seq)
      : xs(H + L), pre(L), sig(L), gp(L + 2 * H, 0.f), dxs(H + L), seg_start(seq ? L : 0) {}
};

// dxs[j] = sum_k w[k] g[j - k] (g zero outside [0, L)), dw[k] += sum_t g[t] xs[t + k].
void grad_row(RowBuffers& r, const float* w, float* dw, int64_t L, int64_t W) {
  const int64_t H = W - 1;
  const float* g = r.gp.data() + H;  // gp = [0 (H), g (L), 0 (H)]
  std::fill(r.dxs.begin(), r.dxs.end(), 0.f);
  for (int64_t k = 0; k < W; ++k) {
    const float* gk = r.gp.data() + H - k;  // gk[j] = g[j - k]
    for (int64_t j = 0; j < H + L; ++j) r.dxs[j] += w[k] * gk[j];
    dw[k] += row_dot(g, r.xs.data() + k, L);
  }
}

// The same with seq_idx: tap k of token t counts only when xs[t + k] is in t's segment.
void grad_row_segmented(RowBuffers& r, const float* w, float* dw, int64_t L, int64_t W) {
  const int64_t H = W - 1;
  const float* g = r.gp.data() + H;
  std::fill(r.dxs.begin(), r.dxs.end(), 0.f);
  for (int64_t t = 0; t < L; ++t) {
    for (int64_t k = 0; k < W; ++k) {
      if (t - H + k < r.seg_start[t]) continue;
      r.dxs[t + k] += w[k] * g[t];
      dw[k] += g[t] * r.xs[t + k];
    }
  }
}

template <typename T>
void conv_bwd_row(const ConvBwdParams& q, int64_t b, int64_t d, RowBuffers& r, float* dw, float& db) {
  const ConvParams& p = q.fwd;
  const int64_t L = p.seqlen, W = p.width, H = W - 1;
  const float* w = ptr<float>(p.weight) + d * p.weight.stride[0];
  const float bias = p.bias.present() ? ptr<float>(p.bias)[d * p.bias.stride[0]] : 0.f;
  if (p.initial_states.present())
    load_row(r.xs.data(), ptr<T>(p.initial_states) + b * p.initial_states.stride[0] + d * p.initial_states.stride[1],
             p.initial_states.stride[2], H);
  else
    std::fill(r.xs.begin(), r.xs.begin() + H, 0.f);
  load_row(r.xs.data() + H, ptr<T>(p.x) + b * p.x.stride[0] + d * p.x.stride[1], p.x.stride[2], L);
  const bool seq = p.seq_idx.present();
  if (seq) segment_starts(r.seg_start.data(), ptr<int32_t>(p.seq_idx) + b * p.seq_idx.stride[0], p.seq_idx.stride[1], L, W);

  float* g = r.gp.data() + H;
  load_row(g, ptr<T>(q.dout) + b * q.dout.stride[0] + d * q.dout.stride[1], q.dout.stride[2], L);
  if (p.silu) {
    if (seq) conv_row_segmented(r.pre.data(), r.xs.data(), w, bias, L, W, r.seg_start.data());
    else conv_row(r.pre.data(), r.xs.data(), w, bias, L, W);
    sigmoid_row(r.sig.data(), r.pre.data(), L);
    for (int64_t t = 0; t < L; ++t) g[t] *= silu_grad_from_sigmoid(r.pre[t], r.sig[t]);
  }
  db += row_sum(g, L);
  if (seq) grad_row_segmented(r, w, dw, L, W);
  else grad_row(r, w, dw, L, W);

  if (q.dfinal_states.present()) {
    // final_states[i] = xs[L + i] when that input is in the last segment
    const int64_t last_start = seq && L > 0 ? r.seg_start[L - 1] : -H;
    const T* df = ptr<T>(q.dfinal_states) + b * q.dfinal_states.stride[0] + d * q.dfinal_states.stride[1];
    for (int64_t i = 0; i < H; ++i)
      if (L - H + i >= last_start) r.dxs[L + i] += to_float(df[i * q.dfinal_states.stride[2]]);
  }
  store_row(mut_ptr<T>(q.dx) + b * q.dx.stride[0] + d * q.dx.stride[1], q.dx.stride[2], r.dxs.data() + H, L);
  if (q.dinitial_states.present())
    store_row(mut_ptr<T>(q.dinitial_states) + b * q.dinitial_states.stride[0] + d * q.dinitial_states.stride[1],
              q.dinitial_states.stride[2], r.dxs.data(), H);
}

template <typename T>
void conv_bwd(const ConvBwdParams& q, int nthreads) {
  const ConvParams& p = q.fwd;
  const int64_t L = p.seqlen, W = p.width;
  parallel_for(p.dim, nthreads, [&](int64_t begin, int64_t end) {
    RowBuffers r(L, W - 1, p.seq_idx.present());
    std::vector<float> dw(W);
    for (int64_t d = begin; d < end; ++d) {
      std::fill(dw.begin(), dw.end(), 0.f);
      float db = 0.f;
      for (int64_t b = 0; b < p.batch; ++b) conv_bwd_row<T>(q, b, d, r, dw.data(), db);
      float* dwd = mut_ptr<float>(q.dweight) + d * q.dweight.stride[0];
      for (int64_t k = 0; k < W; ++k) dwd[k * q.dweight.stride[1]] = dw[k];
      if (q.dbias.present()) mut_ptr<float>(q.dbias)[d * q.dbias.stride[0]] = db;
    }
  });
}

}  // namespace

void dw_causal_conv_bwd(const ConvBwdParams& q, int nthreads) {
  SSM_DTYPE_SWITCH(q.fwd.dtype, T, "dw_causal_conv_bwd", [&] { conv_bwd<T>(q, nthreads); });
}

}  // namespace ssm::cpu::SSM_ISA
