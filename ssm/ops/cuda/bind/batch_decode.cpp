// Binding of the batch decode conv update (CUDA only: elsewhere the op layer calls the general conv update).
#include "common/bind/ref.h"
#include "cuda/bind/common.h"
#include "cuda/kernels.h"

namespace ssm::bind::cuda {
namespace {

BatchConvParams batch_conv_params(int dtype, int64_t batch, int64_t dim, int64_t width, int64_t state_len,
                                  const Ref& x, const Ref& conv_state, const Ref& weight, const OptRef& bias,
                                  const Ref& out, bool silu) {
  const char* op = "batch_conv";
  SSM_CHECK(batch >= 0 && dim >= 1 && width >= 2 && width <= 4, op, "bad sizes");
  SSM_CHECK(state_len == 4, op, "conv_state rows must hold 4 entries, got ", state_len);
  BatchConvParams p;
  p.batch = batch, p.dim = dim, p.width = width, p.silu = silu;
  p.dtype = dtype_arg(op, dtype);
  p.x = tensor_arg(op, "x", x, 2);
  p.conv_state = tensor_arg(op, "conv_state", conv_state, 3);
  p.weight = tensor_arg(op, "weight", weight, 2);
  p.bias = tensor_arg(op, "bias", bias, 1);
  p.out = tensor_arg(op, "out", out, 2);
  return p;
}

BatchLinearParams batch_linear_narrow_params(int dtype, int64_t batch, int64_t K, int64_t nout, const Ref& x,
                                             const Ref& weight, const Ref& out) {
  const char* op = "batch_linear_narrow";
  SSM_CHECK(batch >= 0 && K >= 1 && nout >= 1, op, "bad sizes");
  BatchLinearParams p;
  p.batch = batch, p.K = K, p.nout = nout;
  p.dtype = dtype_arg(op, dtype);
  p.x = tensor_arg(op, "x", x, 2);
  p.weight = tensor_arg(op, "weight", weight, 2);
  p.out = tensor_arg(op, "out", out, 2);
  return p;
}

// Binds name(args..., stream): build(args...) -> params, then launch(params, the stream).
template <typename P, typename... Args>
void def_launch(nb::module_& m, const char* name, P (*build)(Args...), void (*launch)(const P&, cudaStream_t)) {
  def_kernel<int64_t>(m, name, build, [launch](const P& p, int64_t stream) { launch(p, stream_arg(stream)); });
}

}  // namespace

void bind_batch_conv(nb::module_& m) {
  def_launch(m, "batch_conv", &batch_conv_params, &ssm::cuda::batch_conv);
  def_launch(m, "batch_linear_narrow", &batch_linear_narrow_params, &ssm::cuda::batch_linear_narrow);
}

}  // namespace ssm::bind::cuda
