// Mamba-2 SSD chunked scan backward on the GPU: the workspace layout and the helpers shared by the
// backward kernels (ssd_bwd_state.cuh, ssd_bwd_chunk.cuh, ssd_bwd_finalize.cuh). The forward's
// chunk_state and state_passing kernels recompute the chunk records and the entering states H_in
// first (their part of the workspace, ssd::Layout); then, per (b, h), with dY the scan's output
// gradient (after the gate), L_ts = exp(cs_t - cs_s) on same-run pairs s <= t of a chunk,
// e0_t = exp(cs_t) on the chunk's first run and e_s = exp(cs_last - cs_s) on its last run:
//
//   0. cb          C B^T per (chunk, group) on the causal tile pairs, and its transpose  (tensor cores)
//   1. dstate      dS_c = dY^T diag(e0) C per chunk                              (tensor cores)
//   2. state_bwd   reverse over chunks: dH_out(c) = dH_in(c + 1) where the sequence continues,
//                  dH_in(c) = dS_c + exp(cs_last) dH_out(c) (no reset in c); dinitial = dH_in(0)
//   3. dc          per target tile: dC = (dY X^T ∘ L ∘ Δ_s) B + diag(e0) dY H_in, the decay pairs
//                  P_ts = (C B^T)(dY X^T) L Δ_s summed over s < k <= t, and Y_t = dC_state,t · C_t
//   4. dx          per source tile: o = (C B^T ∘ L)^T dY + diag(e) B dH_out^T, dx = Δ o + D dY,
//                  dB = Δ ((dY X^T ∘ L)^T C + diag(e) X dH_out), x·o and X_s = Δ e dB_state,s · B_s
//   5. finalize    per (b, h): d(Δ_k A) = pairs + Σ_{t>=k} Y_t + Σ_{s<k} X_s + exp(cs_last)<H_in, dH_out>,
//                  ddt through clamp / softplus, dA
// dB and dC come out per head set (float32, (B, L, hsets, N): per head, or summed over sets of a group's heads), dA per chunk (float32, (B * H, nchunks)) and dD
// per source tile (float32, (B * nchunks * Q / 64, H, P)); the caller sums each group's heads and the partials.
// No atomics: every sum has one fixed order.
#pragma once
#include <cstdlib>
#include <cstring>

#include "cuda/ssd_common.cuh"
#include "cuda/ssd_mma.cuh"
#include "cuda/ssd_tile.cuh"

