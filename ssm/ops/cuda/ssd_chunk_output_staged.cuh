// SSD step 4 for half / bfloat16 with N <= 128, the staged form of chunk_scan_lean_kernel (same blocks,
// warps and decay mask). Each key tile's precomputed C B^T comes through shared memory by cp.async
// together with its X tile, both one stage ahead (the lean kernel loaded C B^T into registers right
// before its use: one exposed L2 round trip per key tile). C_q H_in^T runs last, once the key tiles
// are done: its A fragments are scaled by exp(cs_t) per row (one more bf16 / f16 rounding, as S has)
// and H_in streams into the then free buffer pair as one more stage, so that no shared buffer is held
// for H_in during the key loop (three blocks per SM with the two C B^T buffers). D x enters the
// accumulators on the diagonal tile (x of the query rows is that tile's X), so the epilogue reads no
// shared memory and the second query tile's first key tile streams in during the first one's C_q H_in^T
// and epilogue (the stages run on through both passes, alternating buffer pairs).
// Exact form (the default, session 6): C B^T stays float32 (an unpadded, swizzled shared tile) and the
// masked tile S enters the mma as S_hi + S_lo (two element-type operands, S_lo = S - S_hi), and C_q H_in^T
// gets float32 accumulators of its own, scaled by exp(cs_t) once: S and C_q exp(cs_t) are not rounded
// (emulated in float64: y's error ~1.02x the float32-computed reference's, against ~1.6x with one rounding
// each of C B^T and S). SSM_SSD_FWD_EXACT=0: bfloat16 C B^T for bfloat16 inputs, S rounded once, C_q scaled
// in the A fragments (the session-5 kernel).
// Session 8: Δ / cs come from the tokens kernel's workspace rows (one 16-byte copy per thread) where no seq_idx /
// cu_seqlens splits a chunk (load_chunk otherwise); with SSM_SSD_FWD_HIN_SPLIT=1 the exact form takes H_in as hi + lo
// (the state pass writes lo; its tiles stream into the diagonal key tile's pair during C_q H_hi^T).
// SSM_SSD_FWD_STAGED=0 selects the lean kernel. This file holds the chunk-output launcher.
#pragma once
#include "cuda/ssd_chunk_output_lean.cuh"
#include "cuda/ssd_tile_issue.cuh"

namespace ssm::cuda::ssd {

// The 16-byte chunk ch (4 floats) of row r of a float C B^T tile sits at chunk ch ^ 2 (r % 4): the
// float2 reads of cb_from_smem (rows g, columns 8 j + 2 c) then hit 32 distinct banks per half warp.
__device__ __forceinline__ int cb_swizzle(int r, int ch) { return ch ^ ((r & 3) << 1); }

// Row stride of a shared C B^T tile: bfloat16 64 + 8 (padding: ldmatrix reads conflict-free); float 64
// (no padding: the 16-byte chunks of a row are swizzled, see issue_cb).
template <typename Cb>
__host__ __device__ constexpr int cb_ld() { return sizeof(Cb) == 4 ? kTile : kTile + 8; }

// dst = the 64 x 64 float tile src[i * rs + j] (swizzled), by 16-byte asynchronous copies.
// Each thread keeps one 16-byte column chunk and steps its source pointer by 8 rows (r % 4, so the swizzle, stays).
__device__ __forceinline__ void issue_cb(float* dst, const float* src, int64_t rs) {
  constexpr int kStep = kThreads / 16;
  const int r = int(threadIdx.x) >> 4, ch = int(threadIdx.x) & 15;
  const float* s = src + r * rs + 4 * ch;
  float* d = dst + r * kTile + 4 * cb_swizzle(r, ch);
#pragma unroll 1
  for (int k = 0; k < kTile / kStep; ++k, s += kStep * rs) cp_async16(d + k * kStep * kTile, s, true);
}

// cp_async16 from src + kOff bytes to dst + kOff bytes, the offset as the instructions' immediate.
template <int kOff>
__device__ __forceinline__ void cp_async16_at(unsigned dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0+%2], [%1+%2], 16;\n" ::"r"(dst), "l"(src), "n"(kOff));
}

