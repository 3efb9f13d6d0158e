// Pieces shared by the thread-per-channel selective scan kernels (selective_scan_fwd_thread.cuh,
// selective_scan_bwd_thread.cuh): a thread owns one (batch, channel) and walks L in groups of
// kSteps steps. Per-channel rows (u, delta, z, out, ...) are read in whichever layout they come:
// 16-byte packs along L when L is contiguous, else one element per step (coalesced across the
// warp when the channel stride is 1, the channels-last layout of the Mamba-1 projections).
// B/C of a group are staged in shared memory as float for the block's channels.
#pragma once
#include <type_traits>

#include "cuda/kernels.h"
#include "cuda/vec.cuh"

namespace ssm::cuda::scan_thread {

constexpr int kSteps = 16;  // steps per group; the backward's chunk
constexpr float kLog2e = 1.4426950408889634f;
constexpr int kMaxN = 16;   // larger N: the warp kernels

__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

template <typename T>
__device__ __forceinline__ T zero() { return from_float<T>(0.f); }

// softplus (identity above 20, as mamba_ssm) as max(v, 0) + log1p(exp(-|v|)), log1p on [0, 1] a
// degree-9 polynomial (relative error < 3e-7 in float32): one ex2 where softplus() spends three
// MUFU operations (ex2 and two reciprocals), the unit the scan's time is bound by.
__device__ __forceinline__ float softplus_fast(float v) {
  constexpr float c[10] = {1.000000000e+00f, -4.999988973e-01f, 3.332966566e-01f, -2.495116740e-01f,
                           1.966101825e-01f, -1.526327431e-01f, 1.053295061e-01f, -5.626952648e-02f,
                           1.948768646e-02f, -3.163999412e-03f};
  const float t = __expf(-fabsf(v));
  float q = c[9];
#pragma unroll
  for (int k = 8; k >= 0; --k) q = fmaf(q, t, c[k]);
  return v > 20.f ? v : fmaxf(v, 0.f) + t * q;
}

// sigmoid: for bfloat16 activations one tanh.approx (abs error ~2^-12, below their rounding);
// float16 and float32 keep the accurate form.
template <typename T>
__device__ __forceinline__ float sigmoid_of(float z) {
  if constexpr (!std::is_same_v<T, bfloat16_t>) {
    return sigmoid(z);
  } else {
    float th;
    asm("tanh.approx.f32 %0, %1;" : "=f"(th) : "f"(0.5f * z));
    return fmaf(0.5f, th, 0.5f);
  }
}

// One channel's (B, D, L) row: base at (b, d, 0), sL the step stride (|16 sL| < 2^31, host-checked).
template <typename T>
struct Row {
  T* base = nullptr;
  int sL = 0;
  bool vec = false;

  __device__ void init(const TensorArg& t, int64_t b, int64_t d, bool v) {
    base = ptr<T>(t) + b * t.stride[0] + d * t.stride[1];
    sL = int(t.stride[2]);
    vec = v;
  }
  // r[i] = row[t0 + i] (zero past L)
  __device__ __forceinline__ void load(T (&r)[kSteps], int64_t t0, int64_t L) const {
    const T* q = base + t0 * sL;
    if (vec && t0 + kSteps <= L) {
#pragma unroll
      for (int c = 0; c < kSteps / Pack<T>::kN; ++c) {
        Pack<T> pk;
        pk.load(q + c * Pack<T>::kN);
#pragma unroll
        for (int e = 0; e < Pack<T>::kN; ++e) r[c * Pack<T>::kN + e] = pk.e[e];
      }
      return;
    }
#pragma unroll
    for (int i = 0; i < kSteps; ++i) r[i] = t0 + i < L ? q[i * sL] : zero<T>();
  }
  __device__ __forceinline__ void store(const float (&v)[kSteps], int64_t t0, int64_t L) const {
    T* q = base + t0 * sL;
    if (vec && t0 + kSteps <= L) {
#pragma unroll
      for (int c = 0; c < kSteps / Pack<T>::kN; ++c) {
        Pack<T> pk;
#pragma unroll
        for (int e = 0; e < Pack<T>::kN; ++e) pk.e[e] = from_float<T>(v[c * Pack<T>::kN + e]);
        pk.store(q + c * Pack<T>::kN);
      }
      return;
    }
#pragma unroll
    for (int i = 0; i < kSteps; ++i)
      if (t0 + i < L) q[i * sL] = from_float<T>(v[i]);
  }
};

// The (B, G, N, L) rows of one (b, g) for a group of steps: element e of the group's kSteps x kN
// tile is step i, state n with consecutive e along whichever of L and N is contiguous.
template <typename T, int kN>
struct BcSrc {
  const T* base = nullptr;  // at (b, g, 0, 0)
  int sN = 0, sL = 0;
  bool lfast = true;

  __device__ void init(const TensorArg& t, int64_t b, int64_t g) {
    base = ptr<T>(t) + b * t.stride[0] + g * t.stride[1];
    sN = int(t.stride[2]), sL = int(t.stride[3]);
    lfast = sL == 1 || sN != 1;
  }
  __device__ __forceinline__ int step_of(int e) const { return lfast ? e % kSteps : e / kN; }
  __device__ __forceinline__ int state_of(int e) const { return lfast ? e / kSteps : e % kN; }
  __device__ __forceinline__ T load(int e, int64_t t0, int64_t L, int64_t N) const {
    const int i = step_of(e), n = state_of(e);
    return n < N && t0 + i < L ? base[t0 * sL + (n * sN + i * sL)] : zero<T>();
  }
};

// Host: can the thread kernels take these sizes and strides (32-bit offsets inside a group)?
inline bool small_strides(const SelectiveScanParams& p) {
  auto row_ok = [](const TensorArg& t) { return !t.present() || (t.stride[2] >= 0 && t.stride[2] < (1 << 26)); };
  auto bc_ok = [&](const TensorArg& t) {
    return t.stride[2] >= 0 && t.stride[3] >= 0 && t.stride[2] * 16 + t.stride[3] * kSteps < (int64_t(1) << 30);
  };
  return row_ok(p.u) && row_ok(p.delta) && row_ok(p.z) && row_ok(p.out) && row_ok(p.dout) && row_ok(p.du) &&
         row_ok(p.ddelta) && row_ok(p.dz) && bc_ok(p.B) && bc_ok(p.C);
}

// Switch: false sends every call to the older kernels (selective_scan_fwd.cuh, _bwd.cuh).
constexpr bool kEnabled = true;

// The thread kernels take N <= 16, variable B and C, no seq_idx / cu_seqlens.
inline bool takes(const SelectiveScanParams& p) {
  return kEnabled && p.dstate <= kMaxN && p.B_var && p.C_var && !p.seq_idx.present() &&
         !p.cu_seqlens.present() && small_strides(p);
}

#define SSM_SCAN_THREAD_N_SWITCH(N, KN, ...)                  \
  [&] {                                                       \
    if (N <= 8) { constexpr int KN = 8; return __VA_ARGS__(); } \
    constexpr int KN = 16; return __VA_ARGS__();              \
  }()

}  // namespace ssm::cuda::scan_thread
