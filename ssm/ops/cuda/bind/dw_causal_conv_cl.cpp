// Binding of the conv backward with a workspace (CUDA only): channels-last calls run the
// channels-last kernel, whose per-block dweight / dbias partials the workspace holds; the others
// run the general kernel (the workspace unused).
#include "common/bind/dw_causal_conv_params.h"
#include "cuda/bind/common.h"
#include "cuda/kernels.h"

namespace ssm::bind::cuda {
namespace {

ConvBwdClParams dw_causal_conv_bwd_cl_params(int dtype, int64_t batch, int64_t dim, int64_t seqlen, int64_t width,
                                             const Ref& x, const Ref& weight, const OptRef& bias,
                                             const OptRef& seq_idx, const OptRef& initial_states, const Ref& dout,
                                             const OptRef& dfinal_states, const Ref& dx, const Ref& dweight,
                                             const OptRef& dbias, const OptRef& dinitial_states,
                                             const Ref& workspace, int64_t parts, bool silu) {
  ConvBwdClParams q;
  q.bwd = dw_causal_conv_bwd_params(dtype, batch, dim, seqlen, width, x, weight, bias, seq_idx, initial_states,
                                    dout, dfinal_states, dx, dweight, dbias, dinitial_states, silu);
  q.workspace = tensor_arg("dw_causal_conv_bwd_cl", "workspace", workspace, 3);
  q.parts = parts;
  return q;
}

}  // namespace

void bind_dw_causal_conv_cl(nb::module_& m) {
  def_kernel<int64_t>(m, "dw_causal_conv_bwd_cl", &dw_causal_conv_bwd_cl_params,
                      [](const ConvBwdClParams& q, int64_t stream) {
                        if (ssm::cuda::dw_causal_conv_cl_fits(q.bwd.fwd, q.bwd.dx) && q.bwd.dout.stride[1] == 1)
                          ssm::cuda::dw_causal_conv_cl_bwd(q, stream_arg(stream));
                        else
                          ssm::cuda::dw_causal_conv_bwd(q.bwd, stream_arg(stream));
                      });
}

}  // namespace ssm::bind::cuda
