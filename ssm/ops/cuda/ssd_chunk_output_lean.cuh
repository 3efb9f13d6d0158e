// SSD step 4 for half / bfloat16 with the precomputed C B^T (chunk_cb_kernel) on register fragments: per
// (chunk, head, 64-wide P tile) and a pair of 64-token query tiles (q and nq-1-q: equal work per block),
// warp w owns query rows 16w..16w+15 of the tile and all 64 P columns; the lean form of session 3's
// kernel (ncu had that one issue-bound on integer and branch work):
//   - H_in is loaded once for the block's two query tiles;
//   - off the diagonal (keys s before the query tile's first token t0) the decay factors as
//     exp(cs_t - cs_s) = exp(cs_t - r) exp(r - cs_s), r = cs before t0, both factors between 1 and the
//     product since cs is monotonic (Δ >= 0): the key factor exp(r - cs_s) Δ_s is computed once per
//     key (shared memory) and scales S's columns, the row factor scales the accumulators once before
//     the diagonal tile (C H_in^T enters scaled by exp(r));
//   - on the diagonal tile the mask is ex2(cs_t log2e - cs_s log2e) · Δ_s per element (ex2.approx,
//     no range fix-ups) with the causal select; chunks where a sequence changes (runs), or Δ that may
//     be negative, take the general per-element decay_mask;
//   - the epilogue hoists D, the y / z row pointers and the flag tests out of the element loop;
//     chunks with cu_seqlens initial states inside them keep y_out.
// Runs for N > 128 (the launcher is in ssd_chunk_output_staged.cuh). kSplit: S enters the mma as S_hi + S_lo
// (no rounding of S; see the staged kernel's exact form).
#pragma once
#include "cuda/ssd_chunk_output_mma.cuh"
#include "cuda/ssd_tile_issue.cuh"

namespace ssm::cuda::ssd {

constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// s(t, s') *= 2^(q_t - cs_s' log2e) Δ_s' (q: the thread's rows' cs_t log2e). kDiag: the diagonal key
// tile, zero where s' > t, n-tile pairs past jp_max untouched (zero already).
template <bool kDiag>
__device__ __forceinline__ void decay_lean(float (&s)[8][4], const ChunkTokens& tok, const float (&q)[2],
                                           const int (&t)[2], int s0, int jp_max) {
  const int c2 = 2 * int(threadIdx.x & 3);
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    if (kDiag && j / 2 > jp_max) continue;
    const int sj = s0 + 8 * j + c2;
    const float2 cs = *reinterpret_cast<const float2*>(tok.cs + sj);
    const float2 dt = *reinterpret_cast<const float2*>(tok.dt + sj);
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      float d0 = fmaf(cs.x, -kLog2e, q[hf]), d1 = fmaf(cs.y, -kLog2e, q[hf]);
      if (kDiag) {
        d0 = sj <= t[hf] ? d0 : -INFINITY;
        d1 = sj < t[hf] ? d1 : -INFINITY;
      }
      s[j][2 * hf] *= ex2(d0) * dt.x;
      s[j][2 * hf + 1] *= ex2(d1) * dt.y;
    }
  }
}

// silu with the fast division (2 ulp; 0 for v < -87)
__device__ __forceinline__ float silu_fast(float v) { return __fdividef(v, 1.f + ex2(-v * kLog2e)); }

// (p, p + 1) pairs of a (B, L, H, P) tensor lie at 4-byte aligned addresses
__device__ __forceinline__ bool pair_rows(const TensorArg& a) {
  return a.stride[3] == 1 && (reinterpret_cast<uintptr_t>(a.data) & 3) == 0 && a.stride[0] % 2 == 0 &&
         a.stride[1] % 2 == 0 && a.stride[2] % 2 == 0;
}

