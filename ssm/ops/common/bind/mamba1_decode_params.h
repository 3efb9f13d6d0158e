// Param struct of the CPU Mamba-1 decode layer from its binding arguments, with its checks (shared by
// the layer's binding and the whole block's).
#pragma once
#include "common/bind/ref.h"
#include "common/params.h"

namespace ssm::bind {

inline Mamba1DecodeParams mamba1_decode_params(int dtype, int state_dtype, int64_t batch, int64_t dim,
                                               int64_t dstate, int64_t dt_rank, int64_t width, int64_t state_len,
                                               bool silu, const Ref& x, const OptRef& z, const Ref& conv_state,
                                               const Ref& conv_weight, const OptRef& conv_bias,
                                               const Ref& x_proj_weight, const Ref& dt_proj_weight,
                                               const OptRef& dt_bias, const OptRef& D, const Ref& A,
                                               const Ref& ssm_state, const Ref& out) {
  const char* op = "mamba1_decode";
  SSM_CHECK(batch >= 0 && dim >= 1 && dstate >= 1 && dt_rank >= 1 && width >= 1, op, "bad sizes");
  SSM_CHECK(state_len >= width - 1 && state_len >= 1, op, "conv_state holds ", state_len, " < width - 1 entries");
  Mamba1DecodeParams p;
  p.batch = batch, p.dim = dim, p.dstate = dstate, p.dt_rank = dt_rank, p.width = width, p.state_len = state_len;
  p.dtype = dtype_arg(op, dtype), p.state_dtype = dtype_arg(op, state_dtype), p.silu = silu;
  p.x = tensor_arg(op, "x", x, 2), p.z = tensor_arg(op, "z", z, 2);
  p.conv_state = tensor_arg(op, "conv_state", conv_state, 3);
  p.conv_weight = tensor_arg(op, "conv_weight", conv_weight, 2);
  p.conv_bias = tensor_arg(op, "conv_bias", conv_bias, 1);
  p.x_proj_weight = tensor_arg(op, "x_proj_weight", x_proj_weight, 2);
  p.dt_proj_weight = tensor_arg(op, "dt_proj_weight", dt_proj_weight, 2);
  SSM_CHECK(p.x_proj_weight.stride[1] == 1 && p.dt_proj_weight.stride[1] == 1, op,
            "x_proj_weight and dt_proj_weight must be contiguous along their input features");
  p.dt_bias = tensor_arg(op, "dt_bias", dt_bias, 1), p.D = tensor_arg(op, "D", D, 1);
  p.A = tensor_arg(op, "A", A, 2);
  p.ssm_state = tensor_arg(op, "ssm_state", ssm_state, 3);
  p.out = tensor_arg(op, "out", out, 2);
  return p;
}

}  // namespace ssm::bind
