// SSD backward steps 3 and 4 for half / bfloat16 on register fragments (mma.sync m16n8k16, ldmatrix),
// FlashAttention-2 style: each block owns one 64-token tile of a chunk and one 64-wide slice of the
// output's columns, warp w its rows 16w..16w+15, and walks the tile's partner tiles with their inputs
// double-buffered by cp.async; the masked products stay in registers (accumulators repacked as A
// fragments), nothing goes through shared memory as float.
//   dc (target tile t, N slice):  dC = diag(e0) dY H_in + Σ_s (dY X_s^T ∘ L ∘ Δ_s) B_s; Y_t partials;
//                                 each head's decay pairs (C B^T)(dY X^T) L Δ_s summed by one of the slices.
//   dx (source tile s, P slice):  o = diag(e) B dH_out^T + Σ_t (C B^T ∘ L)^T_st dY_t; dx = Δ o + D dY,
//                                 x·o and X_s partials, the tile's dD share.
//   db (source tile s, N slice):  dB = Δ (diag(e) X dH_out + Σ_t (X dY_t^T ∘ L^T) C_t).
//   dstate (chunk, P x N tile):   dS_c = dY^T diag(e0) C (the chunk-state product; ssd_bwd_dstate.cuh).
// Row / column partial sums per slice go to the workspace (BwdLayout: ny, nx slices), summed by finalize.
// float32 keeps the FMA tiles of ssd_bwd_chunk.cuh.
#pragma once
#include "cuda/ssd_bwd_chunk.cuh"
#include "cuda/ssd_chunk_output_mma.cuh"
#include "cuda/ssd_chunk_state_mma.cuh"
#include "cuda/ssd_tile_issue.cuh"

namespace ssm::cuda::ssd {

// Shared-memory carve-up of the three kernels (tokens first).
struct MmaSmem {
  unsigned char* at;
  template <typename V> __device__ V* take(int64_t elems) {
    V* r = reinterpret_cast<V*>(at);
    at += align128(elems * int64_t(sizeof(V)));
    return r;
  }
};

// What the tile kernels keep of a chunk's token data (the first three arrays of ChunkTokens, 3 KB of shared
// memory instead of 5 KB): as dstate writes it to the workspace (v.tok) and chunk_tokens copies it back.
struct TileTokens {
  float dt[kMaxChunk];
  float cs[kMaxChunk];
  int run[kMaxChunk];
};

// acc (16 x 64 per warp) += A (rows r0.., stored [row][k], K = Kp) · Bt^T (Bt stored [n][k]); only the
// n-tile pairs jp_min..jp_max.
template <typename T>
__device__ __forceinline__ void mma_nk_range(float (&acc)[8][4], const T* A, const T* Bt, int ld, int r0, int Kp,
                                             int jp_min, int jp_max) {
  for (int k0 = 0; k0 < Kp; k0 += 16) {
    unsigned a[4];
    load_a(a, A, ld, r0, k0);
#pragma unroll
    for (int jp = 0; jp < 4; ++jp) {
      if (jp < jp_min || jp > jp_max) continue;
      unsigned bb[4];
      load_b_nk(bb, Bt, ld, jp * 16, k0);
      mma16816<T>(acc[2 * jp], a, bb[0], bb[1]);
      mma16816<T>(acc[2 * jp + 1], a, bb[2], bb[3]);
    }
  }
}

// acc (16 x 64) += A (rows r0.., stored [row][k], k from ka0, 64 wide) · Bm (stored [k][n], ld ldb, rows from 0).
template <typename T>
__device__ __forceinline__ void mma_kn64(float (&acc)[8][4], const T* A, int lda, int ka0, const T* Bm, int ldb,
                                         int r0, int kmax) {
  for (int k0 = 0; k0 < kmax; k0 += 16) {
    unsigned a[4];
    load_a(a, A, lda, r0, ka0 + k0);
#pragma unroll
    for (int jp = 0; jp < 4; ++jp) {
      unsigned bb[4];
      load_b_kn(bb, Bm, ldb, jp * 16, k0);
      mma16816<T>(acc[2 * jp], a, bb[0], bb[1]);
      mma16816<T>(acc[2 * jp + 1], a, bb[2], bb[3]);
    }
  }
}

// acc[sl] += S · X[:, 64 sl .. 64 sl + 63] for kS 64-wide column slices of X (stored [k][n], ld): S's 16 x 64
// accumulators packed as A fragments once for all slices; key steps kk_min..kk_max only.
template <typename T, int kS>
__device__ __forceinline__ void mma_sx_slices(float (&acc)[kS][8][4], const float (&s)[8][4], const T* X, int ld,
                                              int kk_min, int kk_max) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    if (kk < kk_min || kk > kk_max) continue;
    const unsigned a[4] = {pack2<T>(s[2 * kk][0], s[2 * kk][1]), pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                           pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                           pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
    for (int jp = 0; jp < 4; ++jp)
#pragma unroll
      for (int sl = 0; sl < kS; ++sl) {
        unsigned bb[4];
        load_b_kn(bb, X + sl * kTile, ld, jp * 16, kk * 16);
        mma16816<T>(acc[sl][2 * jp], a, bb[0], bb[1]);
        mma16816<T>(acc[sl][2 * jp + 1], a, bb[2], bb[3]);
      }
  }
}

// The decay mask of one tile pair in the accumulator layout: rows are the thread's tokens row[0], row[1],
// columns the tile col0.. ; with kRowsTarget rows are targets t and columns sources s, else the reverse.
// v(s, t) *= exp(cs_t - cs_s) (· Δ_s with kDelta) where s <= t < nv in the same run, else 0. Off the diagonal
// exp(cs_t - cs_s) = exp(cs_t - ref) · exp(ref - cs_s) about the source tile's last token (both <= 1 for a
// decaying A): 18 exponentials per thread instead of 32.
template <bool kRowsTarget, bool kDelta>
__device__ __forceinline__ void tile_decay(float (&v)[8][4], const TileTokens& tok, const int (&row)[2], int col0,
                                           int nv, bool diag) {
  const int c2 = 2 * int(threadIdx.x & 3);
  const int src0 = kRowsTarget ? col0 : row[0] / kTile * kTile;
  const float ref = tok.cs[src0 + kTile - 1];
  float cs_r[2], f_r[2];
  int run_r[2];
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    cs_r[hf] = tok.cs[row[hf]];
    run_r[hf] = kRowsTarget && row[hf] >= nv ? -1 : tok.run[row[hf]];
    f_r[hf] = diag ? 1.f : __expf(kRowsTarget ? cs_r[hf] - ref : ref - cs_r[hf]);
  }
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int col = col0 + j * 8 + c2 + e;
      const float cs_c = tok.cs[col];
      const int run_c = !kRowsTarget && col >= nv ? -1 : tok.run[col];
      const float w = kDelta && kRowsTarget ? tok.dt[col] : 1.f;
      const float f_c = diag ? w : w * __expf(kRowsTarget ? ref - cs_c : cs_c - ref);
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int sv = kRowsTarget ? col : row[hf], tv = kRowsTarget ? row[hf] : col;
        const bool keep = run_c == run_r[hf] && (!diag || sv <= tv);
        const float d = diag ? __expf(kRowsTarget ? cs_r[hf] - cs_c : cs_c - cs_r[hf]) * f_c : f_r[hf] * f_c;
        v[j][2 * hf + e] = keep ? v[j][2 * hf + e] * d : 0.f;
      }
    }
}

// s (16 x 64 per warp) = A (rows r0.., stored [row][k], K = Kp) · Bt^T, n-tile pairs jp_min..jp_max (the others 0),
// times the tile pair's decay mask (tile_decay).
template <typename T, bool kRowsTarget, bool kDelta>
__device__ __forceinline__ void masked_tile(float (&s)[8][4], const T* A, const T* Bt, int ld, int r0, int Kp,
                                            int jp_min, int jp_max, const TileTokens& tok, const int (&row)[2],
                                            int col0, int nv, bool diag) {
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) s[j][e] = 0.f;
  mma_nk_range<T>(s, A, Bt, ld, r0, Kp, jp_min, jp_max);
  tile_decay<kRowsTarget, kDelta>(s, tok, row, col0, nv, diag);
}

