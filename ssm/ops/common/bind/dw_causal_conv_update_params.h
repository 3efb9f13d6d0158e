// Param struct of the causal conv decode update from its binding arguments, with the checks that
// hold on every backend.
#pragma once
#include "common/bind/ref.h"
#include "common/params.h"

namespace ssm::bind {

inline ConvUpdateParams dw_causal_conv_update_params(int dtype, int64_t batch, int64_t dim, int64_t seqlen,
                                                     int64_t width, int64_t state_batch, int64_t state_len,
                                                     const Ref& x, const Ref& conv_state, const Ref& weight,
                                                     const OptRef& bias, const OptRef& conv_state_indices,
                                                     const OptRef& cache_seqlens, const Ref& out, bool silu) {
  const char* op = "dw_causal_conv_update";
  SSM_CHECK(batch >= 0 && dim >= 0 && seqlen >= 0 && state_batch >= 0, op, "negative size");
  SSM_CHECK(width >= 1 && width <= 64, op, "width must be in [1, 64], got ", width);
  SSM_CHECK(state_len >= width - 1 && state_len >= 1, op, "state length ", state_len, " < width - 1");
  ConvUpdateParams p;
  p.batch = batch, p.dim = dim, p.seqlen = seqlen, p.width = width;
  p.state_batch = state_batch, p.state_len = state_len, p.silu = silu;
  p.dtype = dtype_arg(op, dtype);
  p.x = tensor_arg(op, "x", x, 3);
  p.conv_state = tensor_arg(op, "conv_state", conv_state, 3);
  p.weight = tensor_arg(op, "weight", weight, 2);
  SSM_CHECK(p.weight.stride[1] == 1, op, "weight must be contiguous along the width");
  p.bias = tensor_arg(op, "bias", bias, 1);
  p.conv_state_indices = tensor_arg(op, "conv_state_indices", conv_state_indices, 1);
  p.cache_seqlens = tensor_arg(op, "cache_seqlens", cache_seqlens, 1);
  p.out = tensor_arg(op, "out", out, 3);
  return p;
}

}  // namespace ssm::bind
