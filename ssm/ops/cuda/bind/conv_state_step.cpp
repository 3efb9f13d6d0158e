// Binding of the fused Mamba-2 decode step (CUDA only: the op layer composes the conv update and
// the state step elsewhere).
#include "common/bind/ref.h"
#include "cuda/bind/common.h"
#include "cuda/kernels.h"

namespace ssm::bind::cuda {
namespace {

ConvStateStepParams conv_state_step_params(int state_dtype, int dtype, int64_t batch, int64_t nheads,
                                           int64_t headdim, int64_t dstate, int64_t ngroups, int64_t width,
                                           int64_t state_len, const Ref& xbc, const Ref& conv_state,
                                           const Ref& conv_weight, const OptRef& conv_bias, const Ref& state,
                                           const Ref& dt, const Ref& A, const OptRef& D, const OptRef& dt_bias,
                                           const OptRef& z, const Ref& counters, const Ref& out, bool softplus,
                                           bool silu, bool early) {
  const char* op = "conv_state_step";
  SSM_CHECK(batch >= 0 && nheads >= 1 && headdim >= 1 && dstate >= 1 && width >= 1, op, "bad sizes");
  SSM_CHECK(ngroups >= 1 && nheads % ngroups == 0, op, "groups must divide the heads, got ", ngroups);
  ConvStateStepParams p;
  p.batch = batch, p.nheads = nheads, p.headdim = headdim, p.dstate = dstate, p.ngroups = ngroups;
  p.width = width, p.state_len = state_len, p.softplus = softplus, p.silu = silu, p.early = early;
  p.state_dtype = dtype_arg(op, state_dtype);
  p.dtype = dtype_arg(op, dtype);
  p.xbc = tensor_arg(op, "xbc", xbc, 2);
  p.conv_state = tensor_arg(op, "conv_state", conv_state, 3);
  p.conv_weight = tensor_arg(op, "conv_weight", conv_weight, 2);
  p.conv_bias = tensor_arg(op, "conv_bias", conv_bias, 1);
  p.state = tensor_arg(op, "state", state, 4);
  p.dt = tensor_arg(op, "dt", dt, 2);
  p.A = tensor_arg(op, "A", A, 1);
  p.D = tensor_arg(op, "D", D, 2);
  p.dt_bias = tensor_arg(op, "dt_bias", dt_bias, 1);
  p.z = tensor_arg(op, "z", z, 3);
  p.counters = tensor_arg(op, "counters", counters, 1);
  p.out = tensor_arg(op, "out", out, 3);
  return p;
}

}  // namespace

void bind_conv_state_step(nb::module_& m) {
  def_kernel<int64_t>(m, "conv_state_step", &conv_state_step_params,
                      [](const ConvStateStepParams& p, int64_t stream) {
                        ssm::cuda::conv_state_step(p, stream_arg(stream));
                      });
}

}  // namespace ssm::bind::cuda
