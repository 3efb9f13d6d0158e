// One selective-state decode step on the GPU (Mamba-2 layout; Mamba-1 is H = D, P = 1);
// included once per state dtype by selective_state_step_<dtype>.cu. kTPR lanes share one
// (batch, head, headdim) row, each lane owning 8 consecutive state entries per pass over N
// (16-byte state loads and stores when the layout allows), so the state streams through once.
// A tied per head (stride 0 along N) costs one exp per row instead of one per entry.
#pragma once
#include <cstdlib>

#include "cuda/kernels.h"
#include "cuda/vec.cuh"

namespace ssm::cuda::step {

constexpr int kThreads = 256;

template <typename T>
__device__ __forceinline__ float at(const TensorArg& t, int64_t i0, int64_t i1, int64_t i2 = 0) {
  return to_float(ptr<T>(t)[i0 * t.stride[0] + i1 * t.stride[1] + i2 * t.stride[2]]);
}

// v[e] = M[b, g, n0 + e] for e < 8 (zeros past N).
template <typename T>
__device__ __forceinline__ void load8(float* v, const TensorArg& M, int64_t b, int64_t g, int64_t n0, int64_t N,
                                      bool vec) {
  const T* row = ptr<T>(M) + b * M.stride[0] + g * M.stride[1];
  if (vec) {
    load_floats<T, 8>(v, row + n0);
  } else {
#pragma unroll
    for (int e = 0; e < 8; ++e) v[e] = n0 + e < N ? to_float(row[(n0 + e) * M.stride[2]]) : 0.f;
  }
}

// dt[b, h] = dot(dt_proj[h, :], dt_in[b, :]) in float32, rounded to T (Mamba-1's dt_proj folded in).
template <typename T>
__device__ __forceinline__ float projected_dt(const StateStepParams& p, int64_t b, int64_t h) {
  const T* w = ptr<T>(p.dt_proj) + h * p.dt_proj.stride[0];
  const T* v = ptr<T>(p.dt) + b * p.dt.stride[0];
  const int64_t ws = p.dt_proj.stride[1], vs = p.dt.stride[1];
  // 16 products per iteration: their 32 loads are in flight together
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  int64_t r = 0;
  for (; r + 16 <= p.dt_rank; r += 16) {
#pragma unroll
    for (int i = 0; i < 16; ++i) acc[i % 4] += to_float(w[(r + i) * ws]) * to_float(v[(r + i) * vs]);
  }
  for (; r < p.dt_rank; ++r) acc[0] += to_float(w[r * ws]) * to_float(v[r * vs]);
  return to_float(from_float<T>((acc[0] + acc[1]) + (acc[2] + acc[3])));
}

// One lane's packs of s, B, C (kPacks packs of 8 entries, kTPR lanes apart) at a pass over N,
// kept as raw 16-byte words until used (few registers per byte in flight). Layouts that are not
// vectorizable read element by element when the pack is used.
template <typename TS, typename T, int kTPR, int kPacks>
struct Packs {
  Pack<TS> s[kPacks][sizeof(TS) / 2];  // 8 state entries: one (16-bit) or two (float32) words
  Pack<T> B[kPacks][sizeof(T) / 2], C[kPacks][sizeof(T) / 2];

