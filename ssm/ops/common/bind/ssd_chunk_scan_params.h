// Param structs of the Mamba-2 SSD chunked scan, forward and backward, from their binding
// arguments, with the checks that hold on every backend.
#pragma once
#include "common/bind/ref.h"
#include "common/params.h"

namespace ssm::bind {

// batch, seqlen, nheads, headdim, ngroups, dstate, nseq, workspace rows[, chunk (CUDA)[, flags: 1 = inject_unit]]
using SsdSizes = std::vector<int64_t>;

// The inputs shared by the forward and the backward.
inline SsdParams ssd_inputs(const char* op, int dtype, const SsdSizes& sizes, const Ref& x, const Ref& dt,
                            const Ref& A, const Ref& B, const Ref& C, const OptRef& D, const OptRef& z,
                            const OptRef& dt_bias, const OptRef& initial_states, const OptRef& seq_idx,
                            const OptRef& cu_seqlens, const Ref& workspace, int64_t workspace_floats,
                            bool dt_softplus, float dt_lo, float dt_hi) {
  SSM_CHECK(sizes.size() >= 8 && sizes.size() <= 10, op, "expected 8 to 10 sizes, got ", sizes.size());
  SsdParams p;
  p.batch = sizes[0], p.seqlen = sizes[1], p.nheads = sizes[2], p.headdim = sizes[3];
  p.ngroups = sizes[4], p.dstate = sizes[5], p.nseq = sizes[6], p.workspace_rows = sizes[7];
  p.chunk = sizes.size() > 8 ? sizes[8] : 0;
  p.inject_unit = sizes.size() > 9 && (sizes[9] & 1);
  SSM_CHECK(p.workspace_rows >= 1, op, "expected at least one workspace row");
  for (int64_t s : sizes) SSM_CHECK(s >= 0, op, "negative size");
  SSM_CHECK(p.ngroups > 0 && p.nheads % p.ngroups == 0, op, "ngroups must divide nheads");
  p.dtype = dtype_arg(op, dtype);
  p.x = tensor_arg(op, "x", x, 4), p.dt = tensor_arg(op, "dt", dt, 3), p.A = tensor_arg(op, "A", A, 1);
  p.B = tensor_arg(op, "B", B, 4), p.C = tensor_arg(op, "C", C, 4);
  p.D = tensor_arg(op, "D", D, 2), p.z = tensor_arg(op, "z", z, 4), p.dt_bias = tensor_arg(op, "dt_bias", dt_bias, 1);
  p.initial_states = tensor_arg(op, "initial_states", initial_states, 4);
  p.seq_idx = tensor_arg(op, "seq_idx", seq_idx, 2);
  p.cu_seqlens = tensor_arg(op, "cu_seqlens", cu_seqlens, 1);
  SSM_CHECK(!p.cu_seqlens.present() || p.batch == 1, op, "cu_seqlens needs batch 1");
  p.workspace = tensor_arg(op, "workspace", workspace, 2);
  p.workspace_floats = workspace_floats;
  p.dt_softplus = dt_softplus, p.dt_lo = dt_lo, p.dt_hi = dt_hi;
  return p;
}

inline SsdParams ssd_chunk_scan_fwd_params(int dtype, const SsdSizes& sizes, const Ref& x, const Ref& dt,
                                           const Ref& A, const Ref& B, const Ref& C, const OptRef& D,
                                           const OptRef& z, const OptRef& dt_bias, const OptRef& initial_states,
                                           const OptRef& seq_idx, const OptRef& cu_seqlens, const Ref& out,
                                           const OptRef& final_states, const OptRef& varlen_states,
                                           const Ref& workspace, int64_t workspace_floats, bool dt_softplus,
                                           float dt_lo, float dt_hi) {
  const char* op = "ssd_chunk_scan_fwd";
  SsdParams p = ssd_inputs(op, dtype, sizes, x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, cu_seqlens,
                           workspace, workspace_floats, dt_softplus, dt_lo, dt_hi);
  p.out = tensor_arg(op, "out", out, 4);
  p.final_states = tensor_arg(op, "final_states", final_states, 4);
  p.varlen_states = tensor_arg(op, "varlen_states", varlen_states, 4);
  SSM_CHECK(!p.varlen_states.present() || p.cu_seqlens.present(), op, "varlen_states need cu_seqlens");
  return p;
}

// Outputs: dx, dz (dtype); ddt (B, L, H), dA (B, H), dD (B, H, P), dinitial in float32; dB/dC
// (workspace rows * B, L, G, N) float32 zero-filled, accumulated per thread; dD contiguous along P.
inline void ssd_grads(const char* op, SsdParams& p, const Ref& dx, const OptRef& dz, const Ref& ddt, const Ref& dA,
                      const Ref& dB, const Ref& dC, const OptRef& dD, const OptRef& dinitial) {
  p.dx = tensor_arg(op, "dx", dx, 4), p.dz = tensor_arg(op, "dz", dz, 4);
  SSM_CHECK(p.dz.present() == p.z.present(), op, "dz must be given exactly when z is");
  p.ddt = tensor_arg(op, "ddt", ddt, 3), p.dA = tensor_arg(op, "dA", dA, 2);
  p.dB = tensor_arg(op, "dB", dB, 4), p.dC = tensor_arg(op, "dC", dC, 4);
  p.dD = tensor_arg(op, "dD", dD, 3);
  SSM_CHECK(!p.dD.present() || (p.D.present() && p.dD.stride[2] == 1), op, "dD needs D and a contiguous P");
  p.dinitial = tensor_arg(op, "dinitial", dinitial, 4);
}

inline SsdParams ssd_chunk_scan_bwd_params(int dtype, const SsdSizes& sizes, const Ref& x, const Ref& dt,
                                           const Ref& A, const Ref& B, const Ref& C, const OptRef& D,
                                           const OptRef& z, const OptRef& dt_bias, const OptRef& initial_states,
                                           const OptRef& seq_idx, const OptRef& cu_seqlens, const Ref& dout,
                                           const OptRef& dfinal, const OptRef& dvarlen, const Ref& dx,
                                           const OptRef& dz, const Ref& ddt, const Ref& dA, const Ref& dB,
                                           const Ref& dC, const OptRef& dD, const OptRef& dinitial,
                                           const Ref& workspace, int64_t workspace_floats, bool dt_softplus,
                                           float dt_lo, float dt_hi) {
  const char* op = "ssd_chunk_scan_bwd";
  SsdParams p = ssd_inputs(op, dtype, sizes, x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, cu_seqlens,
                           workspace, workspace_floats, dt_softplus, dt_lo, dt_hi);
  p.dout = tensor_arg(op, "dout", dout, 4);
  p.dfinal = tensor_arg(op, "dfinal", dfinal, 4);
  p.dvarlen = tensor_arg(op, "dvarlen", dvarlen, 4);
  SSM_CHECK(!p.dvarlen.present() || p.cu_seqlens.present(), op, "dvarlen needs cu_seqlens");
  ssd_grads(op, p, dx, dz, ddt, dA, dB, dC, dD, dinitial);
  return p;
}

}  // namespace ssm::bind
