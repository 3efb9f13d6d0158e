// Row helpers of the norm and conv kernels: loads/stores whose element type is chosen at run
// time (one switch per row; the loops inside are typed), and float32 reductions written with
// 16 independent partial sums so the compiler vectorizes them without -ffast-math.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

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

// e^v, branch-free so loops over it vectorize: e^v = 2^n e^r with n = round(v / ln 2) and
// |r| <= ln2 / 2, e^r by its degree-7 Taylor polynomial (relative error < 1e-7 after rounding).
// v is clamped to [-87, 88], where the result stays a normal float.
inline float exp_fast(float v) {
  v = std::fmin(std::fmax(v, -87.f), 88.f);
  const float n = std::floor(v * 1.44269504f + 0.5f);
  const float r = (v - n * 0.693359375f) + n * 2.12194440e-4f;  // ln 2 split in two parts
  float p = 1.f / 5040.f;
  p = p * r + 1.f / 720.f;
  p = p * r + 1.f / 120.f;
  p = p * r + 1.f / 24.f;
  p = p * r + 1.f / 6.f;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  const int32_t bits = (int32_t(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return p * scale;
}

inline float sigmoid_fast(float v) { return 1.f / (1.f + exp_fast(-v)); }

// d silu(v) / dv from s = sigmoid(v).
inline float silu_grad_from_sigmoid(float v, float s) { return s * (1.f + v * (1.f - s)); }

// 8 float lanes through GCC/Clang vector extensions (one AVX register, or two SSE ones), for
// the exponentials, which the compiler does not vectorize from the scalar code (its clamp).
typedef float f32x8 __attribute__((vector_size(32)));
typedef int32_t i32x8 __attribute__((vector_size(32)));

// v = exp_fast(v) on 8 lanes (in place: a by-value vector would change the ABI on SSE builds);
// rounding to the integer n by adding 1.5 * 2^23.
inline void exp_lanes(f32x8& v) {
  v = v < -87.f ? f32x8{} - 87.f : v;
  v = v > 88.f ? f32x8{} + 88.f : v;
  const f32x8 shifted = v * 1.44269504f + 12582912.f;
  const f32x8 n = shifted - 12582912.f;
  const f32x8 r = (v - n * 0.693359375f) + n * 2.12194440e-4f;
  f32x8 p = f32x8{} + 1.f / 5040.f;
  p = p * r + 1.f / 720.f;
  p = p * r + 1.f / 120.f;
  p = p * r + 1.f / 24.f;
  p = p * r + 1.f / 6.f;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  const i32x8 bits = ((i32x8)shifted - 0x4B400000 + 127) << 23;  // 2^n
  v = p * (f32x8)bits;
}

// out[i] = sigmoid(v[i]) (out may be v).
inline void sigmoid_row(float* out, const float* v, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    f32x8 x, e;
    std::memcpy(&x, v + i, sizeof x);
    e = -x;
    exp_lanes(e);
    x = 1.f / (1.f + e);
    std::memcpy(out + i, &x, sizeof x);
  }
  for (; i < n; ++i) out[i] = sigmoid_fast(v[i]);
}

// v[i] = silu(v[i]).
inline void silu_row(float* v, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    f32x8 x, e;
    std::memcpy(&x, v + i, sizeof x);
    e = -x;
    exp_lanes(e);
    x = x / (1.f + e);
    std::memcpy(v + i, &x, sizeof x);
  }
  for (; i < n; ++i) v[i] = v[i] * sigmoid_fast(v[i]);
}

}  // namespace ssm::cpu
