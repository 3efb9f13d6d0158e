#include "common/bind/selective_state_step_params.h"
#include "cpu/bind/common.h"
#include "cpu/bind/prepared.h"
#include "cpu/kernels.h"
#include "cpu/runtime/isa.h"

namespace ssm::bind {

void bind_selective_state_step(nb::module_& m) {
  def_cpu_kernel(m, "selective_state_step", &selective_state_step_params,
                  [](const StateStepParams& p, int nthreads) { SSM_CPU_CALL(selective_state_step, p, nthreads); });
}

}  // namespace ssm::bind
