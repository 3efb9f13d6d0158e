// 16-byte packs of elements for vectorized global loads and stores, and width switches.
#pragma once
#include "cuda/common.cuh"

namespace ssm::cuda {

// kN elements of T in one 16-byte word.
template <typename T>
struct Pack {
  static constexpr int kN = 16 / sizeof(T);
  alignas(16) T e[kN];
  __device__ __forceinline__ void load(const T* src) { *reinterpret_cast<uint4*>(e) = *reinterpret_cast<const uint4*>(src); }
  __device__ __forceinline__ void store(T* dst) const { *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(e); }
};

// dst[i] = float(src[i]) for i < n (n a multiple of Pack<T>::kN, src 16-byte aligned).
template <typename T, int n>
__device__ __forceinline__ void load_floats(float* dst, const T* src) {
#pragma unroll
  for (int c = 0; c < n / Pack<T>::kN; ++c) {
    Pack<T> pk;
    pk.load(src + c * Pack<T>::kN);
#pragma unroll
    for (int i = 0; i < Pack<T>::kN; ++i) dst[c * Pack<T>::kN + i] = to_float(pk.e[i]);
  }
}

template <typename T, int n>
__device__ __forceinline__ void store_floats(T* dst, const float* src) {
#pragma unroll
  for (int c = 0; c < n / Pack<T>::kN; ++c) {
    Pack<T> pk;
#pragma unroll
    for (int i = 0; i < Pack<T>::kN; ++i) pk.e[i] = from_float<T>(src[c * Pack<T>::kN + i]);
    pk.store(dst + c * Pack<T>::kN);
  }
}

// True when a row view (base + strides) can be read with 16-byte packs along its last dim.
template <typename T>
bool rows_vectorizable(const TensorArg& t, int ndim_outer) {
  constexpr int64_t n = 16 / sizeof(T);
  if (t.stride[ndim_outer] != 1 || !aligned(t.data, 16)) return false;
  for (int i = 0; i < ndim_outer; ++i)
    if (t.stride[i] % n != 0) return false;
  return true;
}

}  // namespace ssm::cuda

// Conv widths with unrolled kernels (2, 3, 4); 0 means any width, read at run time.
#define SSM_WIDTH_SWITCH(width, KW, ...)                  \
  [&] {                                                   \
    switch (width) {                                      \
      case 2: { constexpr int KW = 2; return __VA_ARGS__(); } \
      case 3: { constexpr int KW = 3; return __VA_ARGS__(); } \
      case 4: { constexpr int KW = 4; return __VA_ARGS__(); } \
      default: { constexpr int KW = 0; return __VA_ARGS__(); } \
    }                                                     \
  }()
