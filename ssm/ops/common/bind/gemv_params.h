// Param struct of the small-batch linear layer from its binding arguments, with its checks.
#pragma once
#include "common/bind/ref.h"
#include "common/params.h"

namespace ssm::bind {

inline GemvParams gemv_params(int dtype, int64_t batch, int64_t in_features, int64_t out_features, const Ref& x,
                              const Ref& weight, const OptRef& bias, const Ref& out) {
  const char* op = "gemv";
  SSM_CHECK(batch >= 0 && in_features >= 0 && out_features >= 0, op, "negative size");
  GemvParams p;
  p.batch = batch, p.in_features = in_features, p.out_features = out_features;
  p.dtype = dtype_arg(op, dtype);
  p.x = tensor_arg(op, "x", x, 2);
  p.weight = tensor_arg(op, "weight", weight, 2);
  SSM_CHECK(p.weight.stride[1] == 1 || in_features <= 1, op, "weight must be contiguous along in_features");
  p.bias = tensor_arg(op, "bias", bias, 1);
  p.out = tensor_arg(op, "out", out, 2);
  return p;
}

}  // namespace ssm::bind