// y = acc + D x, times silu(z), stored for the thread's rows t (chunk-local, t0 the tile's first)
// and P columns p0 + 8 j + 2 (lane % 4) + e; xq: the query tile's x ([t - t0][p], ld kLd). y and z
// have unit stride along P and P is even (the caller checks).
template <typename T>
__device__ __forceinline__ void store_y_lean(const SsdParams& p, const float (&acc)[8][4], const T* xq, int64_t b,
                                             int h, int64_t c0, const int (&t)[2], int t0, int rows_left, int p0) {
  const int P = int(p.headdim), lc = 2 * int(threadIdx.x & 3), ncol = min(P - p0, kTile);
  float dv[8][2];
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int pp = p0 + 8 * j + lc + e;
      dv[j][e] = has(p.D) && pp < P ? __ldg(ptr<float>(p.D) + h * p.D.stride[0] + pp * p.D.stride[1]) : 0.f;
    }
  const bool gate = has(p.z);
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    if (t[hf] >= rows_left) continue;
    const int64_t tt = c0 + t[hf];
    T* yrow = ptr<T>(p.out) + b * p.out.stride[0] + tt * p.out.stride[1] + h * p.out.stride[2] + p0;
    const T* zrow = ptr<T>(p.z) + b * p.z.stride[0] + tt * p.z.stride[1] + h * p.z.stride[2] + p0;
    const T* xr = xq + (t[hf] - t0) * kLd;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int pl = 8 * j + lc;
      if (pl >= ncol) continue;
      const unsigned xv = *reinterpret_cast<const unsigned*>(xr + pl);
      float y0 = acc[j][2 * hf] + dv[j][0] * to_float(reinterpret_cast<const T*>(&xv)[0]);
      float y1 = acc[j][2 * hf + 1] + dv[j][1] * to_float(reinterpret_cast<const T*>(&xv)[1]);
      if (gate) {
        const unsigned zv = __ldg(reinterpret_cast<const unsigned*>(zrow + pl));
        y0 *= silu_fast(to_float(reinterpret_cast<const T*>(&zv)[0]));
        y1 *= silu_fast(to_float(reinterpret_cast<const T*>(&zv)[1]));
      }
      *reinterpret_cast<unsigned*>(yrow + pl) = pack2<T>(y0, y1);
    }
  }
}

// The general epilogue (y_out per element): runs with cu_seqlens initial states inside the chunk, odd
// P, strided y or z. A rolled loop (y_out is long) picks the accumulator by selects (no local copy).
// xq null: D x is in acc already.
template <typename T>
__device__ __forceinline__ void store_y_general(const SsdParams& p, const ChunkTokens& tok, const float (&acc)[8][4],
                                                const T* xq, int64_t b, int h, int g, int64_t c0, const int (&t)[2],
                                                int t0, int rows_left, int p0) {
  const int P = int(p.headdim), lc = 2 * int(threadIdx.x & 3);
#pragma unroll 1
  for (int k = 0; k < 32; ++k) {  // acc[k / 4][k % 4] = element (t[(k / 2) % 2], 8 (k / 4) + lc + k % 2)
    const int hf = (k >> 1) & 1, pl = 8 * (k >> 2) + lc + (k & 1), pp = p0 + pl;
    float a = 0.f;
#pragma unroll
    for (int u = 0; u < 32; ++u) a = u == k ? acc[u >> 2][u & 3] : a;
    if (t[hf] < rows_left && pp < P)
      write_y<T>(p, tok, b, h, g, c0, t[hf], pp, a, xq ? to_float(xq[(t[hf] - t0) * kLd + pl]) : 0.f);
  }
}

// s(t, s') *= kf[s'] (the key factors of the off-diagonal tiles)
__device__ __forceinline__ void scale_keys(float (&s)[8][4], const float* kf, int s0) {
  const int c2 = 2 * int(threadIdx.x & 3);
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const float2 k = *reinterpret_cast<const float2*>(kf + s0 + 8 * j + c2);
    s[j][0] *= k.x, s[j][1] *= k.y, s[j][2] *= k.x, s[j][3] *= k.y;
  }
}

// Shared memory: tokens, the key factors, C_q, H_in, the two X_k buffers.
template <typename T>
size_t chunk_scan_lean_smem(int N) {
  return align128(sizeof(ChunkTokens)) + align128(kMaxChunk * sizeof(float)) +
         2 * align128(kTile * (round16(N) + 8) * sizeof(T)) + 2 * align128(kTile * kLd * sizeof(T));
}