// dst = the tiled float C B^T tile src (chunk_cb_kernel<T, float, true>: already in the shared image's order), one
// linear 16 KB copy: eight 16-byte copies per thread at immediate offsets from one address pair.
__device__ __forceinline__ void issue_cb_tiled(float* dst, const float* src) {
  const unsigned d = smem_addr(dst + 4 * int(threadIdx.x));
  const float* sp = src + 4 * int(threadIdx.x);
  constexpr int kB = 16 * kThreads;  // bytes per round of the block
  cp_async16_at<0>(d, sp), cp_async16_at<kB>(d, sp), cp_async16_at<2 * kB>(d, sp);
  cp_async16_at<3 * kB>(d, sp), cp_async16_at<4 * kB>(d, sp), cp_async16_at<5 * kB>(d, sp);
  cp_async16_at<6 * kB>(d, sp), cp_async16_at<7 * kB>(d, sp);
  static_assert(8 * kB == kTile * kTile * sizeof(float), "eight rounds cover the 64 x 64 float tile");
}

// The bfloat16 tile by issue_tile (padded rows).
__device__ __forceinline__ void issue_cb(__nv_bfloat16* dst, const __nv_bfloat16* src, int64_t rs) {
  issue_tile<__nv_bfloat16>(dst, cb_ld<__nv_bfloat16>(), kTile, src, rs, 1, kTile, kTile);
}

// Bytes of one stage's buffer pair: the X_k tile, then the C B^T tile (or the H_in half tiles).
template <typename T, typename Cb>
__host__ __device__ inline size_t staged_pair_bytes() {
  return align128(kTile * kLd * sizeof(T)) + align128(kTile * cb_ld<Cb>() * sizeof(Cb));
}

// Shared memory: tokens, the key factors, D of the P tile, C_q, two buffer pairs.
template <typename T, typename Cb>
size_t chunk_scan_staged_smem(int N) {
  return align128(sizeof(ChunkTokens)) + align128((kMaxChunk + kTile) * sizeof(float)) +
         align128(kTile * (round16(N) + 8) * sizeof(T)) + 2 * staged_pair_bytes<T, Cb>();
}

// s = the C B^T tile in shared memory (rows r0.. of the warp, key steps kk > kk_max zero), float32 tiles
// (swizzled: column 8 j + 2 c of row r at chunk cb_swizzle(r, 2 j + c / 2), offset 2 (c % 2)).
__device__ __forceinline__ void cb_from_smem(float (&s)[8][4], const float* cbs, int r0, int kk_max) {
  const int g8 = int(threadIdx.x & 31) >> 2, c4 = int(threadIdx.x & 3), sw = (g8 & 3) << 1;
  const float* row = cbs + (r0 + g8) * kTile + 2 * (c4 & 1);
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const int col = 4 * (((2 * j) ^ sw) + (c4 >> 1));
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const float2 v = j / 2 <= kk_max ? *reinterpret_cast<const float2*>(row + 8 * hf * kTile + col)
                                       : make_float2(0.f, 0.f);
      s[j][2 * hf] = v.x, s[j][2 * hf + 1] = v.y;
    }
  }
}

// The same from a tiled float32 tile (cb_quad_chunk's order): per row, one 16-byte read per 16-key step.
__device__ __forceinline__ void cb_from_quads(float (&s)[8][4], const float* cbs, int r0, int kk_max) {
  const int g8 = int(threadIdx.x & 31) >> 2, c4 = int(threadIdx.x & 3);
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const int r = r0 + g8 + 8 * hf;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const float4 v = k <= kk_max ? *reinterpret_cast<const float4*>(cbs + r * kTile + 4 * cb_quad_chunk(r, c4, k))
                                   : make_float4(0.f, 0.f, 0.f, 0.f);
      s[2 * k][2 * hf] = v.x, s[2 * k][2 * hf + 1] = v.y, s[2 * k + 1][2 * hf] = v.z, s[2 * k + 1][2 * hf + 1] = v.w;
    }
  }
}

// The same from a bfloat16 tile: one ldmatrix per 16-key step (the A-fragment layout is the accumulators').
__device__ __forceinline__ void cb_from_smem(float (&s)[8][4], const __nv_bfloat16* cbs, int r0, int kk_max) {
  constexpr int ld = cb_ld<__nv_bfloat16>();
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    unsigned a[4] = {0u, 0u, 0u, 0u};
    if (kk <= kk_max) load_a(a, cbs, ld, r0, kk * 16);
#pragma unroll
    for (int u = 0; u < 4; ++u) {  // a[u]: rows g (u even) or g + 8, key columns 16 kk + 8 (u / 2) + 2c
      const float2 v = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&a[u]));
      s[2 * kk + u / 2][2 * (u & 1)] = v.x, s[2 * kk + u / 2][2 * (u & 1) + 1] = v.y;
    }
  }
}