// The chunk's token data (Δ, cs, run) for row b, head h, chunk c,
// copied asynchronously from the workspace copy that dstate wrote (v.tok); the caller commits and waits.
__device__ __forceinline__ void chunk_tokens(const SsdParams& p, const Layout& w, const BwdLayout& v, int64_t b, int h,
                                             int64_t c, TileTokens& tok) {
  const float* src = ptr<float>(p.workspace) + v.tok + ((b * p.nheads + h) * w.nchunks + c) * 3 * kMaxChunk;
  for (int e = threadIdx.x; e < 3 * kMaxChunk / 4; e += kThreads) cp_async16(tok.dt + 4 * e, src + 4 * e, true);
}

// The block of the 1-d dc / db grids: tile rank slowest (all of the grid's blocks of one rank before the next,
// so that the longest run first), then row, head set, chunk, 64-wide slice.
struct TileBlock {
  int tile, slice, set;
  int64_t c, b;
};

__device__ __forceinline__ TileBlock tile_block(const SsdParams& p, const Layout& w, const BwdLayout& v, int nslices) {
  const int64_t rest = w.nchunks * nslices * v.hsets * p.batch;
  int64_t r = blockIdx.x;
  TileBlock t;
  t.tile = int(r / rest);
  r %= rest;
  t.slice = int(r % nslices);
  r /= nslices;
  t.c = r % w.nchunks;
  r /= w.nchunks;
  t.set = int(r % v.hsets);
  t.b = r / v.hsets;
  return t;
}

// Brings the 128-byte line at p into L1 (a hint: the load that follows waits on L1, not on L2).
__device__ __forceinline__ void prefetch_l1(const void* p) { asm volatile("prefetch.global.L1 [%0];\n" ::"l"(p)); }

// Sum over the quad (the four lanes sharing an accumulator row).
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// Decay pairs of the diagonal tile pair t0 = s0.. (rows of pr: the thread's trow; pr = C B^T ∘ the masked dY X^T,
// overwritten): out[k] = Σ_{t in the tile, t >= k} (carry_t + Σ_{s0 <= s < k} pr_ts) for k = s0.. s0 + 63 by row
// prefixes. This part: each warp's column sums to red (4 x 64 floats); after a barrier pair_sums_flush adds the
// warps' and stores out.
__device__ __forceinline__ void pair_diag_warp(float (&pr)[8][4], const float (&carry)[2], float* red) {
  const int lane = int(threadIdx.x & 31), warp = int(threadIdx.x >> 5), c4 = lane & 3, g8 = lane >> 2;
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    float run = carry[hf];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const float a0 = pr[j][2 * hf], a1 = pr[j][2 * hf + 1], sum = a0 + a1;
      float x = sum, y = __shfl_up_sync(0xffffffffu, x, 1, 4);
      if (c4 >= 1) x += y;
      y = __shfl_up_sync(0xffffffffu, x, 2, 4);
      if (c4 >= 2) x += y;
      float ex = __shfl_up_sync(0xffffffffu, x, 1, 4);  // Σ of the lanes before in the quad
      if (c4 == 0) ex = 0.f;
      const float tot = __shfl_sync(0xffffffffu, x, 3, 4);
      pr[j][2 * hf] = run + ex;
      pr[j][2 * hf + 1] = run + ex + a0;
      run += tot;
    }
  }
  const int rl = warp * 16 + g8;  // the thread's first row within the tile
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int k = j * 8 + 2 * c4 + e;
      float col = (rl >= k ? pr[j][e] : 0.f) + (rl + 8 >= k ? pr[j][2 + e] : 0.f);
      col += __shfl_xor_sync(0xffffffffu, col, 4);
      col += __shfl_xor_sync(0xffffffffu, col, 8);
      col += __shfl_xor_sync(0xffffffffu, col, 16);
      if (g8 == 0) red[warp * kTile + k] = col;
    }
}

// out[k] = the four warps' column sums in red (pair_diag_warp's, after a barrier), k < 64.
__device__ __forceinline__ void pair_sums_flush(const float* red, float* out) {
  if (threadIdx.x < kTile)
    out[threadIdx.x] = red[threadIdx.x] + red[kTile + threadIdx.x] + red[2 * kTile + threadIdx.x] +
                       red[3 * kTile + threadIdx.x];
}


// s *= the precomputed C B^T of the thread's rows t[0], t[1] and key tile s0.. (in place).
__device__ __forceinline__ void mul_cb(float (&s)[8][4], const float* cb, int Q, const int (&t)[2], int s0) {
  const int c2 = 2 * int(threadIdx.x & 3);
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const float2 v = *reinterpret_cast<const float2*>(cb + t[hf] * Q + s0 + 8 * j + c2);
      s[j][2 * hf] *= v.x;
      s[j][2 * hf + 1] *= v.y;
    }
}

// The entering state's part of one N slice of dC (its pieces summed in st): st *= e0 per row, acc += st, the slice's
// Y partials (st · C_t, C_t in ct with row stride ld) to ysum[t]; st cleared.
template <typename T>
__device__ __forceinline__ void dc_state_slice(float (&acc)[8][4], float (&st)[8][4], const float (&e0)[2],
                                               const T* ct, int ld, int r0, float* ysum, const int (&trow)[2],
                                               int nv) {
  const int g8 = int(threadIdx.x & 31) >> 2, c2 = 2 * int(threadIdx.x & 3);
  float ypart[2];
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const int rl = r0 + g8 + 8 * hf;
    float y = 0.f;
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        st[j][2 * hf + e] *= e0[hf];
        y += st[j][2 * hf + e] * to_float(ct[rl * ld + j * 8 + c2 + e]);
        acc[j][2 * hf + e] += st[j][2 * hf + e];
        st[j][2 * hf + e] = 0.f;
      }
    ypart[hf] = quad_sum(y);
  }
  if ((threadIdx.x & 3) == 0)
    for (int hf = 0; hf < 2; ++hf)
      if (trow[hf] < nv) ysum[trow[hf]] = ypart[hf];
}

// The leaving state's part of dB: acc += lv · st per row (lv: Δ e of the thread's rows).
__device__ __forceinline__ void add_rows_scaled(float (&acc)[8][4], const float (&lv)[2], const float (&st)[8][4]) {
#pragma unroll
  for (int jj = 0; jj < 8; ++jj)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[jj][e] += lv[e >> 1] * st[jj][e];
}

// One source step of dc (target rows trow, source tile s0..; n-tile pairs 0..lim, lim < 3 on the diagonal):
// s = dY_t X_s^T ∘ L ∘ Δ_s, acc[sl] += s B_s[:, 64 sl..] (B_s with row stride ldb); s stays for the decay pairs.
template <typename T, int kS>
__device__ __forceinline__ void dc_source_step(float (&acc)[kS][8][4], float (&s)[8][4], const T* dys, const T* xb,
                                               int ldp, int Pp, const T* bb, int ldb, const TileTokens& tok,
                                               const int (&trow)[2], int s0, int nv, int lim, bool diag) {
  const int r0 = int(threadIdx.x >> 5) * 16;
  masked_tile<T, true, true>(s, dys, xb, ldp, r0, Pp, 0, lim, tok, trow, s0, nv, diag);  // dY_t X_s^T ∘ L ∘ Δ_s
  mma_sx_slices<T, kS>(acc, s, bb, ldb, 0, lim);
}

// One target step of db (source rows srow, target tile t0..; n-tile pairs lo.., lo > 0 on the diagonal):
// acc[sl] += Δ_s (X_s dY_t^T ∘ L^T) C_t[:, 64 sl..] (C_t with row stride ldc).
template <typename T, int kS>
__device__ __forceinline__ void db_target_step(float (&acc)[kS][8][4], const T* xs, const T* dyb, int ldp, int Pp,
                                               const T* cb, int ldc, const TileTokens& tok, const int (&srow)[2],
                                               const float (&dts)[2], int t0, int nv, int lo, bool diag) {
  const int r0 = int(threadIdx.x >> 5) * 16;
  float st[8][4];
  masked_tile<T, false, false>(st, xs, dyb, ldp, r0, Pp, lo, 3, tok, srow, t0, nv, diag);  // X_s dY_t^T ∘ L^T
#pragma unroll
  for (int jj = 0; jj < 8; ++jj)
#pragma unroll
    for (int e = 0; e < 4; ++e) st[jj][e] *= dts[e >> 1];
  mma_sx_slices<T, kS>(acc, st, cb, ldc, lo, 3);
}

