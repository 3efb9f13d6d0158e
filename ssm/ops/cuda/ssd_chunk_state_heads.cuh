// SSD step 1 for half / bfloat16 with N <= 128, several heads of one group per block: the chunk's B
// (every token, every n) stays in shared memory for kStateHeads heads, so B leaves L2 once per
// (group, head quad) instead of once per (head, 64 x 64 tile), and x once per head instead of once
// per N tile (chunk_state_mma_kernel moved ~2.7x these bytes from L2 and was L2-bound). Warp w owns
// P rows 16w..16w+15 and all N columns (64 accumulators per thread); the x tiles (64 tokens x 64 P)
// stream through kXStages cp.async buffers across the heads. The chunk's token work (Δ, cs, the state weights,
// the record) runs once per (b, h, chunk) in chunk_tokens_kernel before it (session 8: the per-head load_chunk
// was this kernel's serial part); the staged chunk output copies its Δ / cs from there too. N > 128 takes
// chunk_state_mma_kernel. kWg (session 10; sm_90a, wgmma_enabled()): the product on wgmma, the chunk's B stored
// [token][n] in swizzled 64 x 64 tiles (B operand by descriptor, transposed), x^T scaled in registers (round 1, H200,
// B8 L2048 H32: 49.5 us against 62.0).
// This file holds the chunk-state launcher.
#pragma once
#include "cuda/ssd_chunk_state_mma.cuh"
#include "cuda/ssd_tile_issue.cuh"
#include "cuda/ssd_wgmma.cuh"

namespace ssm::cuda::ssd {

constexpr int kStateHeads = 4, kXStages = 4;

// The chunk's B in swizzled tiles (kWg: the alignment slack, then Q / 64 token tiles of 1 or 2 64-column halves).
template <typename T, bool kWg>
__host__ __device__ inline size_t state_b_bytes(int Q, int N) {
  const int Np = (N + 15) / 16 * 16;
  return kWg ? 1024 + size_t(Q / kTile) * (Np > kTile ? 2 : 1) * kTile * kTile * sizeof(T)
             : align128(Q * (Np + 8) * sizeof(T));
}

// The heads' weight rows, the chunk's B, the x stages.
template <typename T, bool kWg>
size_t chunk_state_heads_smem(int Q, int N) {
  return align128(kStateHeads * kMaxChunk * sizeof(float)) + state_b_bytes<T, kWg>(Q, N) +
         kXStages * align128(kTile * kLd * sizeof(T));
}

// The tokens kernel, one block per (chunk, head, row): load_chunk once, then the chunk record and the chunk's
// Δ, cs and chunk-state weights (Δ_k exp(cs_last - cs_k) on the last run, else 0) into the workspace's tok rows,
// for the multi-head chunk state and the staged chunk output (same arithmetic as their own load_chunk).
template <typename T>
__global__ void __launch_bounds__(kThreads) chunk_tokens_kernel(SsdParams p, Layout w) {
  __shared__ ChunkTokens tok;
  const int64_t c = blockIdx.x, b = blockIdx.z, c0 = c * p.chunk;
  const int h = blockIdx.y;
  load_chunk(p, b, h, c0, int(p.chunk), tok);
  const int nvalid = int(min(p.chunk, p.seqlen - c0)), last = nvalid - 1, lr = tok.run[last];
  float* ws = ptr<float>(p.workspace);
  const int64_t row = (b * p.nheads + h) * w.nchunks + c;
  if (threadIdx.x == 0) write_record(ws + w.record + row * kRecord, tok, last);
  float* dst = ws + w.tok + row * 3 * kMaxChunk;
  for (int k = threadIdx.x; k < kMaxChunk; k += kThreads) {
    dst[k] = tok.dt[k];
    dst[kMaxChunk + k] = tok.cs[k];
    dst[2 * kMaxChunk + k] = k < nvalid && tok.run[k] == lr ? tok.dt[k] * __expf(tok.cs[last] - tok.cs[k]) : 0.f;
  }
  if (w.bwd_tok == 0) return;
  float* bdst = ws + w.bwd_tok + row * 3 * kMaxChunk;  // the backward's rows (BwdLayout::tok): Δ, cs, run
  for (int k = threadIdx.x; k < kMaxChunk; k += kThreads)
    bdst[k] = tok.dt[k], bdst[kMaxChunk + k] = tok.cs[k], bdst[2 * kMaxChunk + k] = __int_as_float(tok.run[k]);
}

// acc (16 P rows x 16 npair N columns) += X^T diag(w) B over one 64-token tile (xs [t][p] with ld kLd,
// bs [t][n] with ld ldb).
template <typename T>
__device__ __forceinline__ void state_tile_wide(float (&acc)[16][4], const T* xs, const T* bs, int ldb,
                                                const float* wt, int r0, int npair) {
  const int c2 = 2 * (threadIdx.x & 3);
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    const int k0 = kk * 16;
    unsigned a[4];
    load_a_kr(a, xs, kLd, r0, k0);
    const float w0 = wt[k0 + c2], w1 = wt[k0 + c2 + 1], w8 = wt[k0 + c2 + 8], w9 = wt[k0 + c2 + 9];
    a[0] = scale2<T>(a[0], w0, w1);
    a[1] = scale2<T>(a[1], w0, w1);
    a[2] = scale2<T>(a[2], w8, w9);
    a[3] = scale2<T>(a[3], w8, w9);
#pragma unroll
    for (int jp = 0; jp < 8; ++jp) {
      if (jp >= npair) continue;
      unsigned bb[4];
      load_b_kn(bb, bs, ldb, jp * 16, k0);
      mma16816<T>(acc[2 * jp], a, bb[0], bb[1]);
      mma16816<T>(acc[2 * jp + 1], a, bb[2], bb[3]);
    }
  }
}