// acc += diag(e) C_q H^T over K = Np (<= 128): C_q [row][n] (ld ldn), H [p][n] in two 64-column halves
// (ld kLd); e[hf]: the scale of the thread's rows g, g + 8, applied to the A fragments.
template <typename T>
__device__ __forceinline__ void mma_c_hin(float (&acc)[8][4], const T* cq, int ldn, const T* h0, const T* h1,
                                          const float (&e)[2], int r0, int Np) {
  for (int k0 = 0; k0 < Np; k0 += 16) {
    unsigned a[4];
    load_a(a, cq, ldn, r0, k0);
    a[0] = scale2<T>(a[0], e[0], e[0]), a[2] = scale2<T>(a[2], e[0], e[0]);
    a[1] = scale2<T>(a[1], e[1], e[1]), a[3] = scale2<T>(a[3], e[1], e[1]);
    const T* hs = k0 < kTile ? h0 : h1;
#pragma unroll
    for (int jp = 0; jp < 4; ++jp) {
      unsigned bb[4];
      load_b_nk(bb, hs, kLd, jp * 16, k0 & (kTile - 1));
      mma16816<T>(acc[2 * jp], a, bb[0], bb[1]);
      mma16816<T>(acc[2 * jp + 1], a, bb[2], bb[3]);
    }
  }
}

// hc += C_q H^T over K = Np (<= 128), unscaled (the exact form's own float32 accumulators; H as mma_c_hin's).
template <typename T>
__device__ __forceinline__ void mma_c_h(float (&hc)[8][4], const T* cq, int ldn, const T* h0, const T* h1, int r0,
                                        int Np) {
  for (int k0 = 0; k0 < Np; k0 += 16) {
    unsigned a[4];
    load_a(a, cq, ldn, r0, k0);
    const T* hs = k0 < kTile ? h0 : h1;
#pragma unroll
    for (int jp = 0; jp < 4; ++jp) {
      unsigned bb[4];
      load_b_nk(bb, hs, kLd, jp * 16, k0 & (kTile - 1));
      mma16816<T>(hc[2 * jp], a, bb[0], bb[1]);
      mma16816<T>(hc[2 * jp + 1], a, bb[2], bb[3]);
    }
  }
}

// acc += diag(e) hc (C_q H^T scaled by e once: no rounding of C_q e; no per-step scaling of the A fragments).
__device__ __forceinline__ void add_scaled(float (&acc)[8][4], const float (&hc)[8][4], const float (&e)[2]) {
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int u = 0; u < 4; ++u) acc[j][u] = fmaf(hc[j][u], e[u / 2], acc[j][u]);
}

// The chunk's Δ and cs from the tokens kernel's rows (one 16-byte copy per thread; the caller commits, waits
// and syncs) and run 0 for every token (the caller checks that no seq_idx / cu_seqlens splits the chunk).
__device__ __forceinline__ void issue_tokens(const SsdParams& p, const Layout& w, int64_t b, int h, int64_t c,
                                             ChunkTokens& tok) {
  static_assert(kThreads == kMaxChunk / 2, "one 16-byte copy per thread: Δ by threads 0-63, cs by 64-127");
  const float* src = ptr<float>(p.workspace) + w.tok + ((b * p.nheads + h) * w.nchunks + c) * 3 * kMaxChunk;
  const int e = int(threadIdx.x), k4 = 4 * (e % (kMaxChunk / 4));
  cp_async16((e < kMaxChunk / 4 ? tok.dt : tok.cs) + k4, src + 4 * e, true);
  tok.run[2 * e] = tok.run[2 * e + 1] = 0;
  if (e == 0) tok.runstart[0] = 0;
}

// acc(t, p) += D_p x(t, p) for the thread's rows (t - t0 = r0 + lane / 4 (+ 8)) from the query tile's x
// (xq [t - t0][p], ld kLd; ds: D of the P tile).
template <typename T>
__device__ __forceinline__ void add_dx(float (&acc)[8][4], const float* ds, const T* xq, int r0) {
  const int g8 = int(threadIdx.x & 31) >> 2, lc = 2 * int(threadIdx.x & 3);
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const float2 d = *reinterpret_cast<const float2*>(ds + 8 * j + lc);
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const unsigned xv = *reinterpret_cast<const unsigned*>(xq + (r0 + g8 + 8 * hf) * kLd + 8 * j + lc);
      acc[j][2 * hf] += d.x * to_float(reinterpret_cast<const T*>(&xv)[0]);
      acc[j][2 * hf + 1] += d.y * to_float(reinterpret_cast<const T*>(&xv)[1]);
    }
  }
}

