#include "cpu/runtime/isa.h"

#include <algorithm>
#include <atomic>

namespace ssm::cpu {
namespace {

Isa detect() {
#if SSM_CPU_X86 && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
              __builtin_cpu_supports("f16c");
  if (avx512 && avx2) return Isa::avx512;
  if (avx2) return Isa::avx2;
#endif
  return Isa::generic;
}

std::atomic<int> g_active{-1};

}  // namespace

Isa detected_isa() {
  static const Isa isa = detect();
  return isa;
}

Isa active_isa() {
  int v = g_active.load(std::memory_order_relaxed);
  return v < 0 ? detected_isa() : Isa(v);
}

void set_isa(Isa isa) { g_active.store(std::min(int(isa), int(detected_isa()))); }

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "generic";
  }
}

}  // namespace ssm::cpu
