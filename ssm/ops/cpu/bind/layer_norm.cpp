#include "common/bind/layer_norm_params.h"
#include "cpu/bind/common.h"
#include "cpu/bind/prepared.h"
#include "cpu/bind/norm_parts.h"
#include "cpu/kernels.h"
#include "cpu/runtime/isa.h"

namespace ssm::bind {

void bind_layer_norm(nb::module_& m) {
  def_cpu_kernel(m, "layer_norm_fwd", &layer_norm_fwd_params,
                  [](const LayerNormParams& p, int nthreads) { SSM_CPU_CALL(layer_norm_fwd, p, nthreads); });
  def_kernel<int>(m, "layer_norm_bwd", &layer_norm_bwd_params, [](LayerNormBwdParams& p, int nthreads) {
    set_cpu_parts("layer_norm_bwd", p, nthreads);
    SSM_CPU_CALL(layer_norm_bwd, p, nthreads);
  });
}

}  // namespace ssm::bind
