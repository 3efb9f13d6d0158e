#include "cpu/bind/common.h"
#include "cpu/runtime/isa.h"

#include <nanobind/stl/string.h>

namespace ssm::bind {

void bind_runtime(nb::module_& m) {
  m.def("detected_isa", [] { return std::string(cpu::isa_name(cpu::detected_isa())); },
        "Best instruction set this CPU supports: generic, avx2 or avx512.");
  m.def("active_isa", [] { return std::string(cpu::isa_name(cpu::active_isa())); });
  m.def("set_isa", [](const std::string& name) {
    cpu::Isa isa = name == "avx512" ? cpu::Isa::avx512 : name == "avx2" ? cpu::Isa::avx2 : cpu::Isa::generic;
    SSM_CHECK(name == "avx512" || name == "avx2" || name == "generic", "set_isa",
              "expected generic, avx2 or avx512, got ", name);
    cpu::set_isa(isa);
  }, "Lowers the instruction set the kernels use (clamped to what the CPU supports).");
}

}  // namespace ssm::bind
