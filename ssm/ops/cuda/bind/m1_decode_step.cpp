// Binding of the small-batch Mamba-1 decode step with dt_proj folded in (CUDA only: the op layer,
// ssm/ops/proj_state_step.py, takes the other paths elsewhere).
#include "common/bind/ref.h"
#include "cuda/bind/common.h"
#include "cuda/kernels.h"

namespace ssm::bind::cuda {
namespace {

M1DecodeStepParams m1_decode_step_params(int state_dtype, int dtype, int64_t batch, int64_t dim, int64_t dstate,
                                         int64_t rank, const Ref& state, const Ref& x, const Ref& dt_in,
                                         const Ref& dt_proj, const Ref& A, const Ref& B, const Ref& C,
                                         const OptRef& D, const OptRef& z, const OptRef& dt_bias, const Ref& out,
                                         bool softplus, bool early) {
  const char* op = "m1_decode_step";
  SSM_CHECK(batch >= 0 && dim >= 0 && dstate >= 1 && rank >= 1, op, "bad sizes");
  M1DecodeStepParams p;
  p.batch = batch, p.dim = dim, p.dstate = dstate, p.rank = rank, p.softplus = softplus, p.early = early;
  p.state_dtype = dtype_arg(op, state_dtype);
  p.dtype = dtype_arg(op, dtype);
  p.state = tensor_arg(op, "state", state, 3);
  p.x = tensor_arg(op, "x", x, 2);
  p.dt_in = tensor_arg(op, "dt_in", dt_in, 2);
  p.dt_proj = tensor_arg(op, "dt_proj", dt_proj, 2);
  p.A = tensor_arg(op, "A", A, 2);
  p.B = tensor_arg(op, "B", B, 2);
  p.C = tensor_arg(op, "C", C, 2);
  p.D = tensor_arg(op, "D", D, 1);
  p.z = tensor_arg(op, "z", z, 2);
  p.dt_bias = tensor_arg(op, "dt_bias", dt_bias, 1);
  p.out = tensor_arg(op, "out", out, 2);
  return p;
}

}  // namespace

void bind_m1_decode_step(nb::module_& m) {
  def_kernel<int64_t>(m, "m1_decode_step", &m1_decode_step_params,
                      [](const M1DecodeStepParams& p, int64_t stream) {
                        ssm::cuda::m1_decode_step(p, stream_arg(stream));
                      });
}

}  // namespace ssm::bind::cuda
