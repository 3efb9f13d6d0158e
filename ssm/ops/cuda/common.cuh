// Helpers shared by the CUDA kernels: element types and float conversions, strided access,
// silu/softplus, and the launch check. float32 accumulation everywhere.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "common/switch.h"

namespace ssm::cuda {

using half_t = __half;
using bfloat16_t = __nv_bfloat16;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_float(float f);
template <> __device__ __forceinline__ float from_float<float>(float f) { return f; }
template <> __device__ __forceinline__ __half from_float<__half>(float f) { return __float2half_rn(f); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float f) {
  return __float2bfloat16_rn(f);
}

// TensorArg::present() for device code (the shared header is host-only).
__host__ __device__ __forceinline__ bool has(const TensorArg& t) { return t.data != nullptr; }

template <typename T>
__host__ __device__ __forceinline__ T* ptr(const TensorArg& t) { return static_cast<T*>(t.data); }

__device__ __forceinline__ float silu(float v) { return v / (1.f + __expf(-v)); }
__device__ __forceinline__ float sigmoid(float v) { return 1.f / (1.f + __expf(-v)); }
// log(x) for normal x > 0 to a few ulp, independent of --use_fast_math: x = m 2^e with m in
// [sqrt(1/2), sqrt(2)), log m = 2 atanh(s), s = (m - 1) / (m + 1), |s| < 0.172.
__device__ __forceinline__ float log_accurate(float x) {
  int e;
  float m = frexpf(x, &e);
  if (m < 0.70710678f) m *= 2.f, e -= 1;
  const float s = (m - 1.f) / (m + 1.f), s2 = s * s;
  const float p = s * (2.f + s2 * (0.6666667f + s2 * (0.4f + s2 * (0.2857143f + s2 * 0.2222222f))));
  return float(e) * 0.6931472f + p;
}

// softplus with mamba_ssm's threshold (identity above 20): log1p(exp(v)), with the rounding of
// 1 + exp(v) compensated so that small results keep their relative accuracy.
__device__ __forceinline__ float softplus(float v) {
  if (v > 20.f) return v;
  const float e = __expf(v), u = 1.f + e;
  return log_accurate(u) + (e - (u - 1.f)) / u;
}

// True when `p` is aligned to `bytes` (vector loads need it).
inline bool aligned(const void* p, int bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

inline cudaStream_t stream_arg(int64_t s) { return reinterpret_cast<cudaStream_t>(static_cast<uintptr_t>(s)); }

// Throws with the op's name when the last launch failed (RuntimeError in Python).
inline void check_launch(const char* op) {
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) throw std::runtime_error(std::string(op) + ": CUDA error: " + cudaGetErrorString(e));
}

inline unsigned ceil_div(int64_t a, int64_t b) { return static_cast<unsigned>((a + b - 1) / b); }

}  // namespace ssm::cuda
