#include "common/bind/dw_causal_conv_params.h"
#include "cuda/bind/common.h"
#include "cuda/kernels.h"

namespace ssm::bind::cuda {

void bind_dw_causal_conv(nb::module_& m) {
  def_kernel<int64_t>(m, "dw_causal_conv_fwd", &dw_causal_conv_fwd_params, [](const ConvParams& p, int64_t stream) {
    // channels-last x and y (the fused Mamba-2 path's xBC) take their own kernel
    if (ssm::cuda::dw_causal_conv_cl_fits(p, p.out)) ssm::cuda::dw_causal_conv_cl_fwd(p, stream_arg(stream));
    else ssm::cuda::dw_causal_conv_fwd(p, stream_arg(stream));
  });
}

}  // namespace ssm::bind::cuda
