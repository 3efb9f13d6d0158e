#include "common/params.h"
#include "cpu/bind/common.h"
#include "cpu/kernels.h"
#include "cpu/runtime/isa.h"

namespace ssm::bind {
namespace {

// Sizes, inputs and forward outputs shared by both directions; checks what C++ relies on.
SelectiveScanParams scan_params(const char* op, int dtype, int64_t batch, int64_t dim, int64_t seqlen,
                                int64_t dstate, int64_t ngroups, int64_t nslices, const Ref& u, const Ref& delta,
                                const Ref& A, const Ref& B, const Ref& C, const OptRef& D, const OptRef& z,
                                const OptRef& dt_bias, const OptRef& initial_state, const OptRef& seq_idx,
                                const OptRef& cu_seqlens, int64_t nrows, bool softplus) {
  SSM_CHECK(batch >= 0 && dim >= 0 && seqlen >= 0 && dstate >= 1, op, "bad sizes");
  SSM_CHECK(ngroups >= 1 && dim % ngroups == 0, op, "groups must divide the channels, got ", ngroups);
  SSM_CHECK(nslices >= 1, op, "nslices must be >= 1, got ", nslices);
  SelectiveScanParams p;
  p.batch = batch, p.dim = dim, p.seqlen = seqlen, p.dstate = dstate, p.ngroups = ngroups;
  p.nslices = nslices, p.nrows = nrows, p.softplus = softplus;
  p.dtype = dtype_arg(op, dtype);
  p.u = tensor_arg(op, "u", u, 3);
  p.delta = tensor_arg(op, "delta", delta, 3);
  p.A = tensor_arg(op, "A", A, 2);
  p.B_var = B.size() == 5, p.C_var = C.size() == 5;
  p.B = tensor_arg(op, "B", B, p.B_var ? 4 : 2);
  p.C = tensor_arg(op, "C", C, p.C_var ? 4 : 2);
  p.D = tensor_arg(op, "D", D, 1);
  p.z = tensor_arg(op, "z", z, 3);
  p.dt_bias = tensor_arg(op, "dt_bias", dt_bias, 1);
  p.initial_state = tensor_arg(op, "initial_state", initial_state, 3);
  p.seq_idx = tensor_arg(op, "seq_idx", seq_idx, 2);
  p.cu_seqlens = tensor_arg(op, "cu_seqlens", cu_seqlens, 1);
  SSM_CHECK(nrows == (p.cu_seqlens.present() ? nrows : batch), op, "rows must equal the batch without cu_seqlens");
  if (p.cu_seqlens.present()) {
    SSM_CHECK(batch == 1, op, "cu_seqlens needs batch 1, got ", batch);
    const int32_t* cu = static_cast<const int32_t*>(p.cu_seqlens.data);
    const int64_t st = p.cu_seqlens.stride[0];
    SSM_CHECK(cu[0] == 0 && cu[nrows * st] == seqlen, op, "cu_seqlens must run from 0 to ", seqlen);
    for (int64_t i = 0; i < nrows; ++i)
      SSM_CHECK(cu[i * st] <= cu[(i + 1) * st], op, "cu_seqlens must be nondecreasing");
  }
  return p;
}

}  // namespace

void bind_selective_scan(nb::module_& m) {
  m.def("selective_scan_fwd",
        [](int dtype, int64_t batch, int64_t dim, int64_t seqlen, int64_t dstate, int64_t ngroups, int64_t nslices,
           const Ref& u, const Ref& delta, const Ref& A, const Ref& B, const Ref& C, const OptRef& D,
           const OptRef& z, const OptRef& dt_bias, const OptRef& initial_state, const OptRef& seq_idx,
           const OptRef& cu_seqlens, int64_t nrows, const Ref& out, const OptRef& last_state, bool softplus,
           int nthreads) {
          const char* op = "selective_scan_fwd";
          SelectiveScanParams p = scan_params(op, dtype, batch, dim, seqlen, dstate, ngroups, nslices, u, delta, A,
                                              B, C, D, z, dt_bias, initial_state, seq_idx, cu_seqlens, nrows,
                                              softplus);
          p.out = tensor_arg(op, "out", out, 3);
          p.last_state = tensor_arg(op, "last_state", last_state, 3);
          nb::gil_scoped_release release;
          SSM_CPU_CALL(selective_scan_fwd, p, nthreads);
        });
  m.def("selective_scan_bwd",
        [](int dtype, int64_t batch, int64_t dim, int64_t seqlen, int64_t dstate, int64_t ngroups, int64_t nslices,
           const Ref& u, const Ref& delta, const Ref& A, const Ref& B, const Ref& C, const OptRef& D,
           const OptRef& z, const OptRef& dt_bias, const OptRef& initial_state, const OptRef& seq_idx,
           const OptRef& cu_seqlens, int64_t nrows, const Ref& dout, const OptRef& dlast, const Ref& du,
           const Ref& ddelta, const Ref& dA, const Ref& dB, const Ref& dC, const OptRef& dD, const OptRef& dz,
           const OptRef& ddt_bias, const OptRef& dinitial_state, const OptRef& /*chunk_states: CUDA only*/,
           bool softplus, int nthreads) {
          const char* op = "selective_scan_bwd";
          SelectiveScanParams p = scan_params(op, dtype, batch, dim, seqlen, dstate, ngroups, nslices, u, delta, A,
                                              B, C, D, z, dt_bias, initial_state, seq_idx, cu_seqlens, nrows,
                                              softplus);
          p.dout = tensor_arg(op, "dout", dout, 3);
          p.dlast = tensor_arg(op, "dlast", dlast, 3);
          p.du = tensor_arg(op, "du", du, 3);
          p.ddelta = tensor_arg(op, "ddelta", ddelta, 3);
          p.dA = tensor_arg(op, "dA", dA, 3);
          p.dB = tensor_arg(op, "dB", dB, p.B_var ? 4 : 3);
          p.dC = tensor_arg(op, "dC", dC, p.C_var ? 4 : 3);
          p.dD = tensor_arg(op, "dD", dD, 2);
          p.dz = tensor_arg(op, "dz", dz, 3);
          p.ddt_bias = tensor_arg(op, "ddt_bias", ddt_bias, 2);
          p.dinitial_state = tensor_arg(op, "dinitial_state", dinitial_state, 3);
          SSM_CHECK(p.dz.present() == p.z.present() && p.dD.present() == p.D.present() &&
                        p.ddt_bias.present() == p.dt_bias.present() &&
                        p.dinitial_state.present() == p.initial_state.present(),
                    op, "each optional input needs its gradient buffer");
          nb::gil_scoped_release release;
          SSM_CPU_CALL(selective_scan_bwd, p, nthreads);
        });
}

}  // namespace ssm::bind