// zv[hf][j] = the pair (z(t, p), z(t, p + 1)) of the thread's rows t[hf] (chunk-local) and P columns
// p = p0 + 8 j + 2 (lane % 4) (z with unit stride along P, P even: the caller checks); 0 where absent.
template <typename T>
__device__ __forceinline__ void load_z(const SsdParams& p, int64_t b, int h, int64_t c0, const int (&t)[2],
                                       int rows_left, int p0, unsigned (&zv)[2][8]) {
  const int lc = 2 * int(threadIdx.x & 3), ncol = min(int(p.headdim) - p0, kTile);
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const T* zrow = ptr<T>(p.z) + b * p.z.stride[0] + (c0 + t[hf]) * p.z.stride[1] + h * p.z.stride[2] + p0;
    const bool row = has(p.z) && t[hf] < rows_left;
#pragma unroll
    for (int j = 0; j < 8; ++j)
      zv[hf][j] = row && 8 * j + lc < ncol ? __ldg(reinterpret_cast<const unsigned*>(zrow + 8 * j + lc)) : 0u;
  }
}

// y = acc (D x included) times silu(z) (zv: load_z's pairs), stored in pairs for the thread's rows t (chunk-local)
// and P columns p0 + 8 j + 2 (lane % 4) + e (y and z with unit stride along P, P even: the caller checks).
template <typename T>
__device__ __forceinline__ void store_y_staged(const SsdParams& p, const float (&acc)[8][4], const unsigned (&zv)[2][8],
                                               int64_t b, int h, int64_t c0, const int (&t)[2], int rows_left, int p0) {
  const int lc = 2 * int(threadIdx.x & 3), ncol = min(int(p.headdim) - p0, kTile);
  const bool gate = has(p.z);
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    if (t[hf] >= rows_left) continue;
    const int64_t tt = c0 + t[hf];
    T* yrow = ptr<T>(p.out) + b * p.out.stride[0] + tt * p.out.stride[1] + h * p.out.stride[2] + p0;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int pl = 8 * j + lc;
      if (pl >= ncol) continue;
      float y0 = acc[j][2 * hf], y1 = acc[j][2 * hf + 1];
      if (gate) {
        y0 *= silu_fast(to_float(reinterpret_cast<const T*>(&zv[hf][j])[0]));
        y1 *= silu_fast(to_float(reinterpret_cast<const T*>(&zv[hf][j])[1]));
      }
      *reinterpret_cast<unsigned*>(yrow + pl) = pack2<T>(y0, y1);
    }
  }
}

// store_y_staged of the exact form without branches around the pairs: every pair is computed and only its store
// predicated (rows past the chunk, P columns past P), so the 16 silu chains of a thread interleave; kGate: z present.
template <typename T, bool kGate>
__device__ __forceinline__ void store_y_pred(const SsdParams& p, const float (&acc)[8][4], const unsigned (&zv)[2][8],
                                             int64_t b, int h, int64_t c0, const int (&t)[2], int rows_left, int p0) {
  const int lc = 2 * int(threadIdx.x & 3), ncol = min(int(p.headdim) - p0, kTile);
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    T* yrow = ptr<T>(p.out) + b * p.out.stride[0] + (c0 + t[hf]) * p.out.stride[1] + h * p.out.stride[2] + p0;
    const bool row = t[hf] < rows_left;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      float y0 = acc[j][2 * hf], y1 = acc[j][2 * hf + 1];
      if (kGate) {
        y0 *= silu_fast(to_float(reinterpret_cast<const T*>(&zv[hf][j])[0]));
        y1 *= silu_fast(to_float(reinterpret_cast<const T*>(&zv[hf][j])[1]));
      }
      const unsigned v = pack2<T>(y0, y1);
      if (row && 8 * j + lc < ncol) *reinterpret_cast<unsigned*>(yrow + 8 * j + lc) = v;
    }
  }
}

// z's rows of the block's two query tiles (64 P columns: one 128-byte line each for bfloat16 / half) into L2 at
// the block's start, one row per thread: the epilogues' z loads then wait for L2, not DRAM.
template <typename T>
__device__ __forceinline__ void prefetch_z(const SsdParams& p, int64_t b, int h, int64_t c0, const int (&tq)[2],
                                           int npass, int rows_left, int p0) {
  const int pass = int(threadIdx.x) / kTile, t = tq[pass] * kTile + int(threadIdx.x) % kTile;
  if (!has(p.z) || pass >= npass || t >= rows_left) return;
  const T* zrow = ptr<T>(p.z) + b * p.z.stride[0] + (c0 + t) * p.z.stride[1] + h * p.z.stride[2] + p0 * p.z.stride[3];
  asm volatile("prefetch.global.L2 [%0];\n" ::"l"(zrow));
}

