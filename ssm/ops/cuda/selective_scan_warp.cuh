// Pieces shared by the warp-per-channel selective scan kernels (selective_scan_fwd_warp.cuh,
// selective_scan_bwd.cuh): lane-blocked step loads, segment starts and ends, warp scans of affine maps.
#pragma once
#include "cuda/kernels.h"
#include "cuda/vec.cuh"

namespace ssm::cuda::scan_warp {

constexpr float kLog2e = 1.4426950408889634f;

// Which steps start / end a segment, and the state rows they use (plain, seq_idx, cu_seqlens).
struct Segs {
  const SelectiveScanParams& p;
  int64_t b;
  // cu_seqlens: the last sequence s with cu[s] <= t (the nonempty one holding t).
  __device__ int64_t seq_of(int64_t t) const {
    const int* cu = ptr<int>(p.cu_seqlens);
    int64_t lo = 0, hi = p.nrows - 1;
    while (lo < hi) {
      const int64_t mid = (lo + hi + 1) / 2;
      if (cu[mid * p.cu_seqlens.stride[0]] <= t) lo = mid; else hi = mid - 1;
    }
    return lo;
  }
  __device__ int cu_at(int64_t s) const { return ptr<int>(p.cu_seqlens)[s * p.cu_seqlens.stride[0]]; }
  __device__ bool starts(int64_t t) const {
    if (has(p.cu_seqlens)) return cu_at(seq_of(t)) == t;
    if (t == 0) return true;
    if (!has(p.seq_idx)) return false;
    const int* s = ptr<int>(p.seq_idx) + b * p.seq_idx.stride[0];
    return s[t * p.seq_idx.stride[1]] != s[(t - 1) * p.seq_idx.stride[1]];
  }
  __device__ bool ends(int64_t t) const {
    if (has(p.cu_seqlens)) return cu_at(seq_of(t) + 1) == t + 1;
    return t == p.seqlen - 1;
  }
  // Row of initial_state (segment start at t) or -1 for zeros; row of dlast (segment end at t).
  __device__ int64_t start_row(int64_t t) const { return has(p.cu_seqlens) ? seq_of(t) : (t == 0 ? b : -1); }
  __device__ int64_t end_row(int64_t t) const { return has(p.cu_seqlens) ? seq_of(t) : b; }
};

__device__ __forceinline__ float& at3(const TensorArg& t, int64_t i, int64_t j, int64_t k) {
  return ptr<float>(t)[i * t.stride[0] + j * t.stride[1] + k * t.stride[2]];
}

// v[i] = row[(t + i) * stride] for t + i < L, else 0 (16-byte packs when vec and in range).
template <typename T, int kItems>
__device__ __forceinline__ void load_items(float* v, const T* row, int64_t stride, int64_t t, int64_t L, bool vec) {
  if (vec && t + kItems <= L) {
    load_floats<T, kItems>(v, row + t);
    return;
  }
#pragma unroll
  for (int i = 0; i < kItems; ++i) v[i] = t + i < L ? to_float(row[(t + i) * stride]) : 0.f;
}

template <typename T, int kItems>
__device__ __forceinline__ void store_items(T* row, int64_t stride, const float* v, int64_t t, int64_t L, bool vec) {
  if (vec && t + kItems <= L) {
    store_floats<T, kItems>(row + t, v);
    return;
  }
#pragma unroll
  for (int i = 0; i < kItems; ++i)
    if (t + i < L) row[(t + i) * stride] = from_float<T>(v[i]);
}

// (P, q) <- (P, q) after (Po, qo): x -> P (Po x + qo) + q.
__device__ __forceinline__ void compose(float& P, float& q, float Po, float qo) {
  q = fmaf(P, qo, q);
  P *= Po;
}

// Inclusive warp scan of affine maps towards higher lanes (kUp) or lower lanes, then the
// exclusive value (identity at the end lane) in (Pe, qe).
template <bool kUp>
__device__ __forceinline__ void warp_scan(float& P, float& q, float& Pe, float& qe, int lane) {
#pragma unroll
  for (int off = 1; off < 32; off *= 2) {
    const float Po = kUp ? __shfl_up_sync(0xffffffffu, P, off) : __shfl_down_sync(0xffffffffu, P, off);
    const float qo = kUp ? __shfl_up_sync(0xffffffffu, q, off) : __shfl_down_sync(0xffffffffu, q, off);
    if (kUp ? lane >= off : lane + off < 32) compose(P, q, Po, qo);
  }
  Pe = kUp ? __shfl_up_sync(0xffffffffu, P, 1) : __shfl_down_sync(0xffffffffu, P, 1);
  qe = kUp ? __shfl_up_sync(0xffffffffu, q, 1) : __shfl_down_sync(0xffffffffu, q, 1);
  if (kUp ? lane == 0 : lane == 31) Pe = 1.f, qe = 0.f;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

struct Vec {
  bool rows, B, C;  // 16-byte packs along L for (B, D, L) rows, B rows, C rows
};

// One warp's channel d of batch row b (group g); K::kItems steps per lane.
template <typename T, typename K>
struct Warp {
  const SelectiveScanParams& p;
  Segs seg;
  int64_t b, d, g, L;
  int lane, w;
  bool valid;  // a channel of the group (the last block of a group may have idle warps)
  float Dd, bias;

  __device__ const T* row(const TensorArg& t) const { return ptr<T>(t) + b * t.stride[0] + d * t.stride[1]; }
  __device__ T* out_row(const TensorArg& t) const { return ptr<T>(t) + b * t.stride[0] + d * t.stride[1]; }
  __device__ const T* bc_row(const TensorArg& t, int64_t n) const {
    return ptr<T>(t) + b * t.stride[0] + g * t.stride[1] + n * t.stride[2];
  }
  __device__ float fresh(int64_t t, int64_t n) const {
    const int64_t r = seg.start_row(t);
    return r >= 0 && has(p.initial_state) ? at3(p.initial_state, r, d, n) : 0.f;
  }
  __device__ float& chunk_state(int64_t c, int64_t n) const {
    const TensorArg& s = p.chunk_states;
    return ptr<float>(s)[b * s.stride[0] + d * s.stride[1] + c * s.stride[2] + n * s.stride[3]];
  }
  // u and dt = softplus?(delta + dt_bias) of this lane's steps from t.
  __device__ void load_u_dt(float* u, float* dt, int64_t t, bool vec) const {
    load_items<T, K::kItems>(u, row(p.u), p.u.stride[2], t, L, vec);
    load_items<T, K::kItems>(dt, row(p.delta), p.delta.stride[2], t, L, vec);
#pragma unroll
    for (int i = 0; i < K::kItems; ++i) {
      const float v = dt[i] + bias;
      dt[i] = t + i < L ? (p.softplus ? softplus(v) : v) : 0.f;
    }
  }
  // B (or C) of state n at this lane's steps: a row of the variable tensor, or the constant.
  __device__ void load_bc(float* v, const TensorArg& src, bool var, int64_t n, int64_t t, bool vec) const {
    if (var) {
      load_items<T, K::kItems>(v, bc_row(src, n), src.stride[3], t, L, vec);
    } else {
      const float c = ptr<float>(src)[d * src.stride[0] + n * src.stride[1]];
#pragma unroll
      for (int i = 0; i < K::kItems; ++i) v[i] = c;
    }
  }
  __device__ unsigned start_mask(int64_t t) const {
    unsigned m = 0;
#pragma unroll
    for (int i = 0; i < K::kItems; ++i)
      if (t + i < L && seg.starts(t + i)) m |= 1u << i;
    return m;
  }
  __device__ unsigned end_mask(int64_t t) const {
    unsigned m = 0;
#pragma unroll
    for (int i = 0; i < K::kItems; ++i)
      if (t + i < L && seg.ends(t + i)) m |= 1u << i;
    return m;
  }
};

}  // namespace ssm::cuda::scan_warp
