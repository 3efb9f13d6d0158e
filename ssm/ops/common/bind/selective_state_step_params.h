// Param struct of the selective state decode step from its binding arguments, with the checks
// that hold on every backend.
#pragma once
#include "common/bind/ref.h"
#include "common/params.h"

namespace ssm::bind {

inline StateStepParams selective_state_step_params(int state_dtype, int dtype, int64_t batch, int64_t nheads,
                                                   int64_t headdim, int64_t dstate, int64_t ngroups,
                                                   const Ref& state, const Ref& x, const Ref& dt, const Ref& A,
                                                   const Ref& B, const Ref& C, const OptRef& D, const OptRef& z,
                                                   const OptRef& dt_bias, const OptRef& state_batch_indices,
                                                   const Ref& out, bool softplus) {
  const char* op = "selective_state_step";
  SSM_CHECK(batch >= 0 && nheads >= 1 && headdim >= 1 && dstate >= 1, op, "bad sizes");
  SSM_CHECK(ngroups >= 1 && nheads % ngroups == 0, op, "groups must divide the heads, got ", ngroups);
  StateStepParams p;
  p.batch = batch, p.nheads = nheads, p.headdim = headdim, p.dstate = dstate, p.ngroups = ngroups;
  p.softplus = softplus;
  p.state_dtype = dtype_arg(op, state_dtype);
  p.dtype = dtype_arg(op, dtype);
  p.state = tensor_arg(op, "state", state, 4);
  p.x = tensor_arg(op, "x", x, 3);
  p.dt = tensor_arg(op, "dt", dt, 3);
  p.A = tensor_arg(op, "A", A, 3);
  p.B = tensor_arg(op, "B", B, 3);
  p.C = tensor_arg(op, "C", C, 3);
  p.D = tensor_arg(op, "D", D, 2);
  p.z = tensor_arg(op, "z", z, 3);
  p.dt_bias = tensor_arg(op, "dt_bias", dt_bias, 2);
  p.state_batch_indices = tensor_arg(op, "state_batch_indices", state_batch_indices, 1);
  p.out = tensor_arg(op, "out", out, 3);
  return p;
}

}  // namespace ssm::bind
