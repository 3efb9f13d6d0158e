// Param structs of the gated norm of Mamba-2, forward and backward, from their binding arguments,
// with the checks that hold on every backend. The backward's `parts` (partial rows of dweight /
// dbias) is the backend's to set.
#pragma once
#include "common/bind/ref.h"
#include "common/params.h"

namespace ssm::bind {

// Sizes and inputs shared by both directions.
inline GatedNormParams gated_norm_inputs(const char* op, int64_t rows, int64_t cols, int64_t group, int dtype,
                                         const Ref& x, const Ref& weight, const OptRef& bias,
                                         std::optional<int> z_dtype, const OptRef& z, float eps,
                                         bool norm_before_gate, bool is_rms) {
  SSM_CHECK(rows >= 0 && cols >= 1, op, "bad size ", rows, " x ", cols);
  SSM_CHECK(group >= 1 && cols % group == 0, op, "group size ", group, " must divide ", cols);
  GatedNormParams p;
  p.rows = rows, p.cols = cols, p.group = group, p.eps = eps, p.parts = 1;
  p.norm_before_gate = norm_before_gate, p.is_rms = is_rms;
  p.dtype = dtype_arg(op, dtype);
  p.z_dtype = dtype_arg(op, z_dtype.value_or(0));
  p.x = tensor_arg(op, "x", x, 2);
  p.weight = tensor_arg(op, "weight", weight, 1);
  p.bias = tensor_arg(op, "bias", bias, 1);
  p.z = tensor_arg(op, "z", z, 2);
  SSM_CHECK(p.weight.stride[0] == 1 && (!p.bias.present() || p.bias.stride[0] == 1), op,
            "weight and bias must be contiguous");
  return p;
}

inline GatedNormParams gated_norm_fwd_params(int64_t rows, int64_t cols, int64_t group, int dtype, const Ref& x,
                                             const Ref& weight, const OptRef& bias, std::optional<int> z_dtype,
                                             const OptRef& z, const Ref& out, float eps, bool norm_before_gate,
                                             bool is_rms) {
  const char* op = "gated_norm_fwd";
  GatedNormParams p =
      gated_norm_inputs(op, rows, cols, group, dtype, x, weight, bias, z_dtype, z, eps, norm_before_gate, is_rms);
  p.out = tensor_arg(op, "out", out, 2);
  return p;
}

inline GatedNormParams gated_norm_bwd_params(int64_t rows, int64_t cols, int64_t group, int dtype, const Ref& x,
                                             const Ref& weight, const OptRef& bias, std::optional<int> z_dtype,
                                             const OptRef& z, int dout_dtype, const Ref& dout, const Ref& dx,
                                             const OptRef& dz, const Ref& dweight_parts,
                                             const OptRef& dbias_parts, float eps, bool norm_before_gate,
                                             bool is_rms) {
  const char* op = "gated_norm_bwd";
  GatedNormParams p =
      gated_norm_inputs(op, rows, cols, group, dtype, x, weight, bias, z_dtype, z, eps, norm_before_gate, is_rms);
  p.dout_dtype = dtype_arg(op, dout_dtype);
  p.dout = tensor_arg(op, "dout", dout, 2);
  p.dx = tensor_arg(op, "dx", dx, 2);
  p.dz = tensor_arg(op, "dz", dz, 2);
  p.dweight_parts = tensor_arg(op, "dweight_parts", dweight_parts, 2);
  p.dbias_parts = tensor_arg(op, "dbias_parts", dbias_parts, 2);
  SSM_CHECK(p.z.present() == p.dz.present(), op, "dz must be given exactly when z is");
  SSM_CHECK(p.bias.present() == p.dbias_parts.present(), op, "dbias_parts must be given exactly when bias is");
  return p;
}

}  // namespace ssm::bind
