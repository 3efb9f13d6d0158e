#include "common/bind/dw_causal_conv_update_params.h"
#include "cpu/bind/common.h"
#include "cpu/bind/prepared.h"
#include "cpu/kernels.h"
#include "cpu/runtime/isa.h"

namespace ssm::bind {

void bind_dw_causal_conv_update(nb::module_& m) {
  def_cpu_kernel(m, "dw_causal_conv_update", &dw_causal_conv_update_params,
                  [](const ConvUpdateParams& p, int nthreads) { SSM_CPU_CALL(dw_causal_conv_update, p, nthreads); });
}

}  // namespace ssm::bind
