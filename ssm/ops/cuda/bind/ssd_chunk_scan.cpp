#include "cuda/bind/common.h"
#include "cuda/kernels.h"

namespace ssm::bind::cuda {
namespace {

// batch, seqlen, nheads, headdim, ngroups, dstate, nseq, workspace rows, chunk[, flags: 1 = inject_unit]
using Sizes = std::vector<int64_t>;

SsdParams ssd_inputs(const char* op, int dtype, const Sizes& sizes, const Ref& x, const Ref& dt, const Ref& A,
                     const Ref& B, const Ref& C, const OptRef& D, const OptRef& z, const OptRef& dt_bias,
                     const OptRef& initial_states, const OptRef& seq_idx, const OptRef& cu_seqlens,
                     const Ref& workspace, int64_t workspace_floats, bool dt_softplus, float dt_lo, float dt_hi) {
  SSM_CHECK(sizes.size() == 9 || sizes.size() == 10, op, "expected 9 or 10 sizes (the CPU's 8, the chunk, flags)");
  for (int64_t s : sizes) SSM_CHECK(s >= 0, op, "negative size");
  SsdParams p;
  p.batch = sizes[0], p.seqlen = sizes[1], p.nheads = sizes[2], p.headdim = sizes[3];
  p.ngroups = sizes[4], p.dstate = sizes[5], p.nseq = sizes[6], p.workspace_rows = sizes[7], p.chunk = sizes[8];
  p.inject_unit = sizes.size() == 10 && (sizes[9] & 1);
  SSM_CHECK(p.ngroups > 0 && p.nheads % p.ngroups == 0, op, "ngroups must divide nheads");
  p.dtype = dtype_arg(op, dtype);
  p.x = tensor_arg(op, "x", x, 4), p.dt = tensor_arg(op, "dt", dt, 3), p.A = tensor_arg(op, "A", A, 1);
  p.B = tensor_arg(op, "B", B, 4), p.C = tensor_arg(op, "C", C, 4);
  p.D = tensor_arg(op, "D", D, 2), p.z = tensor_arg(op, "z", z, 4), p.dt_bias = tensor_arg(op, "dt_bias", dt_bias, 1);
  p.initial_states = tensor_arg(op, "initial_states", initial_states, 4);
  p.seq_idx = tensor_arg(op, "seq_idx", seq_idx, 2);
  p.cu_seqlens = tensor_arg(op, "cu_seqlens", cu_seqlens, 1);
  p.workspace = tensor_arg(op, "workspace", workspace, 2);
  p.workspace_floats = workspace_floats;
  p.dt_softplus = dt_softplus, p.dt_lo = dt_lo, p.dt_hi = dt_hi;
  return p;
}

}  // namespace

void bind_ssd_chunk_scan(nb::module_& m) {
  // Same name and signature as the CPU binding; sizes carry the chunk as a ninth entry and the
  // workspace is one row laid out as ssm/ops/cuda/ssd_chunk_scan.cuh documents.
  m.def("ssd_chunk_scan_fwd",
        [](int dtype, const Sizes& sizes, const Ref& x, const Ref& dt, const Ref& A, const Ref& B, const Ref& C,
           const OptRef& D, const OptRef& z, const OptRef& dt_bias, const OptRef& initial_states,
           const OptRef& seq_idx, const OptRef& cu_seqlens, const Ref& out, const OptRef& final_states,
           const OptRef& varlen_states, const Ref& workspace, int64_t workspace_floats, bool dt_softplus,
           float dt_lo, float dt_hi, int64_t stream) {
          const char* op = "ssd_chunk_scan_fwd: ";
          SsdParams p = ssd_inputs(op, dtype, sizes, x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx,
                                   cu_seqlens, workspace, workspace_floats, dt_softplus, dt_lo, dt_hi);
          p.out = tensor_arg(op, "out", out, 4);
          p.final_states = tensor_arg(op, "final_states", final_states, 4);
          p.varlen_states = tensor_arg(op, "varlen_states", varlen_states, 4);
          nb::gil_scoped_release release;
          ssm::cuda::ssd_chunk_scan_fwd(p, stream_arg(stream));
        });
}

}  // namespace ssm::bind::cuda
