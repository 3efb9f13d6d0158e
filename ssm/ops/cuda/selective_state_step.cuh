// One selective-state decode step on the GPU (Mamba-2 layout; Mamba-1 is H = D, P = 1);
// included once per state dtype by selective_state_step_<dtype>.cu. kTPR lanes share one
// (batch, head, headdim) row, each lane owning 8 consecutive state entries per pass over N
// (16-byte state loads and stores when the layout allows), so the state streams through once.
// A tied per head (stride 0 along N) costs one exp per row instead of one per entry.
#pragma once
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

template <typename TS, typename T, int kTPR>
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
  float dt = at<T>(p.dt, b, h, hp) + (has(p.dt_bias) ? ptr<float>(p.dt_bias)[h * p.dt_bias.stride[0] + hp * p.dt_bias.stride[1]] : 0.f);
  if (p.softplus) dt = softplus(dt);
  const float xv = at<T>(p.x, b, h, hp), dx = dt * xv;
  const float* A = ptr<float>(p.A) + h * p.A.stride[0] + hp * p.A.stride[1];
  const bool a_tied = p.A.stride[2] == 0;
  const float dA_tied = a_tied ? __expf(dt * A[0]) : 0.f;
  TS* st = ptr<TS>(p.state) + srow * p.state.stride[0] + h * p.state.stride[1] + hp * p.state.stride[2];
  const int64_t sn = p.state.stride[3];
  float y = 0.f;
  for (int64_t n0 = int64_t(lane) * 8; n0 < N; n0 += 8 * kTPR) {
    float s[8], Bv[8], Cv[8];
    if (vec) load_floats<TS, 8>(s, st + n0);
    else
#pragma unroll
      for (int e = 0; e < 8; ++e) s[e] = n0 + e < N ? to_float(st[(n0 + e) * sn]) : 0.f;
    load8<T>(Bv, p.B, b, g, n0, N, vec);
    load8<T>(Cv, p.C, b, g, n0, N, vec);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const float dA = a_tied ? dA_tied : __expf(dt * (n0 + e < N ? A[(n0 + e) * p.A.stride[2]] : 0.f));
      s[e] = s[e] * dA + dx * Bv[e];
      y += s[e] * Cv[e];
    }
    if (vec) store_floats<TS, 8>(st + n0, s);
    else
#pragma unroll
      for (int e = 0; e < 8; ++e)
        if (n0 + e < N) st[(n0 + e) * sn] = from_float<TS>(s[e]);
  }
  const unsigned group = ((1u << kTPR) - 1) << (threadIdx.x % 32 / kTPR * kTPR);
#pragma unroll
  for (int off = kTPR / 2; off > 0; off /= 2) y += __shfl_xor_sync(group, y, off, kTPR);
  if (lane != 0) return;
  if (has(p.D)) y += ptr<float>(p.D)[h * p.D.stride[0] + hp * p.D.stride[1]] * xv;
  if (has(p.z)) y *= silu(at<T>(p.z, b, h, hp));
  *out = from_float<T>(y);
}

// Lanes per row from N: 8 entries per lane, at most 16 lanes (larger N loops).
#define SSM_STEP_TPR_SWITCH(N, K, ...)                              \
  [&] {                                                             \
    if (N <= 16) { constexpr int K = 2; return __VA_ARGS__(); }     \
    if (N <= 32) { constexpr int K = 4; return __VA_ARGS__(); }     \
    if (N <= 64) { constexpr int K = 8; return __VA_ARGS__(); }     \
    constexpr int K = 16; return __VA_ARGS__();                     \
  }()

template <typename TS>
void launch(const StateStepParams& p, cudaStream_t stream) {
  SSM_DTYPE_SWITCH(p.dtype, T, "selective_state_step", [&] {
    const bool vec = p.dstate % 8 == 0 && rows_vectorizable<TS>(p.state, 3) && rows_vectorizable<T>(p.B, 2) &&
                     rows_vectorizable<T>(p.C, 2);
    SSM_STEP_TPR_SWITCH(p.dstate, kTPR, [&] {
      const int64_t threads = p.batch * p.nheads * p.headdim * kTPR;
      state_step_kernel<TS, T, kTPR><<<ceil_div(threads, kThreads), kThreads, 0, stream>>>(p, vec);
    });
  });
}

}  // namespace ssm::cuda::step
