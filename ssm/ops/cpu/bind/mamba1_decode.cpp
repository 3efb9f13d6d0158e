// Binding of the CPU Mamba-1 decode layer (one token's conv update, x_proj, dt_proj and state step).
#include "common/bind/mamba1_decode_params.h"
#include "common/params.h"
#include "cpu/bind/common.h"
#include "cpu/kernels.h"
#include "cpu/runtime/isa.h"

namespace ssm::bind {

void bind_mamba1_decode(nb::module_& m) {
  def_kernel<int>(m, "mamba1_decode", &mamba1_decode_params,
                  [](const Mamba1DecodeParams& p, int nthreads) { SSM_CPU_CALL(mamba1_decode, p, nthreads); });
}

}  // namespace ssm::bind
