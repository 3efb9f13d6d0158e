// Norm kernels. The CUDA backward accumulates dweight / dbias into one partial row (parts = 1).
#include "common/bind/gated_norm_params.h"
#include "common/bind/layer_norm_params.h"
#include "cuda/bind/common.h"
#include "cuda/kernels.h"

namespace ssm::bind::cuda {

void bind_norms(nb::module_& m) {
  def_kernel<int64_t>(m, "layer_norm_fwd", &layer_norm_fwd_params, [](const LayerNormParams& p, int64_t stream) {
    ssm::cuda::layer_norm_fwd(p, stream_arg(stream));
  });
  def_kernel<int64_t>(m, "layer_norm_bwd", &layer_norm_bwd_params, [](const LayerNormBwdParams& p, int64_t stream) {
    ssm::cuda::layer_norm_bwd(p, stream_arg(stream));
  });
  def_kernel<int64_t>(m, "gated_norm_fwd", &gated_norm_fwd_params, [](const GatedNormParams& p, int64_t stream) {
    ssm::cuda::gated_norm_fwd(p, stream_arg(stream));
  });
  def_kernel<int64_t>(m, "gated_norm_bwd", &gated_norm_bwd_params, [](const GatedNormParams& p, int64_t stream) {
    ssm::cuda::gated_norm_bwd(p, stream_arg(stream));
  });
}

}  // namespace ssm::bind::cuda