// Rows rows[0], rows[1] of dB or dC (float32 (B, L, sets, N); chunk tokens from c0, those >= nv skipped) at head set
// `set`: columns n0 + 64 sl + .. from acc[sl], those < N.
template <int kS>
__device__ __forceinline__ void store_rows(const TensorArg& o, int64_t b, int64_t c0, int set, const int (&rows)[2],
                                           int nv, int n0, int N, const float (&acc)[kS][8][4]) {
  const int c2 = 2 * int(threadIdx.x & 3);
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    if (rows[hf] >= nv) continue;
    float* row = ptr<float>(o) + b * o.stride[0] + (c0 + rows[hf]) * o.stride[1] + set * o.stride[2];
#pragma unroll
    for (int sl = 0; sl < kS; ++sl)
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int n = n0 + sl * kTile + j * 8 + c2 + e;
          if (n < N) row[n * o.stride[3]] = acc[sl][j][2 * hf + e];
        }
  }
}

// The top of a double-buffered partner-tile step: the step's tile in shared memory for every warp, the next tile
// issued (more) into the buffers the previous step read. kOneBarrier (dc, dx): wait, barrier, issue (the barrier also
// guards the reuse); else (db) issue, wait for all but it, barrier, and the caller syncs after the step. Session 10
// rounds 1 / 1b, H200 B8: dc2 537-540 us against 549-552 with two (three) barriers, dx 340-344 against 350-353, db2
// 341-342 against 331.
template <bool kOneBarrier, typename Issue>
__device__ __forceinline__ void tile_step_begin(bool more, Issue&& issue) {
  if (kOneBarrier) {
    cp_async_wait<0>();
    __syncthreads();
    if (more) issue();
    cp_async_commit();
  } else {
    if (more) issue();
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
  }
}

// st += A[:, p0..] · H's piece for the state's 64-row pieces pc = 0.. npieces - 1 (p0 = pc % npc · 64: H's rows, then
// (split) its residue's), one at a time through hb: piece 0 issued before, one more copy group in flight after it;
// issue_piece(pc) copies piece pc. Block-wide (syncs).
template <typename T, typename Issue>
__device__ __forceinline__ void state_pieces_serial(float (&st)[8][4], const T* A, int lda, int Pp, const T* hb,
                                                    int npc, int npieces, Issue&& issue_piece) {
  const int r0 = int(threadIdx.x >> 5) * 16;
  for (int pc = 0; pc < npieces; ++pc) {
    const int p0 = pc % npc * kTile;
    if (pc > 0) {
      issue_piece(pc);
      cp_async_commit();
      cp_async_wait<0>();
    } else {
      cp_async_wait<1>();
    }
    __syncthreads();
    mma_kn64<T>(st, A, lda, p0, hb, kLd, r0, min(kTile, Pp - p0));
    __syncthreads();
  }
}

// The state's 64 x 64 pieces q = 0.. npieces - 1 (npieces >= 2) through two buffers (piece q in buffer q & 1):
// body(q) takes piece q after its copy and a barrier. Before the call: piece 0 issued, one copy group (the first
// partner tile) committed after it, piece 1 committed last. kOneBarrier (dc2): one barrier per piece, piece q + 1
// issued after it (from q = 1) into the buffer piece q - 1 used; else (db2) two, piece q + 2 issued after the second.
template <bool kOneBarrier, typename Issue, typename Body>
__device__ __forceinline__ void state_pieces_pipelined(int npieces, Issue&& issue_piece, Body&& body) {
  for (int q = 0; q < npieces; ++q) {
    if (q == 0) cp_async_wait<2>();
    else if (kOneBarrier || q + 1 == npieces) cp_async_wait<0>();
    else cp_async_wait<1>();
    __syncthreads();
    if (kOneBarrier && q > 0 && q + 1 < npieces) {
      issue_piece(q + 1);
      cp_async_commit();
    }
    body(q);
    if (!kOneBarrier) {
      __syncthreads();
      if (q + 2 < npieces) {
        issue_piece(q + 2);
        cp_async_commit();
      }
    }
  }
}

// One step of a reduce-scatter of v over the lanes that differ in `mask`: the lane keeps the upper half of v[0, 2W)
// (mask bit set) or the lower, adds its partner's, and stores it in v[0, W).
template <int W>
__device__ __forceinline__ void reduce_scatter_step(float (&v)[16], int mask) {
  const bool up = (threadIdx.x & mask) != 0;
#pragma unroll
  for (int i = 0; i < W; ++i) {
    const float send = up ? v[i] : v[W + i], keep = up ? v[W + i] : v[i];
    v[i] = keep + __shfl_xor_sync(0xffffffffu, send, mask);
  }
}

// The decay pairs of an off-diagonal tile pair (every target row after every source column k): out[k] = Σ_t carry_t +
// Σ_{s0 <= s < k} Σ_t pr_ts, the columns summed first. This part: the warp's column sums of pr to red[warp][k] (a
// reduce-scatter over the 8 row groups, 14 shuffles), carry_t += the row's sum; pair_cols_flush after a barrier.
__device__ __forceinline__ void pair_cols_warp(const float (&pr)[8][4], float (&carry)[2], float* red) {
  const int lane = int(threadIdx.x & 31), warp = int(threadIdx.x >> 5), g8 = lane >> 2;
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    float r = 0.f;
#pragma unroll
    for (int j = 0; j < 8; ++j) r += pr[j][2 * hf] + pr[j][2 * hf + 1];
    r += __shfl_xor_sync(0xffffffffu, r, 1);
    carry[hf] += r + __shfl_xor_sync(0xffffffffu, r, 2);
  }
  float v[16];  // the thread's two rows summed, column j * 8 + 2 (lane % 4) + e at v[2 j + e]
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int e = 0; e < 2; ++e) v[2 * j + e] = pr[j][e] + pr[j][2 + e];
  reduce_scatter_step<8>(v, 4);
  reduce_scatter_step<4>(v, 8);
  reduce_scatter_step<2>(v, 16);
  const int j = 4 * (g8 & 1) + 2 * ((g8 >> 1) & 1) + (g8 >> 2);  // the lane's column pair after the scatter
  *reinterpret_cast<float2*>(red + warp * kTile + j * 8 + 2 * (lane & 3)) = make_float2(v[0], v[1]);
}

// out[k] = ctot + Σ_{s < k} (the four warps' column sums in red), k < 64; ctot += their total (the next off-diagonal
// pair's Σ_t carry_t). Warp 0, two columns per lane (ctot lives there), after pair_cols_warp and a barrier.
__device__ __forceinline__ void pair_cols_flush(const float* red, float* out, float& ctot) {
  if (threadIdx.x >= 32) return;
  const int lane = int(threadIdx.x);
  float2 col = make_float2(0.f, 0.f);
#pragma unroll
  for (int w = 0; w < 4; ++w) {
    const float2 r = *reinterpret_cast<const float2*>(red + w * kTile + 2 * lane);
    col.x += r.x;
    col.y += r.y;
  }
  float x = col.x + col.y;  // inclusive scan over the lanes
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const float y = __shfl_up_sync(0xffffffffu, x, o);
    if (lane >= o) x += y;
  }
  float ex = __shfl_up_sync(0xffffffffu, x, 1);
  if (lane == 0) ex = 0.f;
  const float tot = __shfl_sync(0xffffffffu, x, 31);
  *reinterpret_cast<float2*>(out + 2 * lane) = make_float2(ctot + ex, ctot + ex + col.x);
  ctot += tot;
}

