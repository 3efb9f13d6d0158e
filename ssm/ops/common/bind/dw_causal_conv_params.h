// Param structs of the depthwise causal conv forward and backward from their binding arguments,
// with the checks that hold on every backend.
#pragma once
#include "common/bind/ref.h"
#include "common/params.h"

namespace ssm::bind {

// Sizes and inputs shared by both directions.
inline ConvParams conv_inputs(const char* op, int dtype, int64_t batch, int64_t dim, int64_t seqlen, int64_t width,
                              const Ref& x, const Ref& weight, const OptRef& bias, const OptRef& seq_idx,
                              const OptRef& initial_states, bool silu) {
  SSM_CHECK(batch >= 0 && dim >= 0 && seqlen >= 0, op, "negative size");
  SSM_CHECK(width >= 1 && width <= 64, op, "width must be in [1, 64], got ", width);
  ConvParams p;
  p.batch = batch, p.dim = dim, p.seqlen = seqlen, p.width = width, p.silu = silu;
  p.dtype = dtype_arg(op, dtype);
  p.x = tensor_arg(op, "x", x, 3);
  p.weight = tensor_arg(op, "weight", weight, 2);
  SSM_CHECK(p.weight.stride[1] == 1, op, "weight must be contiguous along the width");
  p.bias = tensor_arg(op, "bias", bias, 1);
  p.seq_idx = tensor_arg(op, "seq_idx", seq_idx, 2);
  p.initial_states = tensor_arg(op, "initial_states", initial_states, 3);
  return p;
}

inline ConvParams dw_causal_conv_fwd_params(int dtype, int64_t batch, int64_t dim, int64_t seqlen, int64_t width,
                                            const Ref& x, const Ref& weight, const OptRef& bias,
                                            const OptRef& seq_idx, const OptRef& initial_states, const Ref& out,
                                            const OptRef& final_states, bool silu) {
  const char* op = "dw_causal_conv_fwd";
  ConvParams p = conv_inputs(op, dtype, batch, dim, seqlen, width, x, weight, bias, seq_idx, initial_states, silu);
  p.out = tensor_arg(op, "out", out, 3);
  p.final_states = tensor_arg(op, "final_states", final_states, 3);
  return p;
}

inline ConvBwdParams dw_causal_conv_bwd_params(int dtype, int64_t batch, int64_t dim, int64_t seqlen, int64_t width,
                                               const Ref& x, const Ref& weight, const OptRef& bias,
                                               const OptRef& seq_idx, const OptRef& initial_states,
                                               const Ref& dout, const OptRef& dfinal_states, const Ref& dx,
                                               const Ref& dweight, const OptRef& dbias,
                                               const OptRef& dinitial_states, bool silu) {
  const char* op = "dw_causal_conv_bwd";
  ConvBwdParams q;
  q.fwd = conv_inputs(op, dtype, batch, dim, seqlen, width, x, weight, bias, seq_idx, initial_states, silu);
  q.dout = tensor_arg(op, "dout", dout, 3);
  q.dfinal_states = tensor_arg(op, "dfinal_states", dfinal_states, 3);
  q.dx = tensor_arg(op, "dx", dx, 3);
  q.dweight = tensor_arg(op, "dweight", dweight, 2);
  q.dbias = tensor_arg(op, "dbias", dbias, 1);
  q.dinitial_states = tensor_arg(op, "dinitial_states", dinitial_states, 3);
  SSM_CHECK(q.dbias.present() == q.fwd.bias.present() &&
                q.dinitial_states.present() == q.fwd.initial_states.present(),
            op, "each optional input needs its gradient buffer");
  return q;
}

}  // namespace ssm::bind
