// Mamba-2 SSD chunked scan on the GPU: the kernel interface shared by the forward and the
// backward. Per (batch row b, head h), tokens are cut into chunks of Q tokens (p.chunk):
//
//   1. chunk_state   per (chunk, head, P x N tile): Δ = clamp(softplus?(dt + dt_bias)), the
//                    in-chunk inclusive cumsum cs of Δ·A, and the chunk's own state
//                    S_c = X_c^T · (Δ_t exp(cs_last - cs_t) B_t) over the chunk's last run of
//                    tokens (a run ends where seq_idx / the cu_seqlens sequence changes), on
//                    tensor cores; writes S_c and the chunk record.
//   2. state_passing per (head, P·N slice): H_in(c) = the state before the chunk's first token as
//                    that token's sequence sees it (the row's initial state, a sequence's initial
//                    state or zero where a sequence starts at the chunk start), H_out(c) =
//                    exp(cs_last)·H_in + S_c, or fresh(last run)·decay + S_c where a run starts
//                    inside the chunk; writes H_in (element type) and the final states.
//   3. varlen_states per (sequence, head): the state at each cu_seqlens sequence's last token =
//                    decayed entering state + the partial in-chunk sum (FMA; small).
//   4. chunk_scan    per (chunk, 64-token query tile, head, 64-wide P tile):
//                    Y = ((C B^T) ∘ decay mask ∘ Δ) X + diag(exp(cs)) C H_in^T + D x, then y·silu(z).
//
// Nothing here allocates: every buffer comes in SsdParams (the workspace is p.workspace, float32,
// p.workspace_floats long; layout below). No atomics: results are bitwise reproducible.
#pragma once
#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace ssm::cuda::ssd {

constexpr int kThreads = 128;  // every SSD kernel runs 4 warps per block
constexpr int kTile = 64;      // query / key / P / N tile edge
constexpr int kMaxChunk = 256, kMaxState = 256;
constexpr int kRecord = 8;     // floats per (b, h, chunk) record

// Chunk record fields (float slots; the int ones hold the int's bits).
enum Rec : int { kDecayAll = 0, kDecayLastRun = 1, kHasReset = 2, kContinues = 3, kSegFirst = 4, kSegLast = 5 };

// Workspace layout in floats (each region starts at a multiple of 64 floats):
//   record[((b * H + h) * nchunks + c) * kRecord + f]            chunk records (above)
//   states[(((b * nchunks + c) * H + h) * P + p) * N + n]        float32 S_c; with varlen states the
//                                                                 state pass overwrites it with H_in(c)
//   hin   [(((b * nchunks + c) * H + h) * P + p) * N + n]        H_in(c) in the element type T
//   cb    [(((b * nchunks + c) * G + g) * Q + t) * Q + s]        half / bfloat16 only: float32 C_t B_s^T
//                                                                 within each chunk (chunk output)
//   hinlo [as hin]                                               half / bfloat16 only: H_in(c) - hin in T
//                                                                 (the state pass, when the H_in split is on)
//   tok   [((b * H + h) * nchunks + c) * 3 * kMaxChunk + f * kMaxChunk + k]  half / bfloat16 only: the chunk's
//                                                                 Δ (f 0), cs (f 1) and chunk-state weights (f 2),
//                                                                 written by the tokens kernel (N <= 128)
// Mirrored by ssm/ops/ssd.py (_cuda_workspace_floats); the binding checks the size.
struct Layout {
  int64_t nchunks = 0, record = 0, states = 0, hin = 0, cb = 0, hinlo = 0, tok = 0, floats = 0;
  bool split = false;  // the state pass writes hinlo and the exact staged output reads it (the forward sets it)
  int64_t bwd_tok = 0;  // the backward's recompute: BwdLayout::tok, whose rows (Δ, cs, run) the tokens kernel writes too
};

__host__ __device__ inline int64_t round64(int64_t n) { return (n + 63) / 64 * 64; }

inline Layout layout(const SsdParams& p, int elem_bytes) {
  Layout w;
  w.nchunks = (p.seqlen + p.chunk - 1) / p.chunk;
  const int64_t bhc = p.batch * p.nheads * w.nchunks, spn = bhc * p.headdim * p.dstate;
  w.record = 0;
  w.states = round64(bhc * kRecord);
  w.hin = w.states + round64(spn);
  w.cb = w.hin + round64((spn * elem_bytes + 3) / 4);
  if (elem_bytes != 2) {
    w.floats = w.cb;
    return w;
  }
  w.hinlo = w.cb + round64(p.batch * w.nchunks * p.ngroups * p.chunk * p.chunk);
  w.tok = w.hinlo + round64((spn * 2 + 3) / 4);
  w.floats = w.tok + round64(bhc * 3 * kMaxChunk);
  return w;
}

// Launchers (ssd_chunk_state.cuh, ssd_state_passing.cuh, ssd_chunk_output_mma.cuh), one
// instantiation per element type; each checks nothing (ssd_chunk_scan_fwd.cu does).
template <typename T> void launch_chunk_state(const SsdParams& p, const Layout& w, cudaStream_t s);
template <typename T> void launch_state_passing(const SsdParams& p, const Layout& w, cudaStream_t s);
template <typename T> void launch_varlen_states(const SsdParams& p, const Layout& w, cudaStream_t s);
template <typename T> void launch_chunk_scan(const SsdParams& p, const Layout& w, cudaStream_t s);

}  // namespace ssm::cuda::ssd
