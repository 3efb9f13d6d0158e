#include "common/bind/dw_causal_conv_params.h"
#include "common/bind/dw_causal_conv_update_params.h"
#include "cuda/bind/common.h"
#include "cuda/kernels.h"

namespace ssm::bind::cuda {

void bind_dw_causal_conv_bwd(nb::module_& m) {
  def_kernel<int64_t>(m, "dw_causal_conv_bwd", &dw_causal_conv_bwd_params, [](const ConvBwdParams& p, int64_t stream) {
    ssm::cuda::dw_causal_conv_bwd(p, stream_arg(stream));
  });
}

void bind_dw_causal_conv_update(nb::module_& m) {
  def_kernel<int64_t>(m, "dw_causal_conv_update", &dw_causal_conv_update_params,
                      [](const ConvUpdateParams& p, int64_t stream) {
                        ssm::cuda::dw_causal_conv_update(p, stream_arg(stream));
                      });
}

}  // namespace ssm::bind::cuda
