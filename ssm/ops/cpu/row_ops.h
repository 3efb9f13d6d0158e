// Row helpers of the norm and conv kernels: loads/stores whose element type is chosen at run
// time (one switch per row; the loops inside are typed), and float32 reductions written with
// 16 independent partial sums so the compiler vectorizes them without -ffast-math.
#pragma once
#include <cmath>
#include <cstdint>

#include "cpu/vec.h"

namespace ssm::cpu {

// dst[i] = float(src[i * stride]), src of element type `dtype`.
inline void load_any(float* dst, const void* src, DType dtype, int64_t stride, int64_t n) {
  SSM_DTYPE_SWITCH(dtype, T, "load_any", [&] { load_row(dst, static_cast<const T*>(src), stride, n); });
}

// dst[i * stride] = src[i], converted to `dtype`.
inline void store_any(void* dst, DType dtype, int64_t stride, const float* src, int64_t n) {
  SSM_DTYPE_SWITCH(dtype, T, "store_any", [&] { store_row(static_cast<T*>(dst), stride, src, n); });
}

// The address of element (i, j) of a 2-d tensor of element type `dtype`.
inline void* elem_ptr(const TensorArg& t, DType dtype, int64_t i, int64_t j) {
  int64_t size = dtype == DType::f32 ? 4 : 2;
  return static_cast<char*>(t.data) + (i * t.stride[0] + j * t.stride[1]) * size;
}

inline float row_sum(const float* v, int64_t n) {
  float acc[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int j = 0; j < 16; ++j) acc[j] += v[i + j];
  float s = 0.f;
  for (; i < n; ++i) s += v[i];
  for (int j = 0; j < 16; ++j) s += acc[j];
  return s;
}

inline float row_dot(const float* a, const float* b, int64_t n) {
  float acc[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int j = 0; j < 16; ++j) acc[j] += a[i + j] * b[i + j];
  float s = 0.f;
  for (; i < n; ++i) s += a[i] * b[i];
  for (int j = 0; j < 16; ++j) s += acc[j];
  return s;
}

// sum((v - c)^2): the centred second moment of a row.
inline float row_sq_dev(const float* v, float c, int64_t n) {
  float acc[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int j = 0; j < 16; ++j) acc[j] += (v[i + j] - c) * (v[i + j] - c);
  float s = 0.f;
  for (; i < n; ++i) s += (v[i] - c) * (v[i] - c);
  for (int j = 0; j < 16; ++j) s += acc[j];
  return s;
}

inline float sigmoid(float v) { return 1.f / (1.f + std::exp(-v)); }

// d silu(v) / dv.
inline float silu_grad(float v) {
  float s = sigmoid(v);
  return s * (1.f + v * (1.f - s));
}

}  // namespace ssm::cpu
