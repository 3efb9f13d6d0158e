// Pieces shared by the selective-scan forward and backward kernels: the task layout
// (batch, group, slice of the group's channels; 8 channels per vector), per-token segment
// tables (state restarts and last-state rows) and the loads of one time chunk.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/scan_math.h"
#include "cpu/vec.h"

namespace ssm::cpu::SSM_ISA::scan {

constexpr int64_t kChunk = 64;  // time steps loaded and transposed at a time

// Task i = ((b * G) + g) * S + s covers vectors [v0, v1) of group g; vector v holds
// channels g * cpg + v * 8 + lane.
struct Layout {
  int64_t groups, cpg, vecs, slices;
  explicit Layout(const SelectiveScanParams& p)
      : groups(p.ngroups), cpg(p.dim / p.ngroups), vecs((cpg + kLanes - 1) / kLanes), slices(p.nslices) {}
  int64_t tasks(int64_t batch) const { return batch * groups * slices; }
  int64_t max_vecs() const { return (vecs + slices - 1) / slices; }
  struct Task { int64_t b, g, s, v0, v1; };
  Task task(int64_t i) const {
    int64_t s = i % slices, bg = i / slices;
    return {bg / groups, bg % groups, s, s * vecs / slices, (s + 1) * vecs / slices};
  }
  int64_t channel(const Task& t, int64_t v) const { return t.g * cpg + v * kLanes; }
  int lanes(int64_t v) const { return int(std::min<int64_t>(kLanes, cpg - v * kLanes)); }
};

// Per token of one batch row: reset[t] = -2 (carry on), -1 (restart from zeros) or the
// initial-state row to restart from (zeros when there is no initial_state); last[t] = the
// last-state row that ends at token t, or -1. Rows of empty sequences have no token.
struct Segments {
  std::vector<int32_t> reset, last, empty_rows;

