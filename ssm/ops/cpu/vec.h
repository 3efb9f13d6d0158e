// Helpers shared by CPU kernels: strided row loads/stores in float32, silu, the ISA namespace.
#pragma once
#include <cmath>
#include <cstdint>

#include "common/switch.h"
#include "cpu/numeric.h"

#ifndef SSM_ISA
#error "CPU kernel sources are compiled once per instruction set with -DSSM_ISA=<name>"
#endif

namespace ssm::cpu::SSM_ISA {

template <typename T>
inline const T* ptr(const TensorArg& t) { return static_cast<const T*>(t.data); }
template <typename T>
inline T* mut_ptr(const TensorArg& t) { return static_cast<T*>(t.data); }

// dst[i] = float(src[i * stride]) for i < n.
template <typename T>
inline void load_row(float* dst, const T* src, int64_t stride, int64_t n) {
  if (stride == 1) {
    for (int64_t i = 0; i < n; ++i) dst[i] = to_float(src[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = to_float(src[i * stride]);
  }
}

// dst[i * stride] = T(src[i]) for i < n.
template <typename T>
inline void store_row(T* dst, int64_t stride, const float* src, int64_t n) {
  if (stride == 1) {
    for (int64_t i = 0; i < n; ++i) dst[i] = from_float<T>(src[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i * stride] = from_float<T>(src[i]);
  }
}

inline float silu(float v) { return v / (1.f + std::exp(-v)); }

}  // namespace ssm::cpu::SSM_ISA