// s(t, s') *= kf[s'] for s' <= t, else 0: the diagonal key tile with key factors exp(r - cs_s') Δ_s' (the row
// factors exp(cs_t - r) scale the accumulators after its product).
__device__ __forceinline__ void scale_keys_diag(float (&s)[8][4], const float* kf, int s0, const int (&t)[2]) {
  const int c2 = 2 * int(threadIdx.x & 3);
#pragma unroll
  for (int j = 0; j < 8; ++j) {  // (no skip past jp_max: those columns are zero, kf finite; no branches)
    const int sj = s0 + 8 * j + c2;
    const float2 k = *reinterpret_cast<const float2*>(kf + sj);
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      s[j][2 * hf] = sj <= t[hf] ? s[j][2 * hf] * k.x : 0.f;
      s[j][2 * hf + 1] = sj < t[hf] ? s[j][2 * hf + 1] * k.y : 0.f;
    }
  }
}

// acc(t, ·) *= exp(cs_t - r): the row factors (q2: cs_t log2e, ref: r log2e) of the key-factor terms.
__device__ __forceinline__ void scale_rows(float (&acc)[8][4], const float (&q2)[2], float ref) {
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const float rf = ex2(q2[hf] - ref);
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[j][2 * hf] *= rf, acc[j][2 * hf + 1] *= rf;
  }
}

// masked_sx of the tiled form: key tile kt's decay for query tile qt, then acc += (S_hi + S_lo) X_k. The diagonal
// tile takes the key factors where diag_kf (its product enters relative to r, the row factors scale everything
// after it), else exp(cs_t - cs_s) per element (the row factors before it, as masked_sx).
template <typename T>
__device__ __forceinline__ void masked_sx_tiled(float (&acc)[8][4], float (&s)[8][4], const T* xk,
                                                const ChunkTokens& tok, const float* kf, const float (&q2)[2],
                                                const int (&trow)[2], float ref, int kt, int qt, int lim, int rows_left,
                                                bool runs, bool factored, bool diag_kf) {
  const bool diag = kt == qt && !runs;
  if (runs)
    decay_mask(s, tok, trow, kt * kTile, rows_left);
  else if (diag && diag_kf)
    scale_keys_diag(s, kf, kt * kTile, trow);
  else if (diag)
    decay_lean<true>(s, tok, q2, trow, kt * kTile, lim);
  else if (factored)
    scale_keys(s, kf, kt * kTile);
  else
    decay_lean<false>(s, tok, q2, trow, kt * kTile, lim);
  if (diag && factored && !diag_kf) scale_rows(acc, q2, ref);
  mma_sx_split<T>(acc, s, xk, lim);
  if (diag && diag_kf) scale_rows(acc, q2, ref);
}