// The source tiles s0 = 0, 64, .. t0 of dc's target tile i, double-buffered (tile j in xb0 / xb1 and bb0 / bb1 by
// j & 1, issue_next(j) copies tile j + 1): acc[sl] += (dY_t X_s^T ∘ L ∘ Δ_s) B_s[:, 64 sl..] per step, and with
// pairs_here the decay pairs to pairs[k] (off-diagonal steps by column sums, the diagonal by row prefixes), each
// step's warp sums (red: 2 x 4 x 64 floats) added after the next barrier. One barrier per step and one at the end,
// after which the tiles and the tokens may be overwritten. Block-wide.
template <typename T, int kS, typename Issue>
__device__ __forceinline__ void dc_source_loop(float (&acc)[kS][8][4], int i, const T* dys, const T* xb0, const T* xb1,
                                               const T* bb0, const T* bb1, int ldp, int Pp, int ldb,
                                               const TileTokens& tok, const int (&trow)[2], int nv, const float* cbg,
                                               int Q, bool pairs_here, float* red, float* pairs, Issue&& issue_next) {
  const int warp = int(threadIdx.x >> 5);
  float carry[2] = {0.f, 0.f}, ctot = 0.f;  // Σ_s pr_ts of the steps so far per row t; ctot: over all t (warp 0)
  auto flush = [&](int j) {  // step j's decay pairs
    const float* red_j = red + (j & 1) * 4 * kTile;
    if (j < i) pair_cols_flush(red_j, pairs + j * kTile, ctot);
    else pair_sums_flush(red_j, pairs + j * kTile);
  };
  // the lane's line of the C B^T tile: its quad's rows trow[0] / trow[1], the first or second 32 columns
  const int64_t pf_row = int64_t(trow[0] + 8 * ((threadIdx.x >> 1) & 1)) * Q + (threadIdx.x & 1) * 32;
  for (int j = 0; j <= i; ++j) {
    const int s0 = j * kTile;
    if (pairs_here) prefetch_l1(cbg + pf_row + s0);  // the C B^T tile of this step into L1
    tile_step_begin<true>(j < i, [&] { issue_next(j); });
    if (pairs_here && j > 0) flush(j - 1);
    float s[8][4];
    dc_source_step<T, kS>(acc, s, dys, j & 1 ? xb1 : xb0, ldp, Pp, j & 1 ? bb1 : bb0, ldb, tok, trow, s0, nv,
                          j == i ? warp : 3, j == i);
    if (pairs_here) {  // the decay pairs' terms C B^T ∘ (the masked dY X^T)
      mul_cb(s, cbg, Q, trow, s0);
      float* red_j = red + (j & 1) * 4 * kTile;
      if (j < i) pair_cols_warp(s, carry, red_j);
      else pair_diag_warp(s, carry, red_j);
    }
  }
  __syncthreads();
  if (pairs_here) flush(i);
}

// The target tiles t0 = s0, s0 + 64, .. of db's source tile j (ni tiles in the chunk), double-buffered (tile i in dyb0
// / dyb1 and cb0 / cb1 by i & 1, issue_next(i) copies tile i + 1): acc[sl] += Δ_s (X_s dY_t^T ∘ L^T) C_t[:, 64 sl..].
// Each step ends with a barrier. Block-wide.
template <typename T, int kS, typename Issue>
__device__ __forceinline__ void db_target_loop(float (&acc)[kS][8][4], int j, int ni, const T* xs, const T* dyb0,
                                               const T* dyb1, const T* cb0, const T* cb1, int ldp, int Pp, int ldc,
                                               const TileTokens& tok, const int (&srow)[2], const float (&dts)[2],
                                               int nv, Issue&& issue_next) {
  const int warp = int(threadIdx.x >> 5);
  for (int i = j; i < ni; ++i) {
    tile_step_begin<false>(i + 1 < ni, [&] { issue_next(i); });
    db_target_step<T, kS>(acc, xs, i & 1 ? dyb1 : dyb0, ldp, Pp, i & 1 ? cb1 : cb0, ldc, tok, srow, dts, i * kTile,
                          nv, i == j ? warp : 0, i == j);
    __syncthreads();
  }
}

template <typename T>
size_t bwd_dc_mma_smem(int P) {
  const int ldp = round16(P) + 8;
  return align128(sizeof(TileTokens)) + 2 * align128(kTile * ldp * sizeof(T)) +
         align128(kTile * max(ldp, kLd) * sizeof(T)) + 2 * align128(kTile * kLd * sizeof(T)) +
         align128(8 * kTile * sizeof(float));
}

// Blocks per SM the tile kernels dc / db are built for (the register cap: 4 -> 128 registers, 3 -> 168): four when
// four fit the SM's 228 KB of shared memory (1 KB reserved per block; P 64: ~50 KB each), else three. (dx stays at
// three: 336 us with four against 321 with three on an H200, its 24 B of spills; session 9 again 364 against 349; dc,
// db 517 / 381 against 564 / 440.)
inline int bwd_tile_blocks(size_t smem) { return 4 * (smem + 1024) <= 228 * 1024 ? 4 : 3; }

// Per (target tile i, 64-wide N slice, head set): dC summed over the set's heads (one group), per head the Y
// partials and (slice (head - first head) mod slices) the decay-pair sums.
template <typename T, int kBlocks>
__global__ void __launch_bounds__(kThreads, kBlocks) bwd_dc_mma_kernel(SsdParams p, Layout w, BwdLayout v) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int P = int(p.headdim), N = int(p.dstate), Q = int(p.chunk), nq = Q / kTile, Pp = round16(P), ldp = Pp + 8;
  const int nns = (N + kTile - 1) / kTile;
  MmaSmem sm{smem};
  TileTokens& tok = *sm.take<TileTokens>(1);
  T* dys = sm.take<T>(kTile * ldp);
  T* xb0 = sm.take<T>(kTile * ldp);
  T* xb1 = sm.take<T>(kTile * max(ldp, kLd));
  T* bb0 = sm.take<T>(kTile * kLd);
  T* bb1 = sm.take<T>(kTile * kLd);
  T* hb = xb1;  // H_in pieces in the state's part, before the source loop's first copy into xb1
  float* red = sm.take<float>(8 * kTile);  // the decay pairs' warp sums of two steps
  const TileBlock tb = tile_block(p, w, v, nns);
  const int ns = tb.slice, i = nq - 1 - tb.tile, n0 = ns * kTile, t0 = i * kTile;  // the heaviest tiles first
  const int hs = int(p.nheads / v.hsets), set = tb.set, h0 = set * hs, g = h0 / int(p.nheads / p.ngroups);
  const int64_t c = tb.c, b = tb.b, c0 = c * Q, L = p.seqlen;
  if (c0 + t0 >= L) return;
  const int nv = int(min(int64_t(Q), L - c0));
  const TensorArg &X = p.x, &Bt = p.B, &Ct = p.C, &dY = p.dout;
  const T* bk = ptr<T>(Bt) + b * Bt.stride[0] + g * Bt.stride[2] + c0 * Bt.stride[1] + n0 * Bt.stride[3];
  const T* cq = ptr<T>(Ct) + b * Ct.stride[0] + g * Ct.stride[2] + (c0 + t0) * Ct.stride[1] + n0 * Ct.stride[3];
  const int warp = int(threadIdx.x >> 5), r0 = warp * 16, g8 = int(threadIdx.x & 31) >> 2;
  const int trow[2] = {t0 + r0 + g8, t0 + r0 + g8 + 8};
  float* ws = ptr<float>(p.workspace);
  const float* cbg = ws + v.cb + ((b * w.nchunks + c) * p.ngroups + g) * int64_t(Q) * Q;
  float acc[1][8][4] = {};  // dC summed over the set's heads
  for (int h = h0; h < h0 + hs; ++h) {  // (the previous head's source loop ends with a barrier)
    const T* dyq = ptr<T>(dY) + b * dY.stride[0] + h * dY.stride[2] + (c0 + t0) * dY.stride[1];
    const T* xk = ptr<T>(X) + b * X.stride[0] + h * X.stride[2] + c0 * X.stride[1];
    const int64_t hoff = ((b * w.nchunks + c) * p.nheads + h) * int64_t(P) * N + n0;
    const T* hin = reinterpret_cast<const T*>(ws + w.hin) + hoff;
    const T* hinlo = reinterpret_cast<const T*>(ws + v.hinlo) + hoff;
    issue_tile<T>(dys, ldp, Pp, dyq, dY.stride[1], dY.stride[3], nv - t0, P);
    issue_tile<T>(bb1, kLd, kTile, cq, Ct.stride[1], Ct.stride[3], nv - t0, N - n0);  // C_t slice (for Y)
    chunk_tokens(p, w, v, b, h, c, tok);
    issue_tile<T>(hb, kLd, kTile, hin, N, 1, P, N - n0);  // hb[p][n], the first 64 rows of H_in
    cp_async_commit();
    // the first source tile, in flight during the state's part
    issue_tile<T>(xb0, ldp, Pp, xk, X.stride[1], X.stride[3], nv, P);
    issue_tile<T>(bb0, kLd, kTile, bk, Bt.stride[1], Bt.stride[3], nv, N - n0);
    cp_async_commit();
    {  // the entering state's part: diag(e0) dY H_in over 64-row pieces of H_in
      float st[8][4] = {};
      const int npc = (P + kTile - 1) / kTile;  // 64-row pieces of H_in, then (split) of its residue
      state_pieces_serial<T>(st, dys, ldp, Pp, hb, npc, (v.hinlo ? 2 : 1) * npc, [&](int pc) {
        const int p0 = pc % npc * kTile;
        issue_tile<T>(hb, kLd, kTile, (pc < npc ? hin : hinlo) + int64_t(p0) * N, N, 1, P - p0, N - n0);
      });
      float e0[2];
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) e0[hf] = trow[hf] < nv && tok.run[trow[hf]] == 0 ? __expf(tok.cs[trow[hf]]) : 0.f;
      const int64_t bhc = (b * p.nheads + h) * w.nchunks + c;
      dc_state_slice<T>(acc[0], st, e0, bb1, kLd, r0, ws + v.ysum + (bhc * v.ny + ns) * Q, trow, nv);
    }
    // the source tiles s <= t (step 0's barrier: C_t and the pieces read before bb1 and xb1 take a tile)
    float* pairs = ws + v.pairs + (((b * p.nheads + h) * w.nchunks + c) * nq + i) * Q;
    const bool pairs_here = (h - h0) % nns == ns;  // the N-slice blocks take turns with the heads' decay pairs
    dc_source_loop<T, 1>(acc, i, dys, xb0, xb1, bb0, bb1, ldp, Pp, kLd, tok, trow, nv, cbg, Q, pairs_here, red, pairs,
                         [&](int j) {
                           const int s1 = (j + 1) * kTile;
                           issue_tile<T>((j & 1 ? xb0 : xb1), ldp, Pp, xk + s1 * X.stride[1], X.stride[1],
                                         X.stride[3], nv - s1, P);
                           issue_tile<T>((j & 1 ? bb0 : bb1), kLd, kTile, bk + s1 * Bt.stride[1], Bt.stride[1],
                                         Bt.stride[3], nv - s1, N - n0);
                         });
  }
  store_rows<1>(p.dC, b, c0, set, trow, nv, n0, N, acc);
}

