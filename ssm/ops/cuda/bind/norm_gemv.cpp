// Binding of the small-batch linear layer with a gated RMSNorm prologue (CUDA only: the op layer
// composes the gated norm and F.linear elsewhere).
#include "common/bind/ref.h"
#include "cuda/bind/common.h"
#include "cuda/kernels.h"

namespace ssm::bind::cuda {
namespace {

NormGemvParams norm_gemv_params(int dtype, int64_t batch, int64_t in_features, int64_t out_features,
                                int64_t group_size, int mode, double eps, const Ref& x, const OptRef& z,
                                const OptRef& norm_weight, const Ref& weight, const OptRef& bias, const Ref& out,
                                const OptRef& residual, const OptRef& residual_out, const OptRef& norm_bias,
                                int64_t width, int64_t state_len, bool silu, const OptRef& conv_state,
                                const OptRef& conv_weight, const OptRef& conv_bias, const OptRef& conv_out,
                                int64_t conv_rows) {
  const char* op = "norm_gemv";
  SSM_CHECK(batch >= 0 && in_features >= 1 && out_features >= 0, op, "bad sizes");
  SSM_CHECK(mode == 0 || mode >= 3 || (z && norm_weight), op, "modes 1 and 2 need z and norm_weight");
  SSM_CHECK(mode < 3 || mode > 4 || (residual_out && norm_weight), op,
            "modes 3 and 4 need residual_out and norm_weight");
  NormGemvParams p;
  p.batch = batch, p.in_features = in_features, p.out_features = out_features, p.group_size = group_size;
  p.mode = mode, p.eps = float(eps);
  p.dtype = dtype_arg(op, dtype);
  p.x = tensor_arg(op, "x", x, 2);
  p.z = tensor_arg(op, "z", z, 2);
  p.norm_weight = tensor_arg(op, "norm_weight", norm_weight, 1);
  p.weight = tensor_arg(op, "weight", weight, 2);
  p.bias = tensor_arg(op, "bias", bias, 1);
  p.out = tensor_arg(op, "out", out, 2);
  p.residual = tensor_arg(op, "residual", residual, 2);
  p.residual_out = tensor_arg(op, "residual_out", residual_out, 2);
  p.norm_bias = tensor_arg(op, "norm_bias", norm_bias, 1);
  p.width = width, p.state_len = state_len, p.silu = silu;
  p.conv_state = tensor_arg(op, "conv_state", conv_state, 3);
  p.conv_weight = tensor_arg(op, "conv_weight", conv_weight, 2);
  p.conv_bias = tensor_arg(op, "conv_bias", conv_bias, 1);
  p.conv_out = tensor_arg(op, "conv_out", conv_out, 2);
  p.conv_rows = conv_rows;
  return p;
}

}  // namespace

void bind_norm_gemv(nb::module_& m) {
  def_kernel<int64_t>(m, "norm_gemv", &norm_gemv_params, [](const NormGemvParams& p, int64_t stream) {
    ssm::cuda::norm_gemv(p, stream_arg(stream));
  });
}

}  // namespace ssm::bind::cuda
