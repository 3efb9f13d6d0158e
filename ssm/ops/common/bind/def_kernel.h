// Binds one kernel the same way in both modules: Python calls name(args..., exec), the op's shared
// builder (common/bind/<op>_params.h) turns args into its param struct with every backend-neutral
// check, and launch(params, exec) makes the backend's own checks and runs the kernel without the GIL.
// Exec is the CPU thread count (int) or the CUDA stream (int64_t).
#pragma once
#include "common/bind/ref.h"

namespace ssm::bind {

template <typename Exec, typename P, typename... Args, typename Launch>
void def_kernel(nb::module_& m, const char* name, P (*build)(Args...), Launch launch) {
  m.def(name, [build, launch](Args... args, Exec exec) {
    P p = build(args...);
    nb::gil_scoped_release release;
    launch(p, exec);
  });
}

}  // namespace ssm::bind