  __device__ void load(const TS* st, const StateStepParams& p, int64_t b, int64_t g, int64_t base, int lane) {
    const T* Bp = ptr<T>(p.B) + b * p.B.stride[0] + g * p.B.stride[1];
    const T* Cp = ptr<T>(p.C) + b * p.C.stride[0] + g * p.C.stride[1];
#pragma unroll
    for (int j = 0; j < kPacks; ++j) {
      const int64_t n0 = base + (int64_t(j) * kTPR + lane) * 8;
      if (n0 >= p.dstate) continue;
#pragma unroll
      for (int w = 0; w < int(sizeof(TS) / 2); ++w) s[j][w].load(st + n0 + w * Pack<TS>::kN);
#pragma unroll
      for (int w = 0; w < int(sizeof(T) / 2); ++w) {
        B[j][w].load(Bp + n0 + w * Pack<T>::kN);
        C[j][w].load(Cp + n0 + w * Pack<T>::kN);
      }
    }
  }
  template <typename P>
  __device__ static float get(const P* words, int e) {
    return to_float(words[e / P::kN].e[e % P::kN]);
  }
};

// kTied: A tied per head (stride 0 along N; Mamba-2), one exp per row and no A or dt_proj loads in the
// loop: a compile-time flag, so the Mamba-2 kernel carries none of the untied path's registers.
template <typename TS, typename T, int kTPR, int kPacks, bool kTied>
__global__ void __launch_bounds__(kThreads) state_step_kernel(StateStepParams p, bool vec) {
  // 32-bit index arithmetic (the launcher checks the row count): 64-bit division is slow
  const uint32_t gid = blockIdx.x * kThreads + threadIdx.x, row = gid / kTPR;
  const uint32_t H = uint32_t(p.nheads), P = uint32_t(p.headdim);
  const int lane = int(gid % kTPR);
  if (row >= uint32_t(p.batch) * H * P) return;  // whole lane groups leave together (kThreads % kTPR == 0)
  const int64_t b = row / (H * P), h = (row / P) % H, hp = row % P;
  const int64_t srow = has(p.state_batch_indices) ? ptr<int>(p.state_batch_indices)[b * p.state_batch_indices.stride[0]] : b;
  T* out = ptr<T>(p.out) + b * p.out.stride[0] + h * p.out.stride[1] + hp * p.out.stride[2];
  if (srow < 0) {
    if (lane == 0) *out = from_float<T>(0.f);
    return;
  }
  const int64_t g = uint32_t(h) / (H / uint32_t(p.ngroups)), N = p.dstate;
  TS* st = ptr<TS>(p.state) + srow * p.state.stride[0] + h * p.state.stride[1] + hp * p.state.stride[2];
  const int64_t sn = p.state.stride[3];
  // the state stream first: every load of the pass is in flight before the first use
  Packs<TS, T, kTPR, kPacks> pk;
  if (vec) pk.load(st, p, b, g, 0, lane);
  float dt = (!kTied && has(p.dt_proj) ? projected_dt<T>(p, b, h) : at<T>(p.dt, b, h, hp)) + (has(p.dt_bias) ? ptr<float>(p.dt_bias)[h * p.dt_bias.stride[0] + hp * p.dt_bias.stride[1]] : 0.f);
  const float xv = at<T>(p.x, b, h, hp);
  const float Dv = has(p.D) ? ptr<float>(p.D)[h * p.D.stride[0] + hp * p.D.stride[1]] : 0.f;
  const float zv = has(p.z) ? at<T>(p.z, b, h, hp) : 0.f;
  const float* A = ptr<float>(p.A) + h * p.A.stride[0] + hp * p.A.stride[1];
  constexpr bool a_tied = kTied;
  const bool a_vec = vec && !a_tied && p.A.stride[2] == 1 && reinterpret_cast<uintptr_t>(A) % 16 == 0;
  const float A0 = A[0];
  if (p.softplus) dt = softplus(dt);
  const float dx = dt * xv, dA_tied = __expf(dt * A0);
  float y = 0.f;
  for (int64_t base = 0; base < N; base += int64_t(kPacks) * kTPR * 8) {
    if (vec && base > 0) pk.load(st, p, b, g, base, lane);
#pragma unroll
    for (int j = 0; j < kPacks; ++j) {
      const int64_t n0 = base + (int64_t(j) * kTPR + lane) * 8;
      if (n0 >= N) continue;
      float sv[8], Bv[8], Cv[8];
      if (vec) {
#pragma unroll
        for (int e = 0; e < 8; ++e)
          sv[e] = pk.get(pk.s[j], e), Bv[e] = pk.get(pk.B[j], e), Cv[e] = pk.get(pk.C[j], e);
      } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) sv[e] = n0 + e < N ? to_float(st[(n0 + e) * sn]) : 0.f;
        load8<T>(Bv, p.B, b, g, n0, N, false);
        load8<T>(Cv, p.C, b, g, n0, N, false);
      }
      // A's 8 entries: two 16-byte loads when its row is contiguous and aligned (Mamba-1: one A row per
      // channel, re-read by every batch row: scalar loads made the load instructions the bottleneck)
      float Av[8];
      if (a_tied) {
#pragma unroll
        for (int e = 0; e < 8; ++e) Av[e] = 0.f;
      } else if (a_vec) {
        load_floats<float, 8>(Av, A + n0);
      } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) Av[e] = n0 + e >= N ? 0.f : A[(n0 + e) * p.A.stride[2]];
      }
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const float dA = a_tied ? dA_tied : __expf(dt * Av[e]);
        sv[e] = sv[e] * dA + dx * Bv[e];
        y += sv[e] * Cv[e];
      }
      if (vec) store_floats<TS, 8>(st + n0, sv);
      else