// state_tile_wide on wgmma: b0 (and b1 when kTwo: N > 64) the swizzled [token][n] B tiles of n 0..63 (64..127).
template <typename T, bool kTwo>
__device__ __forceinline__ void state_tile_wg(float (&acc)[16][4], const T* xs, const T* b0, const T* b1,
                                              const float* wt, int r0) {
  const int c2 = 2 * (threadIdx.x & 3);
  unsigned a[4][4];
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    const int k0 = kk * 16;
    load_a_kr(a[kk], xs, kLd, r0, k0);
    const float w0 = wt[k0 + c2], w1 = wt[k0 + c2 + 1], w8 = wt[k0 + c2 + 8], w9 = wt[k0 + c2 + 9];
    a[kk][0] = scale2<T>(a[kk][0], w0, w1);
    a[kk][1] = scale2<T>(a[kk][1], w0, w1);
    a[kk][2] = scale2<T>(a[kk][2], w8, w9);
    a[kk][3] = scale2<T>(a[kk][3], w8, w9);
    fence_a(a[kk]);
  }
  float(&lo)[8][4] = *reinterpret_cast<float(*)[8][4]>(&acc[0]);
  float(&hi)[8][4] = *reinterpret_cast<float(*)[8][4]>(&acc[8]);
  const uint64_t d0 = sw_desc(smem_addr(b0)), d1 = sw_desc(smem_addr(b1));
  fence_acc(lo);
  if (kTwo) fence_acc(hi);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    wgmma_64x64<T, true>(lo, a[kk], d0 + uint64_t(kk * 16 * 128 >> 4));  // 16 tokens = 16 rows of 128 bytes
    if (kTwo) wgmma_64x64<T, true>(hi, a[kk], d1 + uint64_t(kk * 16 * 128 >> 4));
  }
  wgmma_commit();
  wgmma_wait<0>();
  fence_acc(lo);
  if (kTwo) fence_acc(hi);
}

// S_c rows p0 + r0 + lane / 4 (+ 8) of head h from the accumulators, as float2 where N allows.
__device__ __forceinline__ void store_state(float* states, const float (&acc)[16][4], int P, int N, int prow) {
  const int c2 = 2 * int(threadIdx.x & 3);
  const bool pairs = N % 2 == 0;
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const int pp = prow + 8 * hf;
    if (pp >= P) continue;
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      const int nn = 8 * j + c2;
      float* dst = states + int64_t(pp) * N + nn;
      if (pairs && nn + 1 < N) {
        *reinterpret_cast<float2*>(dst) = make_float2(acc[j][2 * hf], acc[j][2 * hf + 1]);
      } else {
        if (nn < N) dst[0] = acc[j][2 * hf];
        if (nn + 1 < N) dst[1] = acc[j][2 * hf + 1];
      }
    }
  }
}