namespace ssm::cuda::ssd {

// Backward workspace after the forward's (floats, each region at a multiple of 64):
//   dstate[(((b * nchunks + c) * H + h) * P + p) * N + n]   dS_c (float32), then at each bwd_state block's first
//                                                            element the block's partial of <H_in(c), dH_out(c)>
//   dhout [(((b * nchunks + c) * H + h) * P + p) * N + n]   dH_out(c) in the element type T
//   dhlo  [same]                                             split (register kernels): dH_out(c) - dhout in T
//   hinlo [same]                                             split: H_in(c) - hin in T (the state pass writes it)
//   pairs [(((b * H + h) * nchunks + c) * nq + i) * Q + k]   decay-pair sums of target tile i
//   ysum  [(((b * H + h) * nchunks + c) * ny + slice) * Q + k]  Y_t, partial per N slice
//   xsum, xo [(((b * H + h) * nchunks + c) * nx + slice) * Q + k]  X_s, x_s·o_s, partial per P slice
//   cb    [((b * nchunks + c) * G + g) * Q * Q + t * Q + s]   C_t · B_s on the tile pairs s-tile <= t-tile,
//   cbt   [((b * nchunks + c) * G + g) * Q * Q + s * Q + t]   and its transpose (shared by a group's heads)
//   tok   [((b * H + h) * nchunks + c) * 3 * kMaxChunk + f * kMaxChunk + k]  ChunkTokens' dt, cs, run (register kernels)
// Its size comes to Python from ssd_chunk_scan_bwd_workspace_floats (the binding).
struct BwdLayout {
  int64_t dstate = 0, dhout = 0, pairs = 0, ysum = 0, xsum = 0, xo = 0, cb = 0, cbt = 0, floats = 0;
  int64_t ny = 1, nx = 1;  // slices of the Y and X / x·o partial sums (64-wide N and P slices, register kernels)
  int64_t hsets = 0;       // dB / dC partial sums per batch row: one per head, or per set of a group's heads
  int64_t tok = 0;         // register kernels: each chunk's token data (Δ, cs, run; 3 x kMaxChunk floats per
                           // (b, h, chunk)) written by dstate and copied by the tile kernels
  int64_t dhlo = 0, hinlo = 0;  // split: dH_out's and H_in's residues in T (0: the states rounded once)
};

// The states (float32) enter the tile kernels' state products as two element-type operands hi + lo, i.e. not
// rounded (the float32 reference keeps them float32): dH_out in dx / db, H_in in dc and in bwd_state's sum of the
// pairs through the chunk. SSM_SSD_BWD_SPLIT=0 rounds them once.
inline bool bwd_split_enabled() { return ssd_switch("SSM_SSD_BWD_SPLIT", true); }

// Half / bfloat16 run steps 1, 3 and 4 on register fragments (ssd_bwd_mma.cuh); float32 keeps the FMA tiles
// of ssd_bwd_chunk.cuh / ssd_bwd_state.cuh (tensor-core float32 would miss the float32 tolerance).
inline bool bwd_mma_enabled(const SsdParams& p) { return p.dtype != DType::f32; }

// db with both 64-wide N slices of 64 < N <= 128 in one block (bwd_db2_mma_kernel: X dY^T and its mask once for
// both; half / bfloat16), else a block per slice (bwd_db_mma_kernel).
inline bool bwd_db2(const SsdParams& p) { return p.dtype != DType::f32 && p.dstate > 64 && p.dstate <= 128; }

// The register kernels sum dB / dC over sets of a group's heads: the fewest sets per group that still give
// the dc / db grids about 1024 blocks. SSM_SSD_BWD_HEADSUM=0: one set per head; =group: one set per group;
// =k: k sets per group (k divides the group's heads).
inline int64_t bwd_head_sets(const SsdParams& p, const Layout& w) {
  const char* e = std::getenv("SSM_SSD_BWD_HEADSUM");
  if ((e != nullptr && std::strcmp(e, "0") == 0) || !bwd_mma_enabled(p) || p.ngroups < 1) return p.nheads;
  const int64_t hg = p.nheads / p.ngroups;
  if (e != nullptr && std::atoi(e) > 0 && hg % std::atoi(e) == 0) return p.ngroups * std::atoi(e);
  // (the grid of db per set: dc's has one block per 64-wide N slice, db's too unless db2 takes both in one)
  const int64_t slices = bwd_db2(p) ? 1 : (p.dstate + kTile - 1) / kTile;
  const int64_t blocks = p.batch * w.nchunks * (p.chunk / kTile) * slices * p.ngroups;
  const int64_t want = e != nullptr && std::strcmp(e, "group") == 0 ? 0 : 1024;
  int64_t split = 1;
  while (split < hg && blocks * split < want) {
    ++split;
    while (hg % split) ++split;
  }
  return p.ngroups * split;
}

inline BwdLayout bwd_layout(const SsdParams& p, const Layout& w) {
  BwdLayout v;
  const int64_t bhc = p.batch * p.nheads * w.nchunks, nq = p.chunk / kTile;
  if (bwd_mma_enabled(p)) v.ny = (p.dstate + kTile - 1) / kTile, v.nx = (p.headdim + kTile - 1) / kTile;
  v.hsets = bwd_head_sets(p, w);
  v.dstate = w.floats;
  const int64_t spn = bhc * p.headdim * p.dstate;
  v.dhout = v.dstate + round64(spn);
  v.pairs = v.dhout + round64((spn * (p.dtype == DType::f32 ? 4 : 2) + 3) / 4);
  v.ysum = v.pairs + round64(bhc * nq * p.chunk);
  v.xsum = v.ysum + round64(bhc * v.ny * p.chunk);
  v.xo = v.xsum + round64(bhc * v.nx * p.chunk);
  const int64_t qq = p.batch * w.nchunks * p.ngroups * p.chunk * p.chunk;
  v.cb = v.xo + round64(bhc * v.nx * p.chunk);
  v.cbt = v.cb + round64(qq);
  v.floats = v.cbt + round64(qq);
  if (bwd_mma_enabled(p)) {
    v.tok = v.floats;
    v.floats = v.tok + round64(bhc * 3 * kMaxChunk);
    if (bwd_split_enabled()) {
      v.dhlo = v.floats;
      v.hinlo = v.dhlo + round64((spn * 2 + 3) / 4);
      v.floats = v.hinlo + round64((spn * 2 + 3) / 4);
    }
  }
  return v;
}

template <typename T> void launch_bwd_dstate(const SsdParams& p, const Layout& w, const BwdLayout& v, cudaStream_t s);
template <typename T> void launch_bwd_state(const SsdParams& p, const Layout& w, const BwdLayout& v, cudaStream_t s);
template <typename T> void launch_bwd_cb(const SsdParams& p, const Layout& w, const BwdLayout& v, cudaStream_t s);
template <typename T> void launch_bwd_dc(const SsdParams& p, const Layout& w, const BwdLayout& v, cudaStream_t s);
template <typename T> void launch_bwd_dx(const SsdParams& p, const Layout& w, const BwdLayout& v, cudaStream_t s);
template <typename T> void launch_bwd_dstate_mma(const SsdParams& p, const Layout& w, const BwdLayout& v, cudaStream_t s);
template <typename T> void launch_bwd_tiles_mma(const SsdParams& p, const Layout& w, const BwdLayout& v, cudaStream_t s);
template <typename T> void launch_bwd_finalize(const SsdParams& p, const Layout& w, const BwdLayout& v,
                                               cudaStream_t s);

constexpr int kLdT = kTile + 8;   // row stride of 64-wide element tiles
constexpr int kLdS = kTile + 4;   // row stride of 64-wide float staging tiles

// acc += A · Bm^T with A, Bm 64-row (row stride rs, column stride cs) global matrices of K columns,
// streamed through the 64 x 64 shared tiles sa, sb. Block-wide (syncs).
template <typename T>
__device__ void gemm_nt(Tile<T>& acc, T* sa, T* sb, const T* a, int64_t ars, int64_t acs, int arows, const T* b,
                        int64_t brs, int64_t bcs, int brows, int K) {
  for (int k0 = 0; k0 < K; k0 += kTile) {
    load_tile<T>(sa, kLdT, kTile, a + k0 * acs, ars, acs, arows, K - k0);
    load_tile<T>(sb, kLdT, kTile, b + k0 * bcs, brs, bcs, brows, K - k0);
    __syncthreads();
    acc.template mma<true, false>(sa, kLdT, sb, kLdT, kTile);
    __syncthreads();
  }
}

// Sum over the 64 columns of row r of a kLdS float tile weighted by w(r, j), per row, by warps
// (warp w: rows 16w..16w+15, two columns per lane); out[r] += the sum. Block-wide (no sync).
template <typename F>
__device__ void row_sums(float* out, F w) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int rr = 0; rr < 16; ++rr) {
    const int r = warp * 16 + rr;
    float s = w(r, 2 * lane) + w(r, 2 * lane + 1);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) out[r] += s;
  }
}

}  // namespace ssm::cuda::ssd
