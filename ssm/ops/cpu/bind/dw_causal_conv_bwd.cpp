#include "cpu/bind/common.h"
#include "cpu/kernels.h"
#include "cpu/runtime/isa.h"

namespace ssm::bind {

void bind_dw_causal_conv_bwd(nb::module_& m) {
  m.def("dw_causal_conv_bwd",
        [](int dtype, int64_t batch, int64_t dim, int64_t seqlen, int64_t width, const Ref& x, const Ref& weight,
           const OptRef& bias, const OptRef& seq_idx, const OptRef& initial_states, const Ref& dout,
           const OptRef& dfinal_states, const Ref& dx, const Ref& dweight, const OptRef& dbias,
           const OptRef& dinitial_states, bool silu, int nthreads) {
          const char* op = "dw_causal_conv_bwd: ";
          SSM_CHECK(batch >= 0 && dim >= 0 && seqlen >= 0, op, "negative size");
          SSM_CHECK(width >= 1 && width <= 64, op, "width must be in [1, 64], got ", width);
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
          SSM_CHECK(p.bias.present() == q.dbias.present(), op, "dbias must be given exactly when bias is");
          nb::gil_scoped_release release;
          SSM_CPU_CALL(dw_causal_conv_bwd, q, nthreads);
        });
}

}  // namespace ssm::bind
