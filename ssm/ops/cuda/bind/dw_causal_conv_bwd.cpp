#include "cuda/bind/common.h"
#include "cuda/kernels.h"

namespace ssm::bind::cuda {

void bind_dw_causal_conv_bwd(nb::module_& m) {
  m.def("dw_causal_conv_bwd",
        [](int dtype, int64_t batch, int64_t dim, int64_t seqlen, int64_t width, const Ref& x, const Ref& weight,
           const OptRef& bias, const OptRef& seq_idx, const OptRef& initial_states, const Ref& dout,
           const OptRef& dfinal_states, const Ref& dx, const Ref& dweight, const OptRef& dbias,
           const OptRef& dinitial_states, bool silu, int64_t stream) {
          const char* op = "dw_causal_conv_bwd: ";
          SSM_CHECK(batch >= 0 && dim >= 0 && seqlen >= 0, op, "negative size");
          ConvBwdParams q;
          ConvParams& p = q.fwd;
          p.batch = batch, p.dim = dim, p.seqlen = seqlen, p.width = width, p.silu = silu;
          p.dtype = dtype_arg(op, dtype);
          p.x = tensor_arg(op, "x", x, 3);
          p.weight = tensor_arg(op, "weight", weight, 2);
          SSM_CHECK(p.weight.stride[1] == 1, op, "weight must be contiguous along the width");
          p.bias = tensor_arg(op, "bias", bias, 1);
          p.seq_idx = tensor_arg(op, "seq_idx", seq_idx, 2);
          p.initial_states = tensor_arg(op, "initial_states", initial_states, 3);
          q.dout = tensor_arg(op, "dout", dout, 3);
          q.dfinal_states = tensor_arg(op, "dfinal_states", dfinal_states, 3);
          q.dx = tensor_arg(op, "dx", dx, 3);
          q.dweight = tensor_arg(op, "dweight", dweight, 2);
          q.dbias = tensor_arg(op, "dbias", dbias, 1);
          q.dinitial_states = tensor_arg(op, "dinitial_states", dinitial_states, 3);
          SSM_CHECK(q.dbias.present() == p.bias.present() && q.dinitial_states.present() == p.initial_states.present(),
                    op, "each optional input needs its gradient buffer");
          nb::gil_scoped_release release;
          ssm::cuda::dw_causal_conv_bwd(q, stream_arg(stream));
        });
}

void bind_dw_causal_conv_update(nb::module_& m) {
  m.def("dw_causal_conv_update",
        [](int dtype, int64_t batch, int64_t dim, int64_t seqlen, int64_t width, int64_t state_batch,
           int64_t state_len, const Ref& x, const Ref& conv_state, const Ref& weight, const OptRef& bias,
           const OptRef& conv_state_indices, const OptRef& cache_seqlens, const Ref& out, bool silu, int64_t stream) {
          const char* op = "dw_causal_conv_update: ";
          SSM_CHECK(batch >= 0 && dim >= 0 && seqlen >= 0 && state_batch >= 0, op, "negative size");
          ConvUpdateParams p;
          p.batch = batch, p.dim = dim, p.seqlen = seqlen, p.width = width, p.state_batch = state_batch;
          p.state_len = state_len, p.silu = silu;
          p.dtype = dtype_arg(op, dtype);
          p.x = tensor_arg(op, "x", x, 3);
          p.conv_state = tensor_arg(op, "conv_state", conv_state, 3);
          p.weight = tensor_arg(op, "weight", weight, 2);
          p.bias = tensor_arg(op, "bias", bias, 1);
          p.conv_state_indices = tensor_arg(op, "conv_state_indices", conv_state_indices, 1);
          p.cache_seqlens = tensor_arg(op, "cache_seqlens", cache_seqlens, 1);
          p.out = tensor_arg(op, "out", out, 3);
          nb::gil_scoped_release release;
          ssm::cuda::dw_causal_conv_update(p, stream_arg(stream));
        });
}

}  // namespace ssm::bind::cuda