// hi = the pair (a, b) in T (a in the low half), lo = the pair's rounding residues (a - hi.x, b - hi.y) in T:
// one packed conversion each, hi unpacked by a shift and a mask (bfloat16) or one conversion (half).
template <typename T>
__device__ __forceinline__ void split2(float a, float b, unsigned& hi, unsigned& lo);

template <>
__device__ __forceinline__ void split2<__nv_bfloat16>(float a, float b, unsigned& hi, unsigned& lo) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
  hi = *reinterpret_cast<const unsigned*>(&h);
  const __nv_bfloat162 l = __floats2bfloat162_rn(a - __uint_as_float(hi << 16), b - __uint_as_float(hi & 0xffff0000u));
  lo = *reinterpret_cast<const unsigned*>(&l);
}

template <>
__device__ __forceinline__ void split2<__half>(float a, float b, unsigned& hi, unsigned& lo) {
  const __half2 h = __floats2half2_rn(a, b);
  hi = *reinterpret_cast<const unsigned*>(&h);
  const float2 hf = __half22float2(h);
  const __half2 l = __floats2half2_rn(a - hf.x, b - hf.y);
  lo = *reinterpret_cast<const unsigned*>(&l);
}

// acc += S X as mma_sx does, with S = S_hi + S_lo (two element-type operands: S itself not rounded).
template <typename T>
__device__ __forceinline__ void mma_sx_split(float (&acc)[8][4], const float (&s)[8][4], const T* X, int kk_max) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    if (kk > kk_max) continue;
    unsigned hi[4], lo[4];
    split2<T>(s[2 * kk][0], s[2 * kk][1], hi[0], lo[0]);
    split2<T>(s[2 * kk][2], s[2 * kk][3], hi[1], lo[1]);
    split2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1], hi[2], lo[2]);
    split2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3], hi[3], lo[3]);
#pragma unroll
    for (int jp = 0; jp < 4; ++jp) {
      unsigned bb[4];
      load_b_kn(bb, X, kLd, jp * 16, kk * 16);
      mma16816<T>(acc[2 * jp], lo, bb[0], bb[1]);
      mma16816<T>(acc[2 * jp + 1], lo, bb[2], bb[3]);
      mma16816<T>(acc[2 * jp], hi, bb[0], bb[1]);
      mma16816<T>(acc[2 * jp + 1], hi, bb[2], bb[3]);
    }
  }
}

// The decay mask of key tile kt for query tile qt (for the lean and the staged chunk output kernels), then acc += S X_k
// (kSplit: S as S_hi + S_lo).
template <typename T, bool kSplit>
__device__ __forceinline__ void masked_sx(float (&acc)[8][4], float (&s)[8][4], const T* xk, const ChunkTokens& tok,
                                          const float* kf, const float (&q2)[2], const int (&trow)[2], float ref,
                                          int kt, int qt, int lim, int rows_left, bool runs, bool factored) {
  if (runs) {
    decay_mask(s, tok, trow, kt * kTile, rows_left);
  } else if (kt == qt) {
    decay_lean<true>(s, tok, q2, trow, kt * kTile, lim);
    if (factored)  // the row factors exp(cs_t - r) of everything so far
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const float rf = ex2(q2[hf] - ref);
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[j][2 * hf] *= rf, acc[j][2 * hf + 1] *= rf;
      }
  } else if (factored) {
    scale_keys(s, kf, kt * kTile);
  } else {
    decay_lean<false>(s, tok, q2, trow, kt * kTile, lim);
  }
  if (kSplit)
    mma_sx_split<T>(acc, s, xk, lim);
  else
    mma_sx<T>(acc, s, xk, lim);
}