#pragma unroll
        for (int e = 0; e < 8; ++e)
          if (n0 + e < N) st[(n0 + e) * sn] = from_float<TS>(sv[e]);
    }
  }
  const unsigned group = kTPR == 32 ? 0xffffffffu : ((1u << kTPR) - 1) << (threadIdx.x % 32 / kTPR * kTPR);
#pragma unroll
  for (int off = kTPR / 2; off > 0; off /= 2) y += __shfl_xor_sync(group, y, off, kTPR);
  if (lane != 0) return;
  y += Dv * xv;
  if (has(p.z)) y *= silu(zv);
  *out = from_float<T>(y);
}

// Lanes per row (K) and packs per lane (KP) from N. Narrow rows: four packs of 8 entries per
// lane in one pass (N <= 32 K), more passes past N = 256; two packs for N <= 16. Wide rows: one
// pack per lane (K = N / 8, at most 32): four times the threads, for grids that would otherwise
// leave most SMs idle (batch-1 decoding) and for N <= 16 (two lanes a row: more loads in flight).
#define SSM_STEP_TPR_SWITCH(N, wide, K, KP, ...)                                            \
  [&] {                                                                                     \
    if (N <= 16) {                                                                          \
      if (wide) { constexpr int K = 2, KP = 1; return __VA_ARGS__(); }                      \
      constexpr int K = 1, KP = 2; return __VA_ARGS__();                                    \
    }                                                                                       \
    if (N <= 32) {                                                                          \
      if (wide) { constexpr int K = 4, KP = 1; return __VA_ARGS__(); }                      \
      constexpr int K = 1, KP = 4; return __VA_ARGS__();                                    \
    }                                                                                       \
    if (N <= 64) {                                                                          \
      if (wide) { constexpr int K = 8, KP = 1; return __VA_ARGS__(); }                      \
      constexpr int K = 2, KP = 4; return __VA_ARGS__();                                    \
    }                                                                                       \
    if (N <= 128) {                                                                         \
      if (wide) { constexpr int K = 16, KP = 1; return __VA_ARGS__(); }                     \
      constexpr int K = 4, KP = 4; return __VA_ARGS__();                                    \
    }                                                                                       \
    if (wide) { constexpr int K = 32, KP = 1; return __VA_ARGS__(); }                       \
    constexpr int K = 8, KP = 4; return __VA_ARGS__();                                      \
  }()

// Wide rows when the narrow grid has fewer than two blocks per SM of an H100 (SSM_STEP_WIDE=0/1
// forces either, for benchmarks and tests).
inline bool use_wide(const StateStepParams& p) {
  const char* env = std::getenv("SSM_STEP_WIDE");
  if (env != nullptr && (env[0] == '0' || env[0] == '1')) return env[0] == '1';
  const int64_t narrow_lanes = p.dstate <= 32 ? 1 : p.dstate <= 64 ? 2 : p.dstate <= 128 ? 4 : 8;
  return p.batch * p.nheads * p.headdim * narrow_lanes < 264 * kThreads;
}

}  // namespace ssm::cuda::step

#include "cuda/selective_state_step_lean.cuh"

namespace ssm::cuda::step {

template <typename TS>
void launch(const StateStepParams& p, cudaStream_t stream) {
  SSM_DTYPE_SWITCH(p.dtype, T, "selective_state_step", [&] {
    const bool vec = p.dstate % 8 == 0 && rows_vectorizable<TS>(p.state, 3) && rows_vectorizable<T>(p.B, 2) &&
                     rows_vectorizable<T>(p.C, 2);
    if (use_lean(p, vec, use_wide(p))) return launch_lean<TS, T>(p, stream);
    if (const size_t smem = mamba2_smem(p, vec, use_wide(p))) return launch_mamba2<TS, T>(p, smem, stream);
    SSM_STEP_TPR_SWITCH(p.dstate, use_wide(p), kTPR, kPacks, [&] {
      const int64_t threads = p.batch * p.nheads * p.headdim * kTPR;
      if (p.A.stride[2] == 0)
        state_step_kernel<TS, T, kTPR, kPacks, true><<<ceil_div(threads, kThreads), kThreads, 0, stream>>>(p, vec);
      else
        state_step_kernel<TS, T, kTPR, kPacks, false><<<ceil_div(threads, kThreads), kThreads, 0, stream>>>(p, vec);
    });
  });
}

}  // namespace ssm::cuda::step