constexpr int kLd2 = 2 * kTile + 8;  // row stride of 128-wide element tiles

// dc with both 64-wide N slices in one block (64 < N <= 128, P <= 64; half / bfloat16), else a block per slice:
// dY X_s^T, its decay mask, the X_s copies and the decay pairs once for the 128 columns of dC (session 9, H200, B8:
// 570 us against 589 with a block per slice, at three blocks per SM against four).
inline bool bwd_dc2(const SsdParams& p) {
  return p.dtype != DType::f32 && p.dstate > kTile && p.dstate <= 2 * kTile && p.headdim <= kTile;
}

template <typename T>
size_t bwd_dc2_mma_smem(int P) {
  const int ldp = round16(P) + 8;
  return align128(sizeof(TileTokens)) + 2 * align128(kTile * ldp * sizeof(T)) +
         align128(kTile * max(ldp, 2 * kLd) * sizeof(T)) + 2 * align128(kTile * kLd2 * sizeof(T)) +
         align128(8 * kTile * sizeof(float));
}

// Per (target tile i, head set): dC (both N slices) summed over the set's heads, per head the Y partials of both
// slices and the decay-pair sums (bwd_dc_mma_kernel's products for both slices at once).
template <typename T>
__global__ void __launch_bounds__(kThreads, 3) bwd_dc2_mma_kernel(SsdParams p, Layout w, BwdLayout v) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int P = int(p.headdim), N = int(p.dstate), Q = int(p.chunk), nq = Q / kTile, Pp = round16(P), ldp = Pp + 8;
  MmaSmem sm{smem};
  TileTokens& tok = *sm.take<TileTokens>(1);
  T* dys = sm.take<T>(kTile * ldp);
  T* xb0 = sm.take<T>(kTile * ldp);
  T* xb1 = sm.take<T>(kTile * max(ldp, 2 * kLd));
  T* bb0 = sm.take<T>(kTile * kLd2);  // B_s, 128 columns
  T* bb1 = sm.take<T>(kTile * kLd2);  // C_t (for Y) in the state's part, then B_s
  float* red = sm.take<float>(8 * kTile);  // the decay pairs' warp sums of two steps
  T* const hb0 = xb1;  // H_in pieces in the state's part, before the source loop's first copy into xb1
  T* const hb1 = xb1 + kTile * kLd;
  const TileBlock tb = tile_block(p, w, v, 1);
  const int i = nq - 1 - tb.tile, t0 = i * kTile;  // the heaviest tiles first
  const int hs = int(p.nheads / v.hsets), set = tb.set, h0 = set * hs, g = h0 / int(p.nheads / p.ngroups);
  const int64_t c = tb.c, b = tb.b, c0 = c * Q, L = p.seqlen;
  if (c0 + t0 >= L) return;
  const int nv = int(min(int64_t(Q), L - c0));
  const TensorArg &X = p.x, &Bt = p.B, &Ct = p.C, &dY = p.dout;
  const T* bk = ptr<T>(Bt) + b * Bt.stride[0] + g * Bt.stride[2] + c0 * Bt.stride[1];
  const T* cq = ptr<T>(Ct) + b * Ct.stride[0] + g * Ct.stride[2] + (c0 + t0) * Ct.stride[1];
  const int warp = int(threadIdx.x >> 5), r0 = warp * 16, g8 = int(threadIdx.x & 31) >> 2;
  const int trow[2] = {t0 + r0 + g8, t0 + r0 + g8 + 8};
  float* ws = ptr<float>(p.workspace);
  const float* cbg = ws + v.cb + ((b * w.nchunks + c) * p.ngroups + g) * int64_t(Q) * Q;
  const int npc = (P + kTile - 1) / kTile, nper = (v.hinlo ? 2 : 1) * npc, npieces = 2 * nper;
  float acc[2][8][4] = {};  // dC, columns 0..63 and 64..127, summed over the set's heads
  for (int h = h0; h < h0 + hs; ++h) {  // (the previous head's source loop ends with a barrier)
    const T* dyq = ptr<T>(dY) + b * dY.stride[0] + h * dY.stride[2] + (c0 + t0) * dY.stride[1];
    const T* xk = ptr<T>(X) + b * X.stride[0] + h * X.stride[2] + c0 * X.stride[1];
    const int64_t hoff = ((b * w.nchunks + c) * p.nheads + h) * int64_t(P) * N;
    const T* hin = reinterpret_cast<const T*>(ws + w.hin) + hoff;
    const T* hinlo = reinterpret_cast<const T*>(ws + v.hinlo) + hoff;
    // pieces q = (slice, then H_in's 64-row pieces, then (split) its residue's): 64 x 64 tiles hb[p][n] in hb0 / hb1
    auto piece = [&](int q) {
      const int pc = q % nper, p0 = pc % npc * kTile, n0 = q / nper * kTile;
      issue_rows_n<T>(q & 1 ? hb1 : hb0, kLd, kTile, (pc < npc ? hin : hinlo) + int64_t(p0) * N + n0, N, 1, P - p0,
                      N - n0);
    };
    issue_rows_n<T>(dys, ldp, Pp, dyq, dY.stride[1], dY.stride[3], nv - t0, P);
    issue_rows_n<T>(bb1, kLd2, 2 * kTile, cq, Ct.stride[1], Ct.stride[3], nv - t0, N);  // C_t (for Y)
    chunk_tokens(p, w, v, b, h, c, tok);
    piece(0);
    cp_async_commit();
    // the first source tile, in flight during the state's part
    issue_rows_n<T>(xb0, ldp, Pp, xk, X.stride[1], X.stride[3], nv, P);
    issue_rows_n<T>(bb0, kLd2, 2 * kTile, bk, Bt.stride[1], Bt.stride[3], nv, N);
    cp_async_commit();
    piece(1);  // (npieces >= 2)
    cp_async_commit();
    {  // the entering state's part: diag(e0) dY H_in per slice
      const int64_t bhc = (b * p.nheads + h) * w.nchunks + c;
      float* ysum = ws + v.ysum + bhc * v.ny * Q;
      float st[8][4] = {}, e0[2] = {0.f, 0.f};
      state_pieces_pipelined<true>(npieces, piece, [&](int q) {
        if (q == 0) {
#pragma unroll
          for (int hf = 0; hf < 2; ++hf)
            e0[hf] = trow[hf] < nv && tok.run[trow[hf]] == 0 ? __expf(tok.cs[trow[hf]]) : 0.f;
        }
        const int p0 = q % nper % npc * kTile;
        mma_kn64<T>(st, dys, ldp, p0, q & 1 ? hb1 : hb0, kLd, r0, min(kTile, Pp - p0));
        if (q == nper - 1) dc_state_slice<T>(acc[0], st, e0, bb1, kLd2, r0, ysum, trow, nv);
        else if (q == npieces - 1) dc_state_slice<T>(acc[1], st, e0, bb1 + kTile, kLd2, r0, ysum + Q, trow, nv);
      });
    }
    // the source tiles s <= t (step 0's barrier: C_t and the pieces read before bb1 and xb1 take a tile)
    float* pairs = ws + v.pairs + (((b * p.nheads + h) * w.nchunks + c) * nq + i) * Q;
    dc_source_loop<T, 2>(acc, i, dys, xb0, xb1, bb0, bb1, ldp, Pp, kLd2, tok, trow, nv, cbg, Q, true, red, pairs,
                         [&](int j) {
                           const int s1 = (j + 1) * kTile;
                           issue_rows_n<T>((j & 1 ? xb0 : xb1), ldp, Pp, xk + s1 * X.stride[1], X.stride[1],
                                           X.stride[3], nv - s1, P);
                           issue_rows_n<T>((j & 1 ? bb0 : bb1), kLd2, 2 * kTile, bk + s1 * Bt.stride[1],
                                           Bt.stride[1], Bt.stride[3], nv - s1, N);
                         });
  }
  store_rows<2>(p.dC, b, c0, set, trow, nv, 0, N, acc);
}

