// Vector math of the selective-scan kernels: 8 float lanes (one lane per channel) as GCC
// vector types, so each ISA build gets its own code (SSE on generic, AVX on avx2/avx512).
// exp, softplus and sigmoid are polynomial (no libm calls), so loops over lanes stay vectorized.
#pragma once
#include <cstdint>
#include <cstring>
#ifdef __AVX__
#include <immintrin.h>
#endif

#ifndef SSM_ISA
#error "CPU kernel sources are compiled once per instruction set with -DSSM_ISA=<name>"
#endif

// Vector arguments between these inline functions never cross a TU: the ABI note is moot.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace ssm::cpu::SSM_ISA::scan {

constexpr int kLanes = 8;
typedef float vf __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(kLanes * sizeof(int32_t))));

inline vf splat(float x) { return vf{} + x; }
inline vf vload(const float* p) { vf v; std::memcpy(&v, p, sizeof v); return v; }
inline void vstore(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
#ifdef __AVX__
inline vf bcast(const float* p) { return (vf)_mm256_broadcast_ss(p); }
// vmaxps / vminps give b where a is NaN, as the selects of the portable build (which GCC compiles
// to a compare and a blend each)
inline vf vmax(vf a, vf b) { return (vf)_mm256_max_ps((__m256)a, (__m256)b); }
inline vf vmin(vf a, vf b) { return (vf)_mm256_min_ps((__m256)a, (__m256)b); }
#else
inline vf bcast(const float* p) { return splat(*p); }
inline vf vmax(vf a, vf b) { return a > b ? a : b; }
inline vf vmin(vf a, vf b) { return a < b ? a : b; }
#endif
inline float hsum(vf v) {
  float s = 0.f;
  for (int l = 0; l < kLanes; ++l) s += v[l];
  return s;
}

constexpr float kLog2e = 1.4426950408889634f;

// 2^x: x = k + f with k integer and |f| <= 1/2; 2^f = e^(f ln2) by its Taylor polynomial of degree 6
// (relative error < 1.2e-7); 2^k built in the exponent bits. x is clamped to [-126, 126].
inline vf exp2v(vf x) {
  x = vmin(vmax(x, splat(-126.f)), splat(126.f));
  const vf magic = splat(12582912.f);  // 1.5 * 2^23: x + magic rounds x to an integer
  vf r = x + magic;
  vf f = x - (r - magic);
  vi k = (vi)r - (vi)magic;
  vf p = splat(1.5403530e-4f);
  p = p * f + 1.3333558e-3f;
  p = p * f + 9.6181291e-3f;
  p = p * f + 5.5504109e-2f;
  p = p * f + 2.4022651e-1f;
  p = p * f + 6.9314718e-1f;
  p = p * f + 1.f;
  return p * (vf)((k + 127) << 23);
}

inline vf expv(vf x) { return exp2v(x * kLog2e); }

// log(1 + y) for y in [0, 1]: 2 atanh(s) with s = y / (2 + y) <= 1/3, odd series to s^13.
inline vf log1p_unit(vf y) {
  vf s = y / (y + 2.f);
  vf s2 = s * s;
  vf p = splat(1.f / 13);
  p = p * s2 + 1.f / 11;
  p = p * s2 + 1.f / 9;
  p = p * s2 + 1.f / 7;
  p = p * s2 + 1.f / 5;
  p = p * s2 + 1.f / 3;
  p = p * s2 + 1.f;
  return 2.f * s * p;
}

// log(1 + e^x), and x itself above 20 (the threshold of the reference).
inline vf softplusv(vf x) {
  vf r = vmax(x, splat(0.f)) + log1p_unit(expv(-vmax(x, -x)));
  return x > splat(20.f) ? x : r;
}

inline vf sigmoidv(vf x) { return splat(1.f) / (splat(1.f) + expv(-x)); }

}  // namespace ssm::cpu::SSM_ISA::scan
