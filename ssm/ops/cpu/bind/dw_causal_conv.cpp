#include "common/bind/dw_causal_conv_params.h"
#include "cpu/bind/common.h"
#include "cpu/bind/prepared.h"
#include "cpu/kernels.h"
#include "cpu/runtime/isa.h"

namespace ssm::bind {

void bind_dw_causal_conv(nb::module_& m) {
  def_cpu_kernel(m, "dw_causal_conv_fwd", &dw_causal_conv_fwd_params,
                  [](const ConvParams& p, int nthreads) { SSM_CPU_CALL(dw_causal_conv_fwd, p, nthreads); });
}

}  // namespace ssm::bind
