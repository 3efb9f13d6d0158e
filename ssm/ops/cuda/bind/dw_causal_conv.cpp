#include "cuda/bind/common.h"
#include "cuda/kernels.h"

namespace ssm::bind::cuda {

void bind_dw_causal_conv(nb::module_& m) {
  m.def("dw_causal_conv_fwd",
        [](int dtype, int64_t batch, int64_t dim, int64_t seqlen, int64_t width, const Ref& x,
           const Ref& weight, const OptRef& bias, const OptRef& seq_idx, const OptRef& initial_states,
           const Ref& out, const OptRef& final_states, bool silu, int64_t stream) {
          const char* op = "dw_causal_conv_fwd: ";
          SSM_CHECK(batch >= 0 && dim >= 0 && seqlen >= 0, op, "negative size");
          ConvParams p;
          p.batch = batch, p.dim = dim, p.seqlen = seqlen, p.width = width;
          p.dtype = dtype_arg(op, dtype);
          p.x = tensor_arg(op, "x", x, 3);
          p.weight = tensor_arg(op, "weight", weight, 2);
          SSM_CHECK(p.weight.stride[1] == 1, op, "weight must be contiguous along the width");
          p.bias = tensor_arg(op, "bias", bias, 1);
          p.seq_idx = tensor_arg(op, "seq_idx", seq_idx, 2);
          p.initial_states = tensor_arg(op, "initial_states", initial_states, 3);
          p.out = tensor_arg(op, "out", out, 3);
          p.final_states = tensor_arg(op, "final_states", final_states, 3);
          p.silu = silu;
          nb::gil_scoped_release release;
          ssm::cuda::dw_causal_conv_fwd(p, stream_arg(stream));
        });
}

}  // namespace ssm::bind::cuda
