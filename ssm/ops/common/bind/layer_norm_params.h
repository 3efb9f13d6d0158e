// Param structs of the residual + LayerNorm / RMSNorm forward and backward from their binding
// arguments, with the checks that hold on every backend. The backward's `parts` (partial rows of
// dweight / dbias) is the backend's to set.
#pragma once
#include "common/bind/ref.h"
#include "common/params.h"

namespace ssm::bind {

inline LayerNormParams layer_norm_fwd_params(int64_t rows, int64_t cols, int dtype, const Ref& x, const Ref& weight,
                                             const OptRef& bias, std::optional<int> residual_dtype,
                                             const OptRef& residual, int residual_out_dtype, const Ref& out,
                                             const OptRef& residual_out, float eps, bool is_rms) {
  const char* op = "layer_norm_fwd";
  SSM_CHECK(rows >= 0 && cols >= 1, op, "bad size ", rows, " x ", cols);
  SSM_CHECK(eps >= 0.f, op, "eps must be >= 0, got ", eps);
  LayerNormParams p;
  p.rows = rows, p.cols = cols, p.eps = eps, p.is_rms = is_rms;
  p.dtype = dtype_arg(op, dtype);
  p.residual_dtype = dtype_arg(op, residual_dtype.value_or(0));
  p.residual_out_dtype = dtype_arg(op, residual_out_dtype);
  p.x = tensor_arg(op, "x", x, 2);
  p.weight = tensor_arg(op, "weight", weight, 1);
  p.bias = tensor_arg(op, "bias", bias, 1);
  p.residual = tensor_arg(op, "residual", residual, 2);
  p.out = tensor_arg(op, "out", out, 2);
  p.residual_out = tensor_arg(op, "residual_out", residual_out, 2);
  SSM_CHECK(p.weight.stride[0] == 1 && (!p.bias.present() || p.bias.stride[0] == 1), op,
            "weight and bias must be contiguous");
  return p;
}

inline LayerNormBwdParams layer_norm_bwd_params(int64_t rows, int64_t cols, int dtype, const Ref& s,
                                                const Ref& weight, const OptRef& bias, int dout_dtype,
                                                const Ref& dout, std::optional<int> dres_dtype,
                                                const OptRef& dresidual_out, int dx_dtype, const Ref& dx,
                                                int dresidual_dtype, const OptRef& dresidual,
                                                const Ref& dweight_parts, const OptRef& dbias_parts, float eps,
                                                bool is_rms) {
  const char* op = "layer_norm_bwd";
  SSM_CHECK(rows >= 0 && cols >= 1, op, "bad size ", rows, " x ", cols);
  LayerNormBwdParams p;
  p.rows = rows, p.cols = cols, p.eps = eps, p.is_rms = is_rms, p.parts = 1;
  p.dtype = dtype_arg(op, dtype);
  p.dout_dtype = dtype_arg(op, dout_dtype);
  p.dres_dtype = dtype_arg(op, dres_dtype.value_or(0));
  p.dx_dtype = dtype_arg(op, dx_dtype);
  p.dresidual_dtype = dtype_arg(op, dresidual_dtype);
  p.s = tensor_arg(op, "s", s, 2);
  p.weight = tensor_arg(op, "weight", weight, 1);
  p.bias = tensor_arg(op, "bias", bias, 1);
  p.dout = tensor_arg(op, "dout", dout, 2);
  p.dresidual_out = tensor_arg(op, "dresidual_out", dresidual_out, 2);
  p.dx = tensor_arg(op, "dx", dx, 2);
  p.dresidual = tensor_arg(op, "dresidual", dresidual, 2);
  p.dweight_parts = tensor_arg(op, "dweight_parts", dweight_parts, 2);
  p.dbias_parts = tensor_arg(op, "dbias_parts", dbias_parts, 2);
  SSM_CHECK(p.weight.stride[0] == 1, op, "weight must be contiguous");
  SSM_CHECK(p.bias.present() == p.dbias_parts.present(), op, "dbias_parts must be given exactly when bias is");
  return p;
}

}  // namespace ssm::bind
