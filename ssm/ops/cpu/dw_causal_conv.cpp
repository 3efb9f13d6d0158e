// Depthwise causal conv, forward, on the CPU. One task per (batch, channel) row: the row
// is widened to float32 behind its W-1 history (initial states or zeros), so the inner
// loop over time is a contiguous multiply-add that the compiler vectorizes.
#include <algorithm>
#include <vector>

#include "cpu/conv_rows.h"
#include "cpu/kernels.h"
#include "cpu/row_ops.h"
#include "cpu/runtime/parallel.h"
#include "cpu/vec.h"

namespace ssm::cpu::SSM_ISA {
namespace {

template <typename T>
void conv_fwd(const ConvParams& p, int nthreads) {
  const int64_t L = p.seqlen, W = p.width, H = W - 1;
  parallel_for(p.batch * p.dim, nthreads, [&](int64_t begin, int64_t end) {
    std::vector<float> xs(H + L), out(L);
    std::vector<int64_t> seg_start(p.seq_idx.present() ? L : 0);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / p.dim, d = row % p.dim;
      const float* w = ptr<float>(p.weight) + d * p.weight.stride[0];  // weight is (D, W) contiguous rows
      float bias = p.bias.present() ? ptr<float>(p.bias)[d * p.bias.stride[0]] : 0.f;
      if (p.initial_states.present()) {
        const T* init = ptr<T>(p.initial_states) + b * p.initial_states.stride[0] + d * p.initial_states.stride[1];
        load_row(xs.data(), init, p.initial_states.stride[2], H);
      } else {
        std::fill(xs.begin(), xs.begin() + H, 0.f);
      }
      const T* x = ptr<T>(p.x) + b * p.x.stride[0] + d * p.x.stride[1];
      load_row(xs.data() + H, x, p.x.stride[2], L);

      if (p.seq_idx.present()) {
        const int32_t* si = ptr<int32_t>(p.seq_idx) + b * p.seq_idx.stride[0];
        segment_starts(seg_start.data(), si, p.seq_idx.stride[1], L, W);
        conv_row_segmented(out.data(), xs.data(), w, bias, L, W, seg_start.data());
      } else {
        conv_row(out.data(), xs.data(), w, bias, L, W);
      }
      if (p.silu) silu_row(out.data(), L);
      store_row(mut_ptr<T>(p.out) + b * p.out.stride[0] + d * p.out.stride[1], p.out.stride[2], out.data(), L);

      if (p.final_states.present()) {
        // The last W-1 inputs; those before the last segment's start are zero.
        int64_t last_start = p.seq_idx.present() && L > 0 ? seg_start[L - 1] : -H;
        T* fs = mut_ptr<T>(p.final_states) + b * p.final_states.stride[0] + d * p.final_states.stride[1];
        for (int64_t i = 0; i < H; ++i) {
          int64_t j = L - H + i;
          float v = j >= last_start ? xs[H + j] : 0.f;
          fs[i * p.final_states.stride[2]] = from_float<T>(v);
        }
      }
    }
  });
}

}  // namespace

void dw_causal_conv_fwd(const ConvParams& p, int nthreads) {
  SSM_DTYPE_SWITCH(p.dtype, T, "dw_causal_conv_fwd", [&] { conv_fwd<T>(p, nthreads); });
}

}  // namespace ssm::cpu::SSM_ISA