template <typename T>
size_t bwd_dx_mma_smem(int N) {
  const int ldn = round16(N) + 8;
  return align128(sizeof(TileTokens)) + 2 * align128(kTile * max(ldn, kLd) * sizeof(T)) +
         2 * align128(kTile * kLd * sizeof(T));
}

// Per (source tile j, 64-wide P slice, head): o, dx, the x·o and X_s partials, the dD share.
template <typename T, bool kSplit>
__global__ void __launch_bounds__(kThreads, 3) bwd_dx_mma_kernel(SsdParams p, Layout w, BwdLayout v) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int P = int(p.headdim), N = int(p.dstate), Q = int(p.chunk), nq = Q / kTile, Np = round16(N), ldn = Np + 8;
  const int npt = (P + kTile - 1) / kTile;
  MmaSmem sm{smem};
  TileTokens& tok = *sm.take<TileTokens>(1);
  T* bs = sm.take<T>(kTile * max(ldn, kLd));  // B_s, then the source tile's x (P slice)
  T* hb = sm.take<T>(kTile * max(ldn, kLd));  // dH_out (P slice), then the source tile's dY
  T* db0 = sm.take<T>(kTile * kLd);
  T* db1 = sm.take<T>(kTile * kLd);
  float* red = reinterpret_cast<float*>(db0);  // the dD column sums, after the target loop
  const int pt = int(blockIdx.x % npt), j = int(blockIdx.x / npt % nq), p0 = pt * kTile, s0 = j * kTile;
  const int h = blockIdx.y, g = h / int(p.nheads / p.ngroups);
  const int64_t c = blockIdx.x / (npt * nq), b = blockIdx.z, c0 = c * Q, L = p.seqlen;
  float* dD = has(p.dD) ? ptr<float>(p.dD) + ((b * w.nchunks + c) * nq + j) * p.dD.stride[0] + h * p.dD.stride[1]
                        : nullptr;
  if (c0 + s0 >= L) {  // this tile's share of dD is zero
    if (dD && threadIdx.x < kTile && p0 + int(threadIdx.x) < P) dD[p0 + threadIdx.x] = 0.f;
    return;
  }
  const int nv = int(min(int64_t(Q), L - c0)), ni = (nv + kTile - 1) / kTile;
  const TensorArg &X = p.x, &Bt = p.B, &dY = p.dout;
  const T* bsrc = ptr<T>(Bt) + b * Bt.stride[0] + g * Bt.stride[2] + (c0 + s0) * Bt.stride[1];
  const T* dyt = ptr<T>(dY) + b * dY.stride[0] + h * dY.stride[2] + c0 * dY.stride[1] + p0 * dY.stride[3];
  const int64_t hoff = ((b * w.nchunks + c) * p.nheads + h) * int64_t(P) * N + int64_t(p0) * N;
  const T* dHout = reinterpret_cast<const T*>(ptr<float>(p.workspace) + v.dhout) + hoff;
  issue_rows_n<T>(bs, ldn, Np, bsrc, Bt.stride[1], Bt.stride[3], nv - s0, N);
  issue_rows_n<T>(hb, ldn, Np, dHout, N, 1, P - p0, N);  // hb[p][n]
  chunk_tokens(p, w, v, b, h, c, tok);
  cp_async_commit();
  issue_rows_n<T>((j & 1 ? db1 : db0), kLd, kTile, dyt + s0 * dY.stride[1], dY.stride[1], dY.stride[3], nv - s0,
                  P - p0);
  cp_async_commit();
  cp_async_wait<1>();
  __syncthreads();
  const int warp = int(threadIdx.x >> 5), r0 = warp * 16, g8 = int(threadIdx.x & 31) >> 2;
  const int c2 = 2 * int(threadIdx.x & 3);
  const int srow[2] = {s0 + r0 + g8, s0 + r0 + g8 + 8};
  float ost[8][4] = {};
  mma_nk_range<T>(ost, bs, hb, ldn, r0, Np, 0, 3);  // B_s dH_out^T
  __syncthreads();  // bs, hb read: they take the source tile's x and dY for the epilogue
  if (kSplit) {  // + B_s dH_lo^T: dH_out not rounded
    const T* dHlo = reinterpret_cast<const T*>(ptr<float>(p.workspace) + v.dhlo) + hoff;
    issue_rows_n<T>(hb, ldn, Np, dHlo, N, 1, P - p0, N);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    mma_nk_range<T>(ost, bs, hb, ldn, r0, Np, 0, 3);
    __syncthreads();
  }
  const T* xsrc = ptr<T>(X) + b * X.stride[0] + h * X.stride[2] + (c0 + s0) * X.stride[1] + p0 * X.stride[3];
  issue_rows_n<T>(bs, kLd, kTile, xsrc, X.stride[1], X.stride[3], nv - s0, P - p0);
  issue_rows_n<T>(hb, kLd, kTile, dyt + s0 * dY.stride[1], dY.stride[1], dY.stride[3], nv - s0, P - p0);
  cp_async_commit();
  const float* cbt = ptr<float>(p.workspace) + v.cbt + ((b * w.nchunks + c) * p.ngroups + g) * int64_t(Q) * Q;
  float acc[1][8][4] = {};
  auto issue_next = [&](int i) {  // dY of target tile i + 1 into the buffer of tile i - 1
    const int t1 = (i + 1) * kTile;
    issue_rows_n<T>((i & 1 ? db0 : db1), kLd, kTile, dyt + t1 * dY.stride[1], dY.stride[1], dY.stride[3], nv - t1,
                    P - p0);
  };
  for (int i = j; i < ni; ++i) {
    const int t0 = i * kTile;
    float cv[8][4];
    load_cb(cv, cbt, Q, srow, t0, 3);  // C B^T transposed: rows s, columns t
    tile_step_begin<true>(i + 1 < ni, [&] { issue_next(i); });
    tile_decay<false, false>(cv, tok, srow, t0, nv, i == j);
    mma_sx_slices<T, 1>(acc, cv, (i & 1 ? db1 : db0), kLd, i == j ? warp : 0, 3);
  }
  // epilogue: o = acc + e_s ost; dx = Δ o + D dY; x·o, x·ost per row; dY·x per column
  float dcol[8][2] = {};
  const float* Dp = has(p.D) ? ptr<float>(p.D) + h * p.D.stride[0] : nullptr;
  const int64_t bhc = (b * p.nheads + h) * w.nchunks + c;
  float* ws = ptr<float>(p.workspace);
  const int64_t dxs = p.dx.stride[3];
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const int s = srow[hf], rl = r0 + g8 + 8 * hf;
    float xo = 0.f, xs = 0.f;
    const bool valid = s < nv;
    const float lv = leave_weight(tok, s, nv), dts = tok.dt[s];
    T* dxrow = ptr<T>(p.dx) + b * p.dx.stride[0] + (c0 + s) * p.dx.stride[1] + h * p.dx.stride[2];