template <typename T, typename Cb, bool kSplit>
__global__ void __launch_bounds__(kThreads, 3) chunk_scan_lean_kernel(SsdParams p, Layout w) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int P = int(p.headdim), N = int(p.dstate), Q = int(p.chunk), Np = round16(N), ldn = Np + 8;
  const size_t nb = align128(kTile * ldn * sizeof(T)), xb = align128(kTile * kLd * sizeof(T));
  ChunkTokens& tok = *reinterpret_cast<ChunkTokens*>(smem);
  float* kf = reinterpret_cast<float*>(smem + align128(sizeof(ChunkTokens)));  // key factors
  unsigned char* at = smem + align128(sizeof(ChunkTokens)) + align128(kMaxChunk * sizeof(float));
  T* cq = reinterpret_cast<T*>(at);
  T* hs = reinterpret_cast<T*>(at + nb);  // hs[p][n] = H_in[p0 + p][n]
  T* xk0 = reinterpret_cast<T*>(at + 2 * nb);
  T* xk1 = reinterpret_cast<T*>(at + 2 * nb + xb);
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
#pragma unroll 1
  for (int pass = 0; pass < npass; ++pass) {
    const int qt = pass == 0 ? qp : q_last, t0 = qt * kTile;
    if (pass > 0) __syncthreads();  // the first tile's C and X buffers are free
    issue_tile<T>(cq, ldn, Np, csrc + t0 * p.C.stride[1], p.C.stride[1], p.C.stride[3], rows_left - t0, N);
    if (pass == 0) issue_tile<T>(hs, ldn, Np, hin, N, 1, P - p0, N);
    cp_async_commit();
    issue_rows<T, kTile>(xk0, kLd, xsrc, xs1, p.x.stride[3], rows_left, P - p0);
    cp_async_commit();
    if (pass == 0) load_chunk(p, b, h, c0, Q, tok);
    cp_async_wait<1>();
    __syncthreads();

    const bool runs = tok.run[rows_left - 1] != 0;  // a sequence changes inside the chunk
    const bool factored = !runs && p.dt_lo >= 0.f;
    const float ref = cs_before(tok, t0) * kLog2e;  // r, in log2 units
    if (factored)  // read after the key loop's first barrier
      for (int k = threadIdx.x; k < t0; k += kThreads) kf[k] = ex2(ref - tok.cs[k] * kLog2e) * tok.dt[k];
    const int trow[2] = {t0 + r0 + g8, t0 + r0 + g8 + 8};  // the thread's two query tokens
    float q2[2];
    float acc[8][4] = {};
    mma_rows_nk<T>(acc, cq, hs, ldn, r0, Np, 3);  // C_q H_in^T
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      q2[hf] = tok.cs[trow[hf]] * kLog2e;
      const float scale = trow[hf] < rows_left && tok.run[trow[hf]] == 0 ? ex2(factored ? ref : q2[hf]) : 0.f;
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[j][2 * hf] *= scale, acc[j][2 * hf + 1] *= scale;
    }
    for (int kt = 0; kt <= qt; ++kt) {
      const T* xcur = kt & 1 ? xk1 : xk0;
      const int lim = kt == qt ? warp : 3;  // the diagonal tile: keys up to the warp's last row
      float s[8][4];
      load_cb(s, cb, Q, trow, kt * kTile, lim);  // in flight across the barrier
      if (kt < qt) {  // the next key tile's X into the other buffer
        const int s1 = (kt + 1) * kTile;
        issue_rows<T, kTile>(kt & 1 ? xk0 : xk1, kLd, xsrc + s1 * xs1, xs1, p.x.stride[3], rows_left - s1, P - p0);
      }
      cp_async_commit();
      cp_async_wait<1>();
      __syncthreads();
      masked_sx<T, kSplit>(acc, s, xcur, tok, kf, q2, trow, ref, kt, qt, lim, rows_left, runs, factored);
      if (kt < qt) __syncthreads();  // before the next issue overwrites this key tile's buffer
    }
    const T* xq = qt & 1 ? xk1 : xk0;  // the query tokens' x
    if (!pairs || (runs && has(p.cu_seqlens) && has(p.initial_states)))
      store_y_general<T>(p, tok, acc, xq, b, h, g, c0, trow, t0, rows_left, p0);
    else
      store_y_lean<T>(p, acc, xq, b, h, c0, trow, t0, rows_left, p0);
  }
}

}  // namespace ssm::cuda::ssd