// One launch of the multi-head product S[p, n] = Σ_t X[t, p] w_t Bm[t, n] per (b, chunk, head): the forward's
// chunk states (x, B, the tokens kernel's weight rows, into w.states) or the backward's dS_c = dY^T diag(e0) C
// (dY, C, e0_t = exp(cs_t) on the chunk's first run from the backward's token rows, into v.dstate).
struct StateProduct {
  TensorArg x, bm;          // (B, L, H, P) and (B, L, G, N)
  int64_t rows = 0;         // workspace offset of the token rows ((b * H + h) * nchunks + c) * 3 * kMaxChunk
  int64_t out = 0;          // workspace offset of the float32 results [(((b * nchunks + c) * H + h) * P + p) * N + n]
  bool first_run = false;   // weights exp(cs_k) where run_k == 0 (rows 1, 2: cs, run), else the weight row (row 2)
};

// The heads' weights into wt[head][token]: row 2 copied (cp.async, in the caller's first group), or exp(cs) on the
// first run computed from rows 1 and 2 (plain loads; visible after the caller's first barrier).
__device__ __forceinline__ void state_weights(float* wt, const float* src, int64_t head_step, int nh, int nvalid,
                                              bool first_run) {
  if (!first_run) {
    for (int e = threadIdx.x; e < nh * kMaxChunk / 4; e += kThreads) {  // 64 16-byte chunks per head
      const int hi = e / (kMaxChunk / 4), k4 = e % (kMaxChunk / 4);
      cp_async16(wt + hi * kMaxChunk + 4 * k4, src + hi * head_step + 2 * kMaxChunk + 4 * k4, true);
    }
    return;
  }
  for (int e = threadIdx.x; e < nh * kMaxChunk; e += kThreads) {
    const int hi = e / kMaxChunk, k = e % kMaxChunk;
    const float cs = src[hi * head_step + kMaxChunk + k];
    const int run = __float_as_int(src[hi * head_step + 2 * kMaxChunk + k]);
    wt[e] = k < nvalid && run == 0 ? __expf(cs) : 0.f;
  }
}

