// Run-time choice of instruction set for the CPU kernels (no -march=native builds).
#pragma once

namespace ssm::cpu {

enum class Isa { generic = 0, avx2 = 1, avx512 = 2 };

Isa detected_isa();        // best the CPU (and build) supports
Isa active_isa();          // detected, unless lowered with set_isa (tests, benchmarks)
void set_isa(Isa isa);     // clamps to what is detected
const char* isa_name(Isa isa);

// Picks the variant of a kernel for the active instruction set.
template <typename Fn>
Fn select(Fn generic_fn, Fn avx2_fn, Fn avx512_fn) {
#if SSM_CPU_X86
  switch (active_isa()) {
    case Isa::avx512: return avx512_fn;
    case Isa::avx2: return avx2_fn;
    default: return generic_fn;
  }
#else
  (void)avx2_fn;
  (void)avx512_fn;
  return generic_fn;
#endif
}

}  // namespace ssm::cpu

// Calls kernel `name` of namespace ssm::cpu::<isa> for the active instruction set.
#define SSM_CPU_CALL(name, params, nthreads) \
  ::ssm::cpu::select(&::ssm::cpu::generic::name, &::ssm::cpu::avx2::name, &::ssm::cpu::avx512::name)(params, nthreads)
