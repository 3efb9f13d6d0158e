#include "common/bind/gated_norm_params.h"
#include "cpu/bind/common.h"
#include "cpu/bind/prepared.h"
#include "cpu/bind/norm_parts.h"
#include "cpu/kernels.h"
#include "cpu/runtime/isa.h"

namespace ssm::bind {

void bind_gated_norm(nb::module_& m) {
  def_cpu_kernel(m, "gated_norm_fwd", &gated_norm_fwd_params,
                  [](const GatedNormParams& p, int nthreads) { SSM_CPU_CALL(gated_norm_fwd, p, nthreads); });
  def_kernel<int>(m, "gated_norm_bwd", &gated_norm_bwd_params, [](GatedNormParams& p, int nthreads) {
    set_cpu_parts("gated_norm_bwd", p, nthreads);
    SSM_CPU_CALL(gated_norm_bwd, p, nthreads);
  });
}

}  // namespace ssm::bind