// kLo (exact form, Layout::split): C_q H_in^T as C_q (H_hi + H_lo)^T, H_lo written by the state pass.
// The exact form (kSplit; session 9): C B^T tiles from chunk_cb_kernel<T, float, true> (one linear copy each, read in
// quads), the diagonal key tile's decay from key factors where the tile's decay range allows (bfloat16, |cs_last - r|
// < 64 log2 units; else per element), copies with the fallback out of line, z's rows prefetched into L2 at the
// block's start, a branch-free epilogue (the inexact form keeps session 8's pieces).
template <typename T, typename Cb, bool kSplit, bool kLo>
__global__ void __launch_bounds__(kThreads, 3) chunk_scan_staged_kernel(SsdParams p, Layout w) {
  static_assert(kSplit || !kLo, "H_in's residue enters the exact form only");
  static_assert(!kSplit || sizeof(Cb) == 4, "the exact form's C B^T is tiled float32");
  extern __shared__ __align__(128) unsigned char smem[];
  const int P = int(p.headdim), N = int(p.dstate), Q = int(p.chunk), Np = round16(N), ldn = Np + 8;
  const size_t xb = align128(kTile * kLd * sizeof(T)), pb = staged_pair_bytes<T, Cb>();
  ChunkTokens& tok = *reinterpret_cast<ChunkTokens*>(smem);
  float* kf = reinterpret_cast<float*>(smem + align128(sizeof(ChunkTokens)));  // key factors
  float* ds = kf + kMaxChunk;                                                   // D of the P tile
  T* cq = reinterpret_cast<T*>(smem + align128(sizeof(ChunkTokens)) + align128((kMaxChunk + kTile) * sizeof(float)));
  unsigned char* pairs0 = reinterpret_cast<unsigned char*>(cq) + align128(kTile * ldn * sizeof(T));
  auto xbuf = [&](int i) { return reinterpret_cast<T*>(pairs0 + (i & 1) * pb); };
  auto cbuf = [&](int i) { return reinterpret_cast<Cb*>(pairs0 + (i & 1) * pb + xb); };
  const int nq = Q / kTile, nqp = (nq + 1) / 2, ntp = (P + kTile - 1) / kTile;
  const int qp = blockIdx.x % nqp, pt = blockIdx.x / nqp % ntp, p0 = pt * kTile;
  const int64_t c = blockIdx.x / nqp / ntp, b = blockIdx.z, c0 = c * Q, L = p.seqlen;
  const int h = blockIdx.y, g = h / int(p.nheads / p.ngroups);
  if (c0 + qp * kTile >= L) return;
  const int rows_left = int(min(int64_t(Q), L - c0));  // valid tokens of the chunk
  // the block's query tiles: qp and nq - 1 - qp (nq + 1 key tiles together: balanced blocks)
  const int q_last = nq - 1 - qp, npass = q_last != qp && c0 + q_last * kTile < L ? 2 : 1;
  const int64_t xs1 = p.x.stride[1];
  const T* xsrc = ptr<T>(p.x) + b * p.x.stride[0] + h * p.x.stride[2] + p0 * p.x.stride[3] + c0 * xs1;
  const T* csrc = ptr<T>(p.C) + b * p.C.stride[0] + g * p.C.stride[2] + c0 * p.C.stride[1];
  const T* hin = reinterpret_cast<const T*>(ptr<float>(p.workspace) + w.hin) +
                 ((b * w.nchunks + c) * p.nheads + h) * int64_t(P) * N + int64_t(p0) * N;
  const Cb* cb = reinterpret_cast<const Cb*>(ptr<float>(p.workspace) + w.cb) +
                 ((b * w.nchunks + c) * p.ngroups + g) * int64_t(Q) * Q;
  const int warp = int(threadIdx.x >> 5), r0 = warp * 16, g8 = int(threadIdx.x & 31) >> 2;
  const bool pairs = P % 2 == 0 && pair_rows(p.out) && (!has(p.z) || pair_rows(p.z));
  // key tile k of query tile q's pass (X_k and the C B^T rows of q) into buffer pair i
  auto issue_key = [&](int i, int q, int k) {
    const int s1 = k * kTile;
    issue_rows<T, kTile, kSplit>(xbuf(i), kLd, xsrc + s1 * xs1, xs1, p.x.stride[3], rows_left - s1, P - p0);
    if (kSplit)
      issue_cb_tiled(reinterpret_cast<float*>(cbuf(i)),
                     reinterpret_cast<const float*>(cb) + (q * nq + k) * kTile * kTile);
    else
      issue_cb(cbuf(i), cb + int64_t(q) * kTile * Q + s1, Q);
  };
  auto issue_hin = [&](int i, const T* src) {  // H_in's half tiles ([p][n], n < 64 and n >= 64) into pair i
    issue_rows<T, kTile, kSplit>(xbuf(i), kLd, src, N, 1, P - p0, min(N, kTile));
    if (N > kTile)
      issue_rows<T, kTile, kSplit>(reinterpret_cast<T*>(cbuf(i)), kLd, src + kTile, N, 1, P - p0, N - kTile);
  };
  auto issue_c = [&](int q) {  // C_q, read by the pass's last stage
    issue_rows_n<T, kSplit>(cq, ldn, Np, csrc + q * kTile * p.C.stride[1], p.C.stride[1], p.C.stride[3],
                            rows_left - q * kTile, N);
  };
  const bool copied = !has(p.seq_idx) && !has(p.cu_seqlens);  // no runs: Δ / cs from the tokens kernel
  if (copied) {
    issue_tokens(p, w, b, h, c, tok);
    cp_async_commit();
  }
  issue_c(qp);
  issue_key(0, qp, 0);
  cp_async_commit();
  if (kSplit) prefetch_z<T>(p, b, h, c0, {qp, q_last}, npass, rows_left, p0);
  for (int k = threadIdx.x; k < kTile; k += kThreads)  // read after load_chunk's barriers
    ds[k] = has(p.D) && p0 + k < P ? ptr<float>(p.D)[h * p.D.stride[0] + (p0 + k) * p.D.stride[1]] : 0.f;
  if (copied) {
    cp_async_wait<1>();  // the tokens (C_q and the first key tile may still be in flight)
    __syncthreads();
  } else {
    load_chunk(p, b, h, c0, Q, tok);
  }
  const bool runs = tok.run[rows_left - 1] != 0;  // a sequence changes inside the chunk
  const bool factored = !runs && p.dt_lo >= 0.f;
  int base = 0;  // the buffer pair of the pass's first key tile
#pragma unroll 1
  for (int pass = 0; pass < npass; ++pass) {
    const int qt = pass == 0 ? qp : q_last, t0 = qt * kTile;
    const float ref = cs_before(tok, t0) * kLog2e;  // r, in log2 units
    // the diagonal tile's keys by key factors too: both factors within 2^±64 (cs monotonic in the chunk); bfloat16
    // only (S exp(r - cs_s) Δ_s reaches 2^64 |S| Δ: past half's range, within bfloat16's)
    const bool diag_kf = kSplit && std::is_same<T, __nv_bfloat16>::value && factored &&
                         fabsf(ref - tok.cs[t0 + kTile - 1] * kLog2e) < 64.f;
    const int kf_end = diag_kf ? t0 + kTile : t0;
    if (factored)  // read after the key loop's first barrier (the previous pass's reads are done)
      for (int k = threadIdx.x; k < kf_end; k += kThreads) kf[k] = ex2(ref - tok.cs[k] * kLog2e) * tok.dt[k];
    const int trow[2] = {t0 + r0 + g8, t0 + r0 + g8 + 8};  // the thread's two query tokens
    const float q2[2] = {tok.cs[trow[0]] * kLog2e, tok.cs[trow[1]] * kLog2e};
    float acc[8][4] = {};
    for (int kt = 0; kt <= qt; ++kt) {
      cp_async_wait<0>();
      __syncthreads();  // key tile kt landed; every warp is done with the previous stage's buffers and C_q
      if (kt < qt) {
        issue_key(base + kt + 1, qt, kt + 1);
        if (kt == 0 && pass > 0) issue_c(qt);
      } else {  // H_in into the free pair
        issue_hin(base + qt + 1, hin);
      }
      cp_async_commit();
      const int lim = kt == qt ? warp : 3;  // the diagonal tile: keys up to the warp's last row
      float s[8][4];
      if constexpr (kSplit)
        cb_from_quads(s, reinterpret_cast<const float*>(cbuf(base + kt)), r0, lim);
      else
        cb_from_smem(s, cbuf(base + kt), r0, lim);
      if (kSplit)
        masked_sx_tiled<T>(acc, s, xbuf(base + kt), tok, kf, q2, trow, ref, kt, qt, lim, rows_left, runs, factored,
                           diag_kf);
      else
        masked_sx<T, false>(acc, s, xbuf(base + kt), tok, kf, q2, trow, ref, kt, qt, lim, rows_left, runs, factored);
    }
    const bool general = !pairs || (runs && has(p.cu_seqlens) && has(p.initial_states));
    add_dx<T>(acc, ds, xbuf(base + qt), r0);  // the diagonal key tile is the query tile
    cp_async_wait<0>();
    __syncthreads();  // H_in landed; the diagonal tile's pair is free
    if (kLo) {  // H_in's residue into it, landing during C_q H_hi^T
      issue_hin(base + qt, hin + (w.hinlo - w.hin) * int64_t(sizeof(float) / sizeof(T)));  // hinlo: as hin
      cp_async_commit();
    } else if (pass + 1 < npass) {  // the next pass's first key tile
      issue_key(base + qt, q_last, 0);
      cp_async_commit();
    }
    float e[2];  // exp(cs_t) on the chunk's first run, else 0
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) e[hf] = trow[hf] < rows_left && tok.run[trow[hf]] == 0 ? ex2(q2[hf]) : 0.f;
    const T* h1 = reinterpret_cast<const T*>(cbuf(base + qt + 1));
    if (kSplit) {
      float hc[8][4] = {};
      mma_c_h<T>(hc, cq, ldn, xbuf(base + qt + 1), h1, r0, Np);
      if (kLo) {  // + C_q H_lo^T: H_in = hi + lo enters unrounded
        cp_async_wait<0>();
        __syncthreads();  // H_lo landed; every warp is done with the hi pair
        if (pass + 1 < npass) {  // the next pass's first key tile, into the hi pair, landing during C_q H_lo^T
          issue_key(base + qt + 1, q_last, 0);
          cp_async_commit();
        }
        mma_c_h<T>(hc, cq, ldn, xbuf(base + qt), reinterpret_cast<const T*>(cbuf(base + qt)), r0, Np);
      }
      add_scaled(acc, hc, e);
    } else {
      mma_c_hin<T>(acc, cq, ldn, xbuf(base + qt + 1), h1, e, r0, Np);
    }
    if (general) {
      store_y_general<T>(p, tok, acc, nullptr, b, h, g, c0, trow, t0, rows_left, p0);
    } else {
      unsigned zv[2][8];
      load_z<T>(p, b, h, c0, trow, rows_left, p0, zv);
      if (!kSplit)
        store_y_staged<T>(p, acc, zv, b, h, c0, trow, rows_left, p0);
      else if (has(p.z))
        store_y_pred<T, true>(p, acc, zv, b, h, c0, trow, rows_left, p0);
      else
        store_y_pred<T, false>(p, acc, zv, b, h, c0, trow, rows_left, p0);
    }
    base += kLo ? qt + 1 : qt;  // the next pass's first key tile: the hi pair (lo) or the diagonal one
  }
}