#pragma unroll
    for (int jj = 0; jj < 8; ++jj) {
      const int q = jj * 8 + c2, pp = p0 + q;
      if (!valid || pp >= P) continue;
      float d[2] = {0.f, 0.f};
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        if (pp + e >= P) continue;
        const float o = acc[0][jj][2 * hf + e] + lv * ost[jj][2 * hf + e];
        const float xv = to_float(bs[rl * kLd + q + e]), dyv = to_float(hb[rl * kLd + q + e]);
        d[e] = dts * o;
        if (Dp) d[e] += Dp[(pp + e) * p.D.stride[1]] * dyv;
        xo += o * xv;
        xs += ost[jj][2 * hf + e] * xv;
        dcol[jj][e] += dyv * xv;
      }
      T* dst = dxrow + pp * dxs;
      if (pp + 1 < P && dxs == 1 && (reinterpret_cast<uintptr_t>(dst) & 3) == 0) {
        *reinterpret_cast<unsigned*>(dst) = pack2<T>(d[0], d[1]);  // the pair in one store
      } else {
        dst[0] = from_float<T>(d[0]);
        if (pp + 1 < P) dst[dxs] = from_float<T>(d[1]);
      }
    }
    xo = quad_sum(xo);
    xs = quad_sum(xs);
    if (valid && (threadIdx.x & 3) == 0) {
      ws[v.xo + (bhc * v.nx + pt) * Q + s] = xo;
      ws[v.xsum + (bhc * v.nx + pt) * Q + s] = dts * lv * xs;
    }
  }
  if (!dD) return;
  __syncthreads();  // red (db0) read by the last target step
#pragma unroll
  for (int jj = 0; jj < 8; ++jj)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      float col = dcol[jj][e];
      col += __shfl_xor_sync(0xffffffffu, col, 4);
      col += __shfl_xor_sync(0xffffffffu, col, 8);
      col += __shfl_xor_sync(0xffffffffu, col, 16);
      if (g8 == 0) red[warp * kTile + jj * 8 + c2 + e] = col;
    }
  __syncthreads();
  if (threadIdx.x < kTile && p0 + int(threadIdx.x) < P)
    dD[p0 + threadIdx.x] = red[threadIdx.x] + red[kTile + threadIdx.x] + red[2 * kTile + threadIdx.x] +
                           red[3 * kTile + threadIdx.x];
}

template <typename T>
size_t bwd_db_mma_smem(int P) {
  const int ldp = round16(P) + 8;
  return align128(sizeof(TileTokens)) + 3 * align128(kTile * ldp * sizeof(T)) + 2 * align128(kTile * kLd * sizeof(T));
}

// Per (source tile j, 64-wide N slice, head set): dB = Σ over the set's heads of
// Δ (diag(e) X dH_out + Σ_t (X dY_t^T ∘ L^T) C_t).
template <typename T, int kBlocks>
__global__ void __launch_bounds__(kThreads, kBlocks) bwd_db_mma_kernel(SsdParams p, Layout w, BwdLayout v) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int P = int(p.headdim), N = int(p.dstate), Q = int(p.chunk), Pp = round16(P), ldp = Pp + 8;
  const int nns = (N + kTile - 1) / kTile;
  MmaSmem sm{smem};
  TileTokens& tok = *sm.take<TileTokens>(1);
  T* xs = sm.take<T>(kTile * ldp);
  T* dyb0 = sm.take<T>(kTile * ldp);
  T* dyb1 = sm.take<T>(kTile * ldp);
  T* cb0 = sm.take<T>(kTile * kLd);
  T* cb1 = sm.take<T>(kTile * kLd);
  const TileBlock tb = tile_block(p, w, v, nns);
  const int ns = tb.slice, j = tb.tile, n0 = ns * kTile, s0 = j * kTile;  // the heaviest tiles first
  // dH_out pieces in the leaving state's part: the C buffer that the first target tile does not take (the
  // target loop's first copy into it comes after that part)
  T* hb = j & 1 ? cb0 : cb1;
  const int hs = int(p.nheads / v.hsets), set = tb.set, h0 = set * hs, g = h0 / int(p.nheads / p.ngroups);
  const int64_t c = tb.c, b = tb.b, c0 = c * Q, L = p.seqlen;
  if (c0 + s0 >= L) return;
  const int nv = int(min(int64_t(Q), L - c0)), ni = (nv + kTile - 1) / kTile;
  const TensorArg &X = p.x, &Ct = p.C, &dY = p.dout;
  const T* ct = ptr<T>(Ct) + b * Ct.stride[0] + g * Ct.stride[2] + c0 * Ct.stride[1] + n0 * Ct.stride[3];
  const int warp = int(threadIdx.x >> 5), r0 = warp * 16, g8 = int(threadIdx.x & 31) >> 2;
  const int srow[2] = {s0 + r0 + g8, s0 + r0 + g8 + 8};
  float acc[1][8][4] = {};  // dB summed over the set's heads (Δ applied per head)
  for (int h = h0; h < h0 + hs; ++h) {
    if (h > h0) __syncthreads();  // the previous head's tiles and tokens are read
    const T* xsrc = ptr<T>(X) + b * X.stride[0] + h * X.stride[2] + (c0 + s0) * X.stride[1];
    const T* dyt = ptr<T>(dY) + b * dY.stride[0] + h * dY.stride[2] + c0 * dY.stride[1];
    const int64_t hoff = ((b * w.nchunks + c) * p.nheads + h) * int64_t(P) * N + n0;
    const T* dHout = reinterpret_cast<const T*>(ptr<float>(p.workspace) + v.dhout) + hoff;
    const T* dHlo = reinterpret_cast<const T*>(ptr<float>(p.workspace) + v.dhlo) + hoff;
    issue_rows_n<T>(xs, ldp, Pp, xsrc, X.stride[1], X.stride[3], nv - s0, P);
    chunk_tokens(p, w, v, b, h, c, tok);
    issue_rows_n<T>(hb, kLd, kTile, dHout, N, 1, P, N - n0);  // hb[p][n], the first 64 rows of dH_out
    cp_async_commit();
    // the first target tile (the source tile itself), in flight during the state's part
    issue_rows_n<T>((j & 1 ? dyb1 : dyb0), ldp, Pp, dyt + s0 * dY.stride[1], dY.stride[1], dY.stride[3], nv - s0, P);
    issue_rows_n<T>((j & 1 ? cb1 : cb0), kLd, kTile, ct + s0 * Ct.stride[1], Ct.stride[1], Ct.stride[3], nv - s0,
                  N - n0);
    cp_async_commit();
    float dts[2];
    {  // the leaving state's part: diag(Δ e) X dH_out over 64-row pieces of dH_out
      float st[8][4] = {};
      const int npc = (P + kTile - 1) / kTile;  // 64-row pieces of dH_out, then (split) of its residue
      state_pieces_serial<T>(st, xs, ldp, Pp, hb, npc, (v.dhlo ? 2 : 1) * npc, [&](int pc) {
        const int p0 = pc % npc * kTile;
        issue_rows_n<T>(hb, kLd, kTile, (pc < npc ? dHout : dHlo) + int64_t(p0) * N, N, 1, P - p0, N - n0);
      });
      float lv[2];
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) dts[hf] = tok.dt[srow[hf]], lv[hf] = dts[hf] * leave_weight(tok, srow[hf], nv);
      add_rows_scaled(acc[0], lv, st);
    }
    db_target_loop<T, 1>(acc, j, ni, xs, dyb0, dyb1, cb0, cb1, ldp, Pp, kLd, tok, srow, dts, nv, [&](int i) {
      const int t1 = (i + 1) * kTile;
      issue_rows_n<T>((i & 1 ? dyb0 : dyb1), ldp, Pp, dyt + t1 * dY.stride[1], dY.stride[1], dY.stride[3], nv - t1, P);
      issue_rows_n<T>((i & 1 ? cb0 : cb1), kLd, kTile, ct + t1 * Ct.stride[1], Ct.stride[1], Ct.stride[3], nv - t1,
                      N - n0);
    });
  }
  store_rows<1>(p.dB, b, c0, set, srow, nv, n0, N, acc);
}

template <typename T>
size_t bwd_db2_mma_smem(int P) {
  const int ldp = round16(P) + 8;
  return align128(sizeof(TileTokens)) + align128(kTile * ldp * sizeof(T)) +
         2 * align128(kTile * max(ldp, kLd) * sizeof(T)) + 2 * align128(kTile * kLd2 * sizeof(T));
}

