// Row kernels of the depthwise causal conv shared by its forward, backward and update:
// a row xs = [history (W-1), x (L)] in float32 convolved with one channel's taps.
#pragma once
#include <cstdint>

#include "cpu/vec.h"

namespace ssm::cpu::SSM_ISA {

// out[t] = bias + sum_k w[k] * xs[t + k], for t < L, with xs = [history (W-1), x (L)].
template <int W>
inline void conv_row_fixed(float* out, const float* xs, const float* w, float bias, int64_t L) {
  for (int64_t t = 0; t < L; ++t) {
    float acc = bias;
    for (int k = 0; k < W; ++k) acc += w[k] * xs[t + k];
    out[t] = acc;
  }
}

inline void conv_row(float* out, const float* xs, const float* w, float bias, int64_t L, int64_t W) {
  switch (W) {
    case 2: return conv_row_fixed<2>(out, xs, w, bias, L);
    case 3: return conv_row_fixed<3>(out, xs, w, bias, L);
    case 4: return conv_row_fixed<4>(out, xs, w, bias, L);
    default:
      for (int64_t t = 0; t < L; ++t) {
        float acc = bias;
        for (int64_t k = 0; k < W; ++k) acc += w[k] * xs[t + k];
        out[t] = acc;
      }
  }
}

// With seq_idx: zero the taps that reach before the start of token t's segment.
// seg_start[t] is that start (the first segment starts at -(W-1): it sees the history).
inline void conv_row_segmented(float* out, const float* xs, const float* w, float bias, int64_t L,
                        int64_t W, const int64_t* seg_start) {
  for (int64_t t = 0; t < L; ++t) {
    float acc = bias;
    for (int64_t k = 0; k < W; ++k) {
      int64_t j = t - (W - 1) + k;
      if (j >= seg_start[t]) acc += w[k] * xs[t + k];
    }
    out[t] = acc;
  }
}

inline void segment_starts(int64_t* seg_start, const int32_t* seq_idx, int64_t stride, int64_t L, int64_t W) {
  int64_t start = -(W - 1);
  for (int64_t t = 0; t < L; ++t) {
    if (t > 0 && seq_idx[t * stride] != seq_idx[(t - 1) * stride]) start = t;
    seg_start[t] = start;
  }
}

}  // namespace ssm::cpu::SSM_ISA