// The staged chunk output (SSM_SSD_FWD_STAGED=0: the lean kernel; N > 128 always takes the lean one).
inline bool staged_enabled() { return ssd_switch("SSM_SSD_FWD_STAGED", true); }

// The exact forms (SSM_SSD_FWD_EXACT=0: bfloat16 C B^T for bfloat16 inputs and S rounded once, in the staged
// and the lean kernel).
inline bool exact_enabled() { return ssd_switch("SSM_SSD_FWD_EXACT", true); }

// SSM_SSD_FWD_HIN_SPLIT=1: the exact staged output takes H_in as hi + lo (the state pass writes lo): y's state term
// unrounded, the forward's share of the ssd_split bf16 gradient flake gone, but +40 us at B8 L2048 (session 8, H200:
// 0.386 against 0.338 ms), so H_in is rounded once to the element type by default. ssd_chunk_scan_fwd.cu sets
// Layout::split from it.
inline bool hin_split_enabled(const SsdParams& p) {
  return p.dtype != DType::f32 && p.dstate <= 2 * kTile && staged_enabled() && exact_enabled() &&
         ssd_switch("SSM_SSD_FWD_HIN_SPLIT", false);
}

// C B^T in bfloat16 for bfloat16 inputs (the inexact staged kernel's shared tiles), float32 otherwise.
template <typename T>
using StagedCb = typename std::conditional<std::is_same<T, __nv_bfloat16>::value, __nv_bfloat16, float>::type;

