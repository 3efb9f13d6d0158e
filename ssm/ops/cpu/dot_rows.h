// Dot products of weight rows (float32, bfloat16 or float16, unit stride) with a float32 vector,
// widened to float32 in registers: shared by the small-batch linear kernels of decoding.
#pragma once
#include <cstring>
#include <type_traits>

#include "cpu/scan_math.h"
#include "cpu/vec.h"

#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace ssm::cpu::SSM_ISA::rowdot {
using namespace scan;

typedef uint16_t vu16 __attribute__((vector_size(kLanes * sizeof(uint16_t))));
typedef uint32_t vu32 __attribute__((vector_size(kLanes * sizeof(uint32_t))));

// kLanes consecutive elements as floats.
template <typename T>
inline vf load_lanes(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    return vload(p);
  } else if constexpr (std::is_same_v<T, bfloat16_t>) {
    vu16 h;
    std::memcpy(&h, p, sizeof h);
    return (vf)(__builtin_convertvector(h, vu32) << 16);
  } else {
#if defined(__F16C__)
    static_assert(kLanes == 8, "F16C converts 8 halves");
    return (vf)_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
#else
    vf v;
    for (int l = 0; l < kLanes; ++l) v[l] = to_float(p[l]);
    return v;
#endif
  }
}

// s[r] = w[r * ldw + :K] . x for r < R (x float32, K entries).
template <typename T, int R>
inline void dot_rows(const T* w, int64_t ldw, const float* __restrict x, int64_t K, float* s) {
  vf a[R], b[R];
  for (int r = 0; r < R; ++r) a[r] = b[r] = splat(0.f);
  int64_t k = 0;
  for (; k + 2 * kLanes <= K; k += 2 * kLanes) {
    const vf x0 = vload(x + k), x1 = vload(x + k + kLanes);
    for (int r = 0; r < R; ++r) {
      a[r] += load_lanes(w + r * ldw + k) * x0;
      b[r] += load_lanes(w + r * ldw + k + kLanes) * x1;
    }
  }
  if (k + kLanes <= K) {
    const vf x0 = vload(x + k);
    for (int r = 0; r < R; ++r) a[r] += load_lanes(w + r * ldw + k) * x0;
    k += kLanes;
  }
  for (int r = 0; r < R; ++r) {
    s[r] = hsum(a[r] + b[r]);
    for (int64_t j = k; j < K; ++j) s[r] += to_float(w[r * ldw + j]) * x[j];
  }
}

}  // namespace ssm::cpu::SSM_ISA::rowdot