  void build(const SelectiveScanParams& p, int64_t b) {
    const int64_t L = p.seqlen;
    reset.assign(L, -2);
    last.assign(L, -1);
    empty_rows.clear();
    if (p.cu_seqlens.present()) {
      const int32_t* cu = ptr<int32_t>(p.cu_seqlens);
      const int64_t st = p.cu_seqlens.stride[0];
      for (int64_t i = 0; i < p.nrows; ++i) {
        int32_t a = cu[i * st], e = cu[(i + 1) * st];
        if (a == e) {
          empty_rows.push_back(int32_t(i));
        } else {
          reset[a] = int32_t(i);
          last[e - 1] = int32_t(i);
        }
      }
      return;
    }
    if (L == 0) {
      empty_rows.push_back(int32_t(b));
      return;
    }
    reset[0] = int32_t(b);
    last[L - 1] = int32_t(b);
    if (p.seq_idx.present()) {
      const int32_t* si = ptr<int32_t>(p.seq_idx) + b * p.seq_idx.stride[0];
      const int64_t st = p.seq_idx.stride[1];
      for (int64_t t = 1; t < L; ++t)
        if (si[t * st] != si[(t - 1) * st]) reset[t] = -1;
    }
  }
};

// dst[t * 8 + l] = float(src[l * ld + t * st]) for t < len; lanes l >= nl are zero.
template <typename E>
inline void load_lanes(float* dst, const E* src, int64_t ld, int64_t st, int nl, int64_t len) {
  if (ld == 1 && nl == kLanes) {  // channels contiguous (e.g. delta from a projection): 8 lanes per step
    for (int64_t t = 0; t < len; ++t)
      for (int l = 0; l < kLanes; ++l) dst[t * kLanes + l] = to_float(src[t * st + l]);
    return;
  }
  for (int l = 0; l < kLanes; ++l) {
    const E* s = src + l * ld;
    if (l < nl) {
      for (int64_t t = 0; t < len; ++t) dst[t * kLanes + l] = to_float(s[t * st]);
    } else {
      for (int64_t t = 0; t < len; ++t) dst[t * kLanes + l] = 0.f;
    }
  }
}

// dst[l * ld + t * st] = E(src[t * 8 + l]) for lanes l < nl, t < len.
template <typename E>
inline void store_lanes(E* dst, int64_t ld, int64_t st, const float* src, int nl, int64_t len) {
  if (ld == 1 && nl == kLanes) {  // channels contiguous (an output like delta): 8 lanes per step
    for (int64_t t = 0; t < len; ++t)
      for (int l = 0; l < kLanes; ++l) dst[t * st + l] = from_float<E>(src[t * kLanes + l]);
    return;
  }
  for (int l = 0; l < nl; ++l)
    for (int64_t t = 0; t < len; ++t) dst[l * ld + t * st] = from_float<E>(src[t * kLanes + l]);
}

// dst[n * 8 + l] = m[row, c0 + l, n] of a (rows, D, N) float32 tensor; lanes >= nl are zero.
inline void load_matrix_lanes(float* dst, const TensorArg& m, int64_t row, int64_t c0, int nl, int64_t N) {
  const float* base = ptr<float>(m) + row * m.stride[0];
  for (int64_t n = 0; n < N; ++n)
    for (int l = 0; l < kLanes; ++l)
      dst[n * kLanes + l] = l < nl ? base[(c0 + l) * m.stride[1] + n * m.stride[2]] : 0.f;
}

// dst[n * 8 + l] = scale * m[c0 + l, n] of a (D, N) float32 tensor (A, constant B or C); lanes >= nl are zero.
inline void load_const_lanes(float* dst, const TensorArg& m, int64_t c0, int nl, int64_t N, float scale = 1.f) {
  const float* base = ptr<float>(m);
  for (int64_t n = 0; n < N; ++n)
    for (int l = 0; l < kLanes; ++l)
      dst[n * kLanes + l] = l < nl ? scale * base[(c0 + l) * m.stride[0] + n * m.stride[1]] : 0.f;
}

// A (D,) float32 vector in lanes.
inline vf load_vector_lanes(const TensorArg& v, int64_t c0, int nl, float absent) {
  vf out = splat(absent);
  if (!v.present()) return out;
  for (int l = 0; l < nl; ++l) out[l] = ptr<float>(v)[(c0 + l) * v.stride[0]];
  return out;
}

// dst[t * N + n] = float(B[b, g, n, t0 + t]): one time chunk of a variable B or C, transposed.
template <typename E>
inline void load_bc_chunk(float* dst, const TensorArg& m, int64_t b, int64_t g, int64_t N, int64_t t0, int64_t len) {
  const E* base = ptr<E>(m) + b * m.stride[0] + g * m.stride[1] + t0 * m.stride[3];
  for (int64_t n = 0; n < N; ++n)
    for (int64_t t = 0; t < len; ++t) dst[t * N + n] = to_float(base[n * m.stride[2] + t * m.stride[3]]);
}

// dt = delta + dt_bias, softplus'd when asked (slope = d dt / d delta when wanted); dtu = dt * u.
inline void transform_dt(float* dt, float* dtu, float* slope, const float* u, vf bias, bool softplus, int64_t T) {
  for (int64_t t = 0; t < T; ++t) {
    vf x = vload(dt + t * kLanes) + bias;
    vf d = softplus ? softplusv(x) : x;
    if (slope) vstore(slope + t * kLanes, softplus ? sigmoidv(x) : splat(1.f));
    vstore(dt + t * kLanes, d);
    vstore(dtu + t * kLanes, d * vload(u + t * kLanes));
  }
}

// h (N x 8) = initial_state[row] for channels c0.., or zeros (row < 0 or no initial state).
inline void reset_state(float* h, const SelectiveScanParams& p, int32_t row, int64_t c0, int nl, int64_t N) {
  if (row >= 0 && p.initial_state.present()) {
    load_matrix_lanes(h, p.initial_state, row, c0, nl, N);
  } else {
    std::fill(h, h + N * kLanes, 0.f);
  }
}

// dst[row, c0 + l, n] = h[n * 8 + l] for lanes l < nl ((rows, D, N) float32).
inline void store_state(const TensorArg& dst, int32_t row, int64_t c0, int nl, int64_t N, const float* h) {
  float* base = mut_ptr<float>(dst) + row * dst.stride[0];
  for (int l = 0; l < nl; ++l)
    for (int64_t n = 0; n < N; ++n) base[(c0 + l) * dst.stride[1] + n * dst.stride[2]] = h[n * kLanes + l];
}

}  // namespace ssm::cpu::SSM_ISA::scan
