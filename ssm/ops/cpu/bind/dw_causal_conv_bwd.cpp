#include "common/bind/dw_causal_conv_params.h"
#include "cpu/bind/common.h"
#include "cpu/kernels.h"
#include "cpu/runtime/isa.h"

namespace ssm::bind {

void bind_dw_causal_conv_bwd(nb::module_& m) {
  def_kernel<int>(m, "dw_causal_conv_bwd", &dw_causal_conv_bwd_params,
                  [](const ConvBwdParams& p, int nthreads) { SSM_CPU_CALL(dw_causal_conv_bwd, p, nthreads); });
}

}  // namespace ssm::bind
