#include "common/bind/gemv_params.h"
#include "cpu/bind/common.h"
#include "cpu/bind/prepared.h"
#include "cpu/kernels.h"
#include "cpu/runtime/isa.h"

namespace ssm::bind {

void bind_gemv(nb::module_& m) {
  def_cpu_kernel(m, "gemv", &gemv_params, [](const GemvParams& p, int nthreads) { SSM_CPU_CALL(gemv, p, nthreads); });
}

}  // namespace ssm::bind
