// Norm kernels: the same names and signatures as the CPU bindings (ssm/ops/cpu/bind/layer_norm.cpp
// and gated_norm.cpp). The CUDA backward writes one partial row of dweight / dbias.
#include <optional>

#include "cuda/bind/common.h"
#include "cuda/kernels.h"

namespace ssm::bind::cuda {
namespace {

void layer_norm_fwd(int64_t rows, int64_t cols, int dtype, const Ref& x, const Ref& weight, const OptRef& bias,
                    std::optional<int> residual_dtype, const OptRef& residual, int residual_out_dtype,
                    const Ref& out, const OptRef& residual_out, float eps, bool is_rms, int64_t stream) {
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
  nb::gil_scoped_release release;
  ssm::cuda::layer_norm_fwd(p, stream_arg(stream));
}

void layer_norm_bwd(int64_t rows, int64_t cols, int dtype, const Ref& s, const Ref& weight, const OptRef& bias,
                    int dout_dtype, const Ref& dout, std::optional<int> dres_dtype, const OptRef& dresidual_out,
                    int dx_dtype, const Ref& dx, int dresidual_dtype, const OptRef& dresidual,
                    const Ref& dweight_parts, const OptRef& dbias_parts, float eps, bool is_rms, int64_t stream) {
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
  nb::gil_scoped_release release;
  ssm::cuda::layer_norm_bwd(p, stream_arg(stream));
}

GatedNormParams gated_params(const char* op, int64_t rows, int64_t cols, int64_t group, int dtype,
                             const Ref& x, const Ref& weight, const OptRef& bias, std::optional<int> z_dtype,
                             const OptRef& z, float eps, bool norm_before_gate, bool is_rms) {
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

void gated_norm_fwd(int64_t rows, int64_t cols, int64_t group, int dtype, const Ref& x, const Ref& weight,
                    const OptRef& bias, std::optional<int> z_dtype, const OptRef& z, const Ref& out, float eps,
                    bool norm_before_gate, bool is_rms, int64_t stream) {
  const char* op = "gated_norm_fwd";
  GatedNormParams p = gated_params(op, rows, cols, group, dtype, x, weight, bias, z_dtype, z, eps,
                                   norm_before_gate, is_rms);
  p.out = tensor_arg(op, "out", out, 2);
  nb::gil_scoped_release release;
  ssm::cuda::gated_norm_fwd(p, stream_arg(stream));
}

void gated_norm_bwd(int64_t rows, int64_t cols, int64_t group, int dtype, const Ref& x, const Ref& weight,
                    const OptRef& bias, std::optional<int> z_dtype, const OptRef& z, int dout_dtype,
                    const Ref& dout, const Ref& dx, const OptRef& dz, const Ref& dweight_parts,
                    const OptRef& dbias_parts, float eps, bool norm_before_gate, bool is_rms, int64_t stream) {
  const char* op = "gated_norm_bwd";
  GatedNormParams p = gated_params(op, rows, cols, group, dtype, x, weight, bias, z_dtype, z, eps,
                                   norm_before_gate, is_rms);
  p.dout_dtype = dtype_arg(op, dout_dtype);
  p.dout = tensor_arg(op, "dout", dout, 2);
  p.dx = tensor_arg(op, "dx", dx, 2);
  p.dz = tensor_arg(op, "dz", dz, 2);
  p.dweight_parts = tensor_arg(op, "dweight_parts", dweight_parts, 2);
  p.dbias_parts = tensor_arg(op, "dbias_parts", dbias_parts, 2);
  SSM_CHECK(p.z.present() == p.dz.present(), op, "dz must be given exactly when z is");
  SSM_CHECK(p.bias.present() == p.dbias_parts.present(), op, "dbias_parts must be given exactly when bias is");
  nb::gil_scoped_release release;
  ssm::cuda::gated_norm_bwd(p, stream_arg(stream));
}

}  // namespace

void bind_norms(nb::module_& m) {
  m.def("layer_norm_fwd", &layer_norm_fwd);
  m.def("layer_norm_bwd", &layer_norm_bwd);
  m.def("gated_norm_fwd", &gated_norm_fwd);
  m.def("gated_norm_bwd", &gated_norm_bwd);
}

}  // namespace ssm::bind::cuda
