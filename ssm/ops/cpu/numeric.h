// Element types of the CPU backend and their float conversions (float32 accumulation).
// Like every kernel helper, they live in the per-ISA namespace ssm::cpu::<isa>: the same inline
// function compiled with different -m flags must not be one symbol the linker may pick from any ISA.
#pragma once
#include <cstdint>
#include <cstring>

#ifndef SSM_ISA
#error "CPU kernel headers are compiled once per instruction set with -DSSM_ISA=<name>"
#endif
#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace ssm::cpu::SSM_ISA {

struct half_t { uint16_t bits; };
struct bfloat16_t { uint16_t bits; };

inline float bits_to_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t float_to_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

inline float to_float(float v) { return v; }
inline float to_float(bfloat16_t v) { return bits_to_float(uint32_t(v.bits) << 16); }

inline float to_float(half_t v) {
#if defined(__F16C__)
  return _cvtsh_ss(v.bits);
#else
  // IEEE binary16 -> binary32, subnormals included.
  uint32_t sign = uint32_t(v.bits & 0x8000) << 16, exp = (v.bits >> 10) & 0x1f, man = v.bits & 0x3ff;
  if (exp == 0x1f) return bits_to_float(sign | 0x7f800000u | (man << 13));
  if (exp == 0) return (sign ? -1.f : 1.f) * float(man) * (1.f / 16777216.f);
  return bits_to_float(sign | ((exp + 112) << 23) | (man << 13));
#endif
}

template <typename T> T from_float(float f);
template <> inline float from_float<float>(float f) { return f; }

template <> inline bfloat16_t from_float<bfloat16_t>(float f) {
  uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {uint16_t((u >> 16) | 0x40)};  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1);  // round to nearest even
  return {uint16_t(u >> 16)};
}

template <> inline half_t from_float<half_t>(float f) {
#if defined(__F16C__)
  return {uint16_t(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT))};
#else
  uint32_t u = float_to_bits(f), sign = (u >> 16) & 0x8000, a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return {uint16_t(sign | 0x7e00)};              // NaN
  if (a >= 0x477ff000u) return {uint16_t(sign | 0x7c00)};             // overflow -> inf
  if (a < 0x38800000u) {                                              // subnormal or zero
    float m = bits_to_float(a) * 16777216.f;                          // scale by 2^24
    uint32_t r = uint32_t(m);
    float rem = m - float(r);
    if (rem > 0.5f || (rem == 0.5f && (r & 1))) r++;
    return {uint16_t(sign | r)};
  }
  uint32_t rounded = a + 0xfffu + ((a >> 13) & 1) - (112u << 23);
  return {uint16_t(sign | (rounded >> 13))};
#endif
}

}  // namespace ssm::cpu::SSM_ISA
