#include "common/bind/selective_state_step_params.h"
#include "cuda/bind/common.h"
#include "cuda/kernels.h"

namespace ssm::bind::cuda {

void bind_selective_state_step(nb::module_& m) {
  def_kernel<int64_t>(m, "selective_state_step", &selective_state_step_params,
                      [](const StateStepParams& p, int64_t stream) {
                        ssm::cuda::selective_state_step(p, stream_arg(stream));
                      });
}

}  // namespace ssm::bind::cuda