// db with both 64-wide N slices in one block (64 < N <= 128): per (source tile j, head set), X dY_t^T and its decay
// mask once for the 128 columns of dB (bwd_db_mma_kernel computes them once per slice). The leaving state's part
// per slice: pieces (dH_out's rows, its residue's) alternate between the free C and dY buffers
// (state_pieces_pipelined).
template <typename T>
__global__ void __launch_bounds__(kThreads, 3) bwd_db2_mma_kernel(SsdParams p, Layout w, BwdLayout v) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int P = int(p.headdim), N = int(p.dstate), Q = int(p.chunk), Pp = round16(P), ldp = Pp + 8;
  MmaSmem sm{smem};
  TileTokens& tok = *sm.take<TileTokens>(1);
  T* xs = sm.take<T>(kTile * ldp);
  T* dyb0 = sm.take<T>(kTile * max(ldp, kLd));
  T* dyb1 = sm.take<T>(kTile * max(ldp, kLd));
  T* cb0 = sm.take<T>(kTile * kLd2);  // C_t, 128 columns
  T* cb1 = sm.take<T>(kTile * kLd2);
  const TileBlock tb = tile_block(p, w, v, 1);
  const int j = tb.tile, s0 = j * kTile;  // the heaviest tiles first
  T* const hb0 = j & 1 ? cb0 : cb1;  // the buffers the first target tile does not take
  T* const hb1 = j & 1 ? dyb0 : dyb1;
  const int hs = int(p.nheads / v.hsets), set = tb.set, h0 = set * hs, g = h0 / int(p.nheads / p.ngroups);
  const int64_t c = tb.c, b = tb.b, c0 = c * Q, L = p.seqlen;
  if (c0 + s0 >= L) return;
  const int nv = int(min(int64_t(Q), L - c0)), ni = (nv + kTile - 1) / kTile;
  const TensorArg &X = p.x, &Ct = p.C, &dY = p.dout;
  const T* ct = ptr<T>(Ct) + b * Ct.stride[0] + g * Ct.stride[2] + c0 * Ct.stride[1];
  const int warp = int(threadIdx.x >> 5), r0 = warp * 16, g8 = int(threadIdx.x & 31) >> 2;
  const int srow[2] = {s0 + r0 + g8, s0 + r0 + g8 + 8};
  float acc[2][8][4] = {};  // dB, columns 0..63 and 64..127, summed over the set's heads
  for (int h = h0; h < h0 + hs; ++h) {
    if (h > h0) __syncthreads();  // the previous head's tiles and tokens are read
    const T* xsrc = ptr<T>(X) + b * X.stride[0] + h * X.stride[2] + (c0 + s0) * X.stride[1];
    const T* dyt = ptr<T>(dY) + b * dY.stride[0] + h * dY.stride[2] + c0 * dY.stride[1];
    const int64_t hoff = ((b * w.nchunks + c) * p.nheads + h) * int64_t(P) * N;
    const T* dHout = reinterpret_cast<const T*>(ptr<float>(p.workspace) + v.dhout) + hoff;
    const T* dHlo = reinterpret_cast<const T*>(ptr<float>(p.workspace) + v.dhlo) + hoff;
    issue_rows_n<T>(xs, ldp, Pp, xsrc, X.stride[1], X.stride[3], nv - s0, P);
    chunk_tokens(p, w, v, b, h, c, tok);
    // pieces q = (slice, then dH_out's 64-row pieces, then (split) its residue's): 64 x 64 tiles hb[p][n]
    const int npc = (P + kTile - 1) / kTile, nper = (v.dhlo ? 2 : 1) * npc;
    auto piece = [&](int q) {  // in hb0 / hb1
      const int pc = q % nper, p0 = pc % npc * kTile, n0 = q / nper * kTile;
      issue_rows_n<T>(q & 1 ? hb1 : hb0, kLd, kTile, (pc < npc ? dHout : dHlo) + int64_t(p0) * N + n0, N, 1, P - p0,
                      N - n0);
    };
    piece(0);
    cp_async_commit();
    // the first target tile (the source tile itself), in flight during the state's part
    issue_rows_n<T>((j & 1 ? dyb1 : dyb0), ldp, Pp, dyt + s0 * dY.stride[1], dY.stride[1], dY.stride[3], nv - s0,
                      P);
    issue_rows_n<T>((j & 1 ? cb1 : cb0), kLd2, 2 * kTile, ct + s0 * Ct.stride[1], Ct.stride[1], Ct.stride[3],
                      nv - s0, N);
    cp_async_commit();
    piece(1);  // (nper * 2 >= 2 pieces)
    cp_async_commit();
    float dts[2], lv[2];
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) dts[hf] = 0.f, lv[hf] = 0.f;
    state_pieces_pipelined<false>(2 * nper, piece, [&](int q) {  // the leaving state's part: diag(Δ e) X dH_out
      if (q == 0) {
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) dts[hf] = tok.dt[srow[hf]], lv[hf] = dts[hf] * leave_weight(tok, srow[hf], nv);
      }
      float st[8][4] = {};
      const int p0 = q % nper % npc * kTile;
      mma_kn64<T>(st, xs, ldp, p0, q & 1 ? hb1 : hb0, kLd, r0, min(kTile, Pp - p0));
      if (q < nper) add_rows_scaled(acc[0], lv, st);
      else add_rows_scaled(acc[1], lv, st);
    });
    db_target_loop<T, 2>(acc, j, ni, xs, dyb0, dyb1, cb0, cb1, ldp, Pp, kLd2, tok, srow, dts, nv, [&](int i) {
      const int t1 = (i + 1) * kTile;
      issue_rows_n<T>((i & 1 ? dyb0 : dyb1), ldp, Pp, dyt + t1 * dY.stride[1], dY.stride[1], dY.stride[3], nv - t1, P);
      issue_rows_n<T>((i & 1 ? cb0 : cb1), kLd2, 2 * kTile, ct + t1 * Ct.stride[1], Ct.stride[1], Ct.stride[3],
                      nv - t1, N);
    });
  }
  store_rows<2>(p.dB, b, c0, set, srow, nv, 0, N, acc);
}

// Steps 3 and 4 on register fragments (half / bfloat16).
template <typename T>
void launch_bwd_tiles_mma(const SsdParams& p, const Layout& w, const BwdLayout& v, cudaStream_t s) {
  const unsigned nq = unsigned(p.chunk / kTile), nc = unsigned(w.nchunks), H = unsigned(p.nheads);
  const unsigned nns = unsigned((p.dstate + kTile - 1) / kTile), npt = unsigned((p.headdim + kTile - 1) / kTile);
  const int P = int(p.headdim), N = int(p.dstate);
  const unsigned sets = unsigned(v.hsets), rows = sets * unsigned(p.batch);
  const unsigned tiles = nq * nc * nns * rows;  // 1-d: tile_block
  if (bwd_dc2(p))
    launch_bwd(bwd_dc2_mma_kernel<T>, dim3(nq * nc * rows), bwd_dc2_mma_smem<T>(P), s, p, w, v);
  else if (bwd_tile_blocks(bwd_dc_mma_smem<T>(P)) == 3)
    launch_bwd(bwd_dc_mma_kernel<T, 3>, dim3(tiles), bwd_dc_mma_smem<T>(P), s, p, w, v);
  else
    launch_bwd(bwd_dc_mma_kernel<T, 4>, dim3(tiles), bwd_dc_mma_smem<T>(P), s, p, w, v);
  const dim3 dx_grid(nc * nq * npt, H, unsigned(p.batch));
  if (v.dhlo) launch_bwd(bwd_dx_mma_kernel<T, true>, dx_grid, bwd_dx_mma_smem<T>(N), s, p, w, v);
  else launch_bwd(bwd_dx_mma_kernel<T, false>, dx_grid, bwd_dx_mma_smem<T>(N), s, p, w, v);
  if (bwd_db2(p))
    launch_bwd(bwd_db2_mma_kernel<T>, dim3(nq * nc * rows), bwd_db2_mma_smem<T>(P), s, p, w, v);
  else if (bwd_tile_blocks(bwd_db_mma_smem<T>(P)) == 3)
    launch_bwd(bwd_db_mma_kernel<T, 3>, dim3(tiles), bwd_db_mma_smem<T>(P), s, p, w, v);
  else
    launch_bwd(bwd_db_mma_kernel<T, 4>, dim3(tiles), bwd_db_mma_smem<T>(P), s, p, w, v);
}

}  // namespace ssm::cuda::ssd
