// Param structs of the Mamba-1 selective scan, forward and backward, from their binding arguments,
// with the checks that hold on every backend. nslices only shapes the CPU work split.
#pragma once
#include "common/bind/ref.h"
#include "common/params.h"

namespace ssm::bind {

// Sizes of both directions.
inline SelectiveScanParams scan_sizes(const char* op, int dtype, int64_t batch, int64_t dim, int64_t seqlen,
                                      int64_t dstate, int64_t ngroups, int64_t nslices, int64_t nrows, bool softplus) {
  SSM_CHECK(batch >= 0 && dim >= 0 && seqlen >= 0 && nrows >= 0 && dstate >= 1, op, "bad sizes");
  SSM_CHECK(ngroups >= 1 && dim % ngroups == 0, op, "groups must divide the channels, got ", ngroups);
  SSM_CHECK(nslices >= 1, op, "nslices must be >= 1, got ", nslices);
  SelectiveScanParams p;
  p.batch = batch, p.dim = dim, p.seqlen = seqlen, p.dstate = dstate, p.ngroups = ngroups;
  p.nslices = nslices, p.nrows = nrows, p.softplus = softplus;
  p.dtype = dtype_arg(op, dtype);
  return p;
}

// The inputs of both directions (B and C are (B, G, N, L) when given as 4-d, else (D, N)).
inline void scan_inputs(const char* op, SelectiveScanParams& p, const Ref& u, const Ref& delta, const Ref& A,
                        const Ref& B, const Ref& C, const OptRef& D, const OptRef& z, const OptRef& dt_bias,
                        const OptRef& initial_state, const OptRef& seq_idx, const OptRef& cu_seqlens) {
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
  SSM_CHECK(p.cu_seqlens.present() || p.nrows == p.batch, op, "rows must equal the batch without cu_seqlens");
  SSM_CHECK(!p.cu_seqlens.present() || p.batch == 1, op, "cu_seqlens needs batch 1, got ", p.batch);
}

inline SelectiveScanParams selective_scan_fwd_params(
    int dtype, int64_t batch, int64_t dim, int64_t seqlen, int64_t dstate, int64_t ngroups, int64_t nslices,
    const Ref& u, const Ref& delta, const Ref& A, const Ref& B, const Ref& C, const OptRef& D, const OptRef& z,
    const OptRef& dt_bias, const OptRef& initial_state, const OptRef& seq_idx, const OptRef& cu_seqlens,
    int64_t nrows, const Ref& out, const OptRef& last_state, const OptRef& chunk_states, bool softplus) {
  const char* op = "selective_scan_fwd";
  SelectiveScanParams p = scan_sizes(op, dtype, batch, dim, seqlen, dstate, ngroups, nslices, nrows, softplus);
  scan_inputs(op, p, u, delta, A, B, C, D, z, dt_bias, initial_state, seq_idx, cu_seqlens);
  p.out = tensor_arg(op, "out", out, 3);
  p.last_state = tensor_arg(op, "last_state", last_state, 3);
  p.chunk_states = tensor_arg(op, "chunk_states", chunk_states, 4);  // CUDA: also write the backward's checkpoints
  return p;
}

// Gradient buffers: dA (B, D, N), dD and ddt_bias (B, D) per batch; dB / dC per slice when variable.
inline void scan_grads(const char* op, SelectiveScanParams& p, const Ref& du, const Ref& ddelta, const Ref& dA,
                       const Ref& dB, const Ref& dC, const OptRef& dD, const OptRef& dz, const OptRef& ddt_bias,
                       const OptRef& dinitial_state) {
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
}

inline SelectiveScanParams selective_scan_bwd_params(
    int dtype, int64_t batch, int64_t dim, int64_t seqlen, int64_t dstate, int64_t ngroups, int64_t nslices,
    const Ref& u, const Ref& delta, const Ref& A, const Ref& B, const Ref& C, const OptRef& D, const OptRef& z,
    const OptRef& dt_bias, const OptRef& initial_state, const OptRef& seq_idx, const OptRef& cu_seqlens,
    int64_t nrows, const Ref& dout, const OptRef& dlast, const Ref& du, const Ref& ddelta, const Ref& dA,
    const Ref& dB, const Ref& dC, const OptRef& dD, const OptRef& dz, const OptRef& ddt_bias,
    const OptRef& dinitial_state, const OptRef& chunk_states, bool chunk_states_filled, bool softplus) {
  const char* op = "selective_scan_bwd";
  SelectiveScanParams p = scan_sizes(op, dtype, batch, dim, seqlen, dstate, ngroups, nslices, nrows, softplus);
  scan_inputs(op, p, u, delta, A, B, C, D, z, dt_bias, initial_state, seq_idx, cu_seqlens);
  p.dout = tensor_arg(op, "dout", dout, 3);
  p.dlast = tensor_arg(op, "dlast", dlast, 3);
  scan_grads(op, p, du, ddelta, dA, dB, dC, dD, dz, ddt_bias, dinitial_state);
  p.chunk_states = tensor_arg(op, "chunk_states", chunk_states, 4);  // used by the CUDA backward only
  p.chunk_states_filled = chunk_states_filled && p.chunk_states.present();
  return p;
}

}  // namespace ssm::bind