// kFull: N rounds up to 128 (all eight n-tile pairs, fixed at compile time: no per-pair predicates).
// The heads' weights come from the token rows (copied with Bm at the start: no per-head token work).
template <typename T, bool kFull, bool kWg>
__global__ void __launch_bounds__(kThreads) chunk_state_heads_kernel(SsdParams p, Layout w, StateProduct sp) {
#if !defined(SSM_WGMMA)
  if constexpr (kWg) {
    __trap();  // built without sm_90a: launch_state_product never launches it
    return;
  }
#endif
  extern __shared__ __align__(128) unsigned char smem[];
  const int P = int(p.headdim), N = int(p.dstate), Q = int(p.chunk), Np = (N + 15) / 16 * 16, ldb = Np + 8;
  const size_t xb = align128(kTile * kLd * sizeof(T));
  float* wt = reinterpret_cast<float*>(smem);  // [head][token]
  unsigned char* braw = smem + align128(kStateHeads * kMaxChunk * sizeof(float));
  // kWg: token tile kt's half hf at bs + (kt nhalf + hf) 4096 (1024-aligned), else [token][n] with ld ldb
  T* bs = reinterpret_cast<T*>(kWg ? braw + ((1024 - (smem_addr(braw) & 1023)) & 1023) : braw);
  const int nhalf = Np > kTile ? 2 : 1;
  unsigned char* xbase = braw + state_b_bytes<T, kWg>(Q, N);
  const int ntp = (P + kTile - 1) / kTile, hg = int(p.nheads / p.ngroups), nquad = (hg + kStateHeads - 1) / kStateHeads;
  const int64_t c = blockIdx.x / ntp, b = blockIdx.z, c0 = c * Q;
  const int pt = blockIdx.x % ntp, p0 = pt * kTile;
  const int g = blockIdx.y / nquad, h0 = g * hg + blockIdx.y % nquad * kStateHeads;
  const int nh = min(kStateHeads, (g + 1) * hg - h0);
  const int nvalid = int(min(int64_t(Q), p.seqlen - c0)), nk = (nvalid + kTile - 1) / kTile;
  const int nt = nh * nk;  // x tiles in stream order (head, token tile)
  const TensorArg &X = sp.x, &Bm = sp.bm;
  const int64_t xr = X.stride[1], br = Bm.stride[1];
  const T* xrow = ptr<T>(X) + b * X.stride[0] + p0 * X.stride[3] + c0 * xr;
  const T* bsrc = ptr<T>(Bm) + b * Bm.stride[0] + g * Bm.stride[2] + c0 * br;
  // x tile copies: where every row of every head is whole 16-byte chunks, each thread keeps its chunk's source and
  // destination (rows r + 16 i, column chunk ch) for the block (session 9: issue_rows per tile cost ~130
  // instructions per tile and warp), else issue_rows per tile
  constexpr int kV = 16 / sizeof(T), kPer = kTile / kV, kStep = kThreads / kPer;
  const int xr_ = int(threadIdx.x) / kPer, xch = int(threadIdx.x) % kPer;
  const bool xfix = P % kV == 0 && X.stride[3] == 1 && xr % kV == 0 && X.stride[2] % kV == 0 &&
                    (reinterpret_cast<uintptr_t>(xrow) & 15) == 0;
  const bool xcol = xch * kV < P - p0;
  const T* xthr = xrow + xr_ * xr + xch * kV;
  const int xdst = xr_ * kLd + xch * kV;
  int ihi = 0, ikt = 0;  // the next x tile to copy (head, token tile): counters, no divisions by nk per tile
  auto issue_x = [&](int f) {  // x tile f = (ihi, ikt) into buffer f % kXStages
    T* dst = reinterpret_cast<T*>(xbase + (f % kXStages) * xb);
    if (xfix) {
      const T* src = xthr + (h0 + ihi) * X.stride[2] + ikt * kTile * xr;
      const int rows = nvalid - ikt * kTile - xr_;
#pragma unroll
      for (int i = 0; i < kTile / kStep; ++i) {
        const bool ok = xcol && i * kStep < rows;
        cp_async16(dst + xdst + i * kStep * kLd, ok ? src + i * kStep * xr : xrow, ok);
      }
    } else {
      issue_rows<T, kTile>(dst, kLd, xrow + (h0 + ihi) * X.stride[2] + ikt * kTile * xr, xr, X.stride[3],
                           nvalid - ikt * kTile, P - p0);
    }
    if (++ikt == nk) ikt = 0, ++ihi;
  };
  for (int kt = 0; kt < nk; ++kt) {
    if constexpr (kWg) {
      for (int hf = 0; hf < nhalf; ++hf)
        issue_sw<T>(bs + (kt * nhalf + hf) * kTile * kTile, bsrc + kt * kTile * br + hf * kTile * Bm.stride[3], br,
                    Bm.stride[3], nvalid - kt * kTile, hf ? N - kTile : min(N, kTile));
    } else {
      issue_rows_n<T>(bs + kt * kTile * ldb, ldb, Np, bsrc + kt * kTile * br, br, Bm.stride[3], nvalid - kt * kTile, N);
    }
  }
  const int64_t head_step = w.nchunks * 3 * kMaxChunk;
  const float* wsrc = ptr<float>(p.workspace) + sp.rows + ((b * p.nheads + h0) * w.nchunks + c) * 3 * kMaxChunk;
  if (!sp.first_run) state_weights(wt, wsrc, head_step, nh, nvalid, false);
#pragma unroll
  for (int f = 0; f < kXStages - 1; ++f) {  // one group each; the first also holds Bm (and the copied weights)
    if (f < nt) issue_x(f);
    cp_async_commit();
  }
  if (sp.first_run) state_weights(wt, wsrc, head_step, nh, nvalid, true);  // under the copies in flight
  float* ws = ptr<float>(p.workspace);
  const int r0 = int(threadIdx.x >> 5) * 16, npair = kFull ? 8 : Np / 16;
  float acc[16][4];
  int hi = 0, kt = 0;  // tile f's head and token tile
#pragma unroll 1
  for (int f = 0; f < nt; ++f) {
    if (kt == 0)  // the head's accumulators from zero
#pragma unroll
      for (int j = 0; j < 16; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
    if (f + kXStages - 1 < nt) issue_x(f + kXStages - 1);
    cp_async_commit();
    cp_async_wait<kXStages - 1>();  // tile f (and Bm) landed
    if (kWg) fence_async_smem();  // Bm's tiles, read by wgmma
    __syncthreads();
    const T* xs = reinterpret_cast<const T*>(xbase + (f % kXStages) * xb);
    if (!kWg) {
      state_tile_wide<T>(acc, xs, bs + kt * kTile * ldb, ldb, wt + hi * kMaxChunk + kt * kTile, r0, npair);
    } else {
      const T* b0 = bs + kt * nhalf * kTile * kTile;
      if (nhalf == 2)
        state_tile_wg<T, true>(acc, xs, b0, b0 + kTile * kTile, wt + hi * kMaxChunk + kt * kTile, r0);
      else
        state_tile_wg<T, false>(acc, xs, b0, b0, wt + hi * kMaxChunk + kt * kTile, r0);
    }
    if (kt == nk - 1)
      store_state(ws + sp.out + ((b * w.nchunks + c) * p.nheads + h0 + hi) * int64_t(P) * N, acc, P, N,
                  p0 + r0 + (int(threadIdx.x & 31) >> 2));
    __syncthreads();  // buffer f % kXStages free again
    if (++kt == nk) kt = 0, ++hi;
  }
}

// The multi-head product (half / bfloat16, N <= 128).
template <typename T>
void launch_state_product(const SsdParams& p, const Layout& w, const StateProduct& sp, cudaStream_t s) {
  const int64_t ptiles = (p.headdim + kTile - 1) / kTile, hg = p.nheads / p.ngroups;
  const int64_t quads = (hg + kStateHeads - 1) / kStateHeads;
  const dim3 grid(unsigned(w.nchunks * ptiles), unsigned(p.ngroups * quads), unsigned(p.batch));
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;
  const bool full = (p.dstate + 15) / 16 == 8, wg = wgmma_enabled();
  const size_t smem = wg ? chunk_state_heads_smem<T, true>(int(p.chunk), int(p.dstate))
                         : chunk_state_heads_smem<T, false>(int(p.chunk), int(p.dstate));
  auto kernel = wg ? chunk_state_heads_kernel<T, false, true>
                   : full ? chunk_state_heads_kernel<T, true, false> : chunk_state_heads_kernel<T, false, false>;
  if (smem > 48 * 1024) cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  kernel<<<grid, kThreads, smem, s>>>(p, w, sp);
}

template <typename T>
void launch_chunk_state(const SsdParams& p, const Layout& w, cudaStream_t s) {
  const int64_t ptiles = (p.headdim + kTile - 1) / kTile;
  const int64_t tiles = ptiles * ((p.dstate + kTile - 1) / kTile);
  const dim3 grid(unsigned(w.nchunks * tiles), unsigned(p.nheads), unsigned(p.batch));
  if constexpr (!std::is_same<T, float>::value) {
    if (p.dstate <= 2 * kTile) {  // the tokens kernel (records, tok rows), then the heads' states
      launch(chunk_tokens_kernel<T>, dim3(unsigned(w.nchunks), unsigned(p.nheads), unsigned(p.batch)), 0, s, p, w);
      launch_state_product<T>(p, w, StateProduct{p.x, p.B, w.tok, w.states, false}, s);
      return;
    }
    launch(chunk_state_mma_kernel<T>, grid, chunk_state_mma_smem<T>(), s, p, w);  // N > 128
    return;
  }
  launch(chunk_state_kernel<T>, grid, chunk_state_smem<T>(), s, p, w);  // float32: FMA
}

}  // namespace ssm::cuda::ssd