// The exact staged output on wgmma (ssd_chunk_output_wgmma.cuh; false where it does not apply).
template <typename T>
bool launch_chunk_output_wgmma(const SsdParams& p, const Layout& w, cudaStream_t s);

template <typename T>
void launch_chunk_scan(const SsdParams& p, const Layout& w, cudaStream_t s) {
  const int64_t ptiles = (p.headdim + kTile - 1) / kTile, nq = p.chunk / kTile;
  const dim3 grid(unsigned(w.nchunks * ptiles * nq), unsigned(p.nheads), unsigned(p.batch));
  const dim3 paired(unsigned(w.nchunks * ptiles * ((nq + 1) / 2)), unsigned(p.nheads), unsigned(p.batch));
  const int N = int(p.dstate);
  if constexpr (!std::is_same<T, float>::value) {
    const dim3 cb_grid(unsigned(w.nchunks * nq * nq), unsigned(p.ngroups), unsigned(p.batch));
    const size_t cb_smem = 2 * align128(kTile * (round16(N) + 8) * sizeof(T));
    const size_t smem = chunk_scan_staged_smem<T, float>(N);
    if (staged_enabled() && N <= 2 * kTile && exact_enabled()) {  // the tiled C B^T, staged through 16 KB
      if (launch_chunk_output_wgmma<T>(p, w, s)) return;
      launch(chunk_cb_kernel<T, float, true>, cb_grid, std::max(cb_smem, size_t(kTile * kTile * sizeof(float))), s, p,
             w);
      if (w.split)
        launch(chunk_scan_staged_kernel<T, float, true, true>, paired, smem, s, p, w);
      else
        launch(chunk_scan_staged_kernel<T, float, true, false>, paired, smem, s, p, w);
    } else if (staged_enabled() && N <= 2 * kTile) {
      using Cb = StagedCb<T>;
      launch(chunk_cb_kernel<T, Cb>, cb_grid, cb_smem, s, p, w);
      launch(chunk_scan_staged_kernel<T, Cb, false, false>, paired, chunk_scan_staged_smem<T, Cb>(N), s, p, w);
    } else {
      launch(chunk_cb_kernel<T, float>, cb_grid, cb_smem, s, p, w);
      if (exact_enabled())
        launch(chunk_scan_lean_kernel<T, float, true>, paired, chunk_scan_lean_smem<T>(N), s, p, w);
      else
        launch(chunk_scan_lean_kernel<T, float, false>, paired, chunk_scan_lean_smem<T>(N), s, p, w);
    }
    return;
  }
  launch(chunk_scan_kernel<T>, grid, chunk_scan_smem<T>(N), s, p, w);  // float32: FMA
}

}  // namespace ssm::cuda::ssd
