// Binding of the CPU Mamba-1 block decode (add + norm, in_proj, the decode layer, out_proj in one call).
// x and z are the halves of xz; the layer's own arguments are checked by mamba1_decode_params.
#include "common/bind/mamba1_decode_params.h"
#include "common/params.h"
#include "cpu/bind/common.h"
#include "cpu/kernels.h"
#include "cpu/runtime/isa.h"

namespace ssm::bind {
namespace {

Mamba1BlockDecodeParams block_params(int dtype, int state_dtype, int64_t batch, int64_t dim, int64_t dstate,
                                     int64_t dt_rank, int64_t width, int64_t state_len, bool silu, int64_t d_model,
                                     bool add_residual, bool is_rms, double eps, const Ref& hidden,
                                     const Ref& residual, const Ref& norm_weight, const OptRef& norm_bias,
                                     const Ref& normed, const Ref& in_proj_weight, const OptRef& in_proj_bias,
                                     const Ref& xz, const Ref& conv_state, const Ref& conv_weight,
                                     const OptRef& conv_bias, const Ref& x_proj_weight, const Ref& dt_proj_weight,
                                     const OptRef& dt_bias, const OptRef& D, const Ref& A, const Ref& ssm_state,
                                     const Ref& y, const Ref& out_proj_weight, const OptRef& out_proj_bias) {
  const char* op = "mamba1_block_decode";
  SSM_CHECK(d_model >= 1, op, "bad d_model ", d_model);
  SSM_CHECK(xz.size() == 3, op, "xz: expected a 2-d tensor reference");
  // z = xz[:, dim:], dim elements of the activation dtype past x
  Ref z = xz;
  z[0] += dim * xz[2] * (dtype == 0 ? 4 : 2);
  Mamba1BlockDecodeParams p;
  p.inner = mamba1_decode_params(dtype, state_dtype, batch, dim, dstate, dt_rank, width, state_len, silu, xz, z,
                                 conv_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_bias, D, A,
                                 ssm_state, y);
  p.d_model = d_model, p.add_residual = add_residual, p.is_rms = is_rms, p.eps = float(eps);
  p.hidden = tensor_arg(op, "hidden", hidden, 2), p.residual = tensor_arg(op, "residual", residual, 2);
  p.norm_weight = tensor_arg(op, "norm_weight", norm_weight, 1);
  p.norm_bias = tensor_arg(op, "norm_bias", norm_bias, 1);
  p.normed = tensor_arg(op, "normed", normed, 2);
  p.in_proj_weight = tensor_arg(op, "in_proj_weight", in_proj_weight, 2);
  p.in_proj_bias = tensor_arg(op, "in_proj_bias", in_proj_bias, 1);
  p.xz = tensor_arg(op, "xz", xz, 2);
  p.out_proj_weight = tensor_arg(op, "out_proj_weight", out_proj_weight, 2);
  p.out_proj_bias = tensor_arg(op, "out_proj_bias", out_proj_bias, 1);
  SSM_CHECK(p.norm_weight.stride[0] == 1 && (!p.norm_bias.present() || p.norm_bias.stride[0] == 1), op,
            "norm_weight and norm_bias must be contiguous");
  SSM_CHECK(p.in_proj_weight.stride[1] == 1 && p.out_proj_weight.stride[1] == 1, op,
            "in_proj_weight and out_proj_weight must be contiguous along their input features");
  return p;
}

}  // namespace

void bind_mamba1_block_decode(nb::module_& m) {
  def_kernel<int>(m, "mamba1_block_decode", &block_params, [](const Mamba1BlockDecodeParams& p, int nthreads) {
    SSM_CPU_CALL(mamba1_block_decode, p, nthreads);
  });
}

}  // namespace ssm::bind
