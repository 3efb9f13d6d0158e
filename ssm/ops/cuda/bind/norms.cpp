// Norm kernels. The CUDA backwards write dweight / dbias as partial rows: the op layer allocates
// min(rows, kCudaNormParts) of them (at least 1), as ssm/ops/_kernels.norm_parts says.
#include "common/bind/gated_norm_params.h"
#include "common/bind/layer_norm_params.h"
#include "cuda/bind/common.h"
#include "cuda/kernels.h"

namespace ssm::bind::cuda {
namespace {

constexpr int64_t kCudaNormParts = 1024;

template <typename NormBwdParams>
NormBwdParams with_parts(NormBwdParams p) {
  p.parts = p.rows < kCudaNormParts ? (p.rows > 1 ? p.rows : 1) : kCudaNormParts;
  return p;
}

}  // namespace

void bind_norms(nb::module_& m) {
  def_kernel<int64_t>(m, "layer_norm_fwd", &layer_norm_fwd_params, [](const LayerNormParams& p, int64_t stream) {
    ssm::cuda::layer_norm_fwd(p, stream_arg(stream));
  });
  def_kernel<int64_t>(m, "layer_norm_bwd", &layer_norm_bwd_params, [](const LayerNormBwdParams& p, int64_t stream) {
    ssm::cuda::layer_norm_bwd(with_parts(p), stream_arg(stream));
  });
  def_kernel<int64_t>(m, "gated_norm_fwd", &gated_norm_fwd_params, [](const GatedNormParams& p, int64_t stream) {
    ssm::cuda::gated_norm_fwd(p, stream_arg(stream));
  });
  def_kernel<int64_t>(m, "gated_norm_bwd", &gated_norm_bwd_params, [](const GatedNormParams& p, int64_t stream) {
    ssm::cuda::gated_norm_bwd(with_parts(p), stream_arg(stream));
  });
}

}  // namespace ssm::bind::cuda
