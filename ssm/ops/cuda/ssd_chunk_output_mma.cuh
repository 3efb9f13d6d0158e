// SSD step 4 for half / bfloat16 on tensor cores with register fragments: per (chunk, head, 64-wide
// P tile) and a pair of 64-token query tiles (q and nq-1-q: equal work per block), warp w owns query
// rows 16w..16w+15 of the tile and all 64 P columns.
//   acc  = diag(exp(cs) on the first run) · C_q H_in^T
//   per key tile k <= q (B_k, X_k double-buffered by cp.async):
//     S  = C_q B_k^T (mma, the upper triangle of the diagonal tile skipped),
//     S  = S ∘ exp(cs_t - cs_s) Δ_s on s <= t in the same run (in registers),
//     acc += S X_k (S's accumulators repacked as A fragments; no shared-memory round trip).
// The epilogue (D x, cu_seqlens initial states, z gate) is y_out's, stored in pairs.
// SSM_SSD_FWD_MMA=0 selects the shared-memory wmma kernel of ssd_chunk_output.cuh instead; the
// default with the precomputed C B^T is the lean form in ssd_chunk_output_lean.cuh (the launcher).
#pragma once
#include <type_traits>

#include "cuda/ssd_chunk_output.cuh"
#include "cuda/ssd_chunk_state_mma.cuh"

namespace ssm::cuda::ssd {

// Shared memory: tokens, C_q, H_in / the two B_k buffers (H_in in the second) or H_in alone with
// the precomputed C B^T, the two X_k buffers.
template <typename T>
size_t chunk_scan_mma_smem(int N, bool pre_cb) {
  const int ldn = round16(N) + 8;
  return align128(sizeof(ChunkTokens)) + (pre_cb ? 2 : 3) * align128(kTile * ldn * sizeof(T)) +
         2 * align128(kTile * kLd * sizeof(T));
}

// acc (16 x 64 per warp) += A (rows r0.., K = Np, stored [row][k]) · Bt^T (Bt stored [n][k], 64 rows);
// n-tile pairs jp > jp_max are skipped.
template <typename T>
__device__ __forceinline__ void mma_rows_nk(float (&acc)[8][4], const T* A, const T* Bt, int ld, int r0, int Np,
                                            int jp_max) {
  for (int k0 = 0; k0 < Np; k0 += 16) {
    unsigned a[4];
    load_a(a, A, ld, r0, k0);
#pragma unroll
    for (int jp = 0; jp < 4; ++jp) {
      if (jp > jp_max) continue;
      unsigned bb[4];
      load_b_nk(bb, Bt, ld, jp * 16, k0);
      mma16816<T>(acc[2 * jp], a, bb[0], bb[1]);
      mma16816<T>(acc[2 * jp + 1], a, bb[2], bb[3]);
    }
  }
}

// acc += S (16 x 64 key columns, accumulators) · X (stored [s][p], ld kLd); key steps kk > kk_max skipped.
template <typename T>
__device__ __forceinline__ void mma_sx(float (&acc)[8][4], const float (&s)[8][4], const T* X, int kk_max) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    if (kk > kk_max) continue;
    const unsigned a[4] = {pack2<T>(s[2 * kk][0], s[2 * kk][1]), pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                           pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                           pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
    for (int jp = 0; jp < 4; ++jp) {
      unsigned bb[4];
      load_b_kn(bb, X, kLd, jp * 16, kk * 16);
      mma16816<T>(acc[2 * jp], a, bb[0], bb[1]);
      mma16816<T>(acc[2 * jp + 1], a, bb[2], bb[3]);
    }
  }
}

// s(t, s') *= exp(cs_t - cs_s') Δ_s' where s' <= t in the same run and t is valid, else 0.
// rows: the thread's two query tokens (chunk indices) t[0], t[1]; s0: the key tile's first token.
__device__ __forceinline__ void decay_mask(float (&s)[8][4], const ChunkTokens& tok, const int (&t)[2], int s0,
                                           int rows_left) {
  const int c4 = threadIdx.x & 3;
  float cs_t[2];
  int run_t[2];
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    cs_t[hf] = tok.cs[t[hf]];
    run_t[hf] = t[hf] < rows_left ? tok.run[t[hf]] : -1;
  }
#pragma unroll
  for (int j = 0; j < 8; ++j) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int sj = s0 + j * 8 + 2 * c4 + e;
      const float cs_s = tok.cs[sj], dt_s = tok.dt[sj];
      const int run_s = tok.run[sj];
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const bool keep = sj <= t[hf] && run_s == run_t[hf];
        s[j][2 * hf + e] = keep ? s[j][2 * hf + e] * __expf(cs_t[hf] - cs_s) * dt_s : 0.f;
      }
    }
  }
}

// Two floats stored as a pair of Cb (float or bfloat16) at dst.
__device__ __forceinline__ void store2(float* dst, float a, float b) {
  *reinterpret_cast<float2*>(dst) = make_float2(a, b);
}
__device__ __forceinline__ void store2(__nv_bfloat16* dst, float a, float b) {
  *reinterpret_cast<__nv_bfloat162*>(dst) = __floats2bfloat162_rn(a, b);
}

// C B^T of one 64 x 64 tile (query tile qt, key tile kt <= qt) of a chunk for one group, in Cb (float32,
// or bfloat16 for bfloat16 inputs): cb[((b nc + c) G + g) Q^2 + t Q + s] for chunk-local t, s, counted
// in Cb elements from the region's start; shared by the group's heads.
template <typename T, typename Cb = float>
__global__ void __launch_bounds__(kThreads) chunk_cb_kernel(SsdParams p, Layout w) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int N = int(p.dstate), Q = int(p.chunk), Np = round16(N), ldn = Np + 8, nq = Q / kTile;
  T* cs = reinterpret_cast<T*>(smem);
  T* bs = reinterpret_cast<T*>(smem + align128(kTile * ldn * sizeof(T)));
  const int qt = blockIdx.x % nq, kt = blockIdx.x / nq % nq, g = blockIdx.y;
  const int64_t c = blockIdx.x / (nq * nq), b = blockIdx.z, c0 = c * Q;
  if (kt > qt || c0 + qt * kTile >= p.seqlen) return;
  const int rows_left = int(min(int64_t(Q), p.seqlen - c0));
  const T* C = ptr<T>(p.C) + b * p.C.stride[0] + g * p.C.stride[2] + (c0 + qt * kTile) * p.C.stride[1];
  const T* B = ptr<T>(p.B) + b * p.B.stride[0] + g * p.B.stride[2] + (c0 + kt * kTile) * p.B.stride[1];
  issue_tile<T>(cs, ldn, Np, C, p.C.stride[1], p.C.stride[3], rows_left - qt * kTile, N);
  issue_tile<T>(bs, ldn, Np, B, p.B.stride[1], p.B.stride[3], rows_left - kt * kTile, N);
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
  const int r0 = int(threadIdx.x >> 5) * 16, g8 = int(threadIdx.x & 31) >> 2, c2 = 2 * int(threadIdx.x & 3);
  float acc[8][4] = {};
  mma_rows_nk<T>(acc, cs, bs, ldn, r0, Np, 3);
  Cb* out = reinterpret_cast<Cb*>(ptr<float>(p.workspace) + w.cb) +
            ((b * w.nchunks + c) * p.ngroups + g) * int64_t(Q) * Q + int64_t(qt * kTile) * Q + kt * kTile;
#pragma unroll
  for (int hf = 0; hf < 2; ++hf)
#pragma unroll
    for (int j = 0; j < 8; ++j) store2(out + (r0 + g8 + 8 * hf) * Q + 8 * j + c2, acc[j][2 * hf], acc[j][2 * hf + 1]);
}

// s = the precomputed C B^T of the thread's rows t[0], t[1] and key tile s0 (n-tile pairs > jp_max zero).
__device__ __forceinline__ void load_cb(float (&s)[8][4], const float* cb, int Q, const int (&t)[2], int s0,
                                        int jp_max) {
  const int c2 = 2 * int(threadIdx.x & 3);
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const float2 v = j / 2 <= jp_max ? *reinterpret_cast<const float2*>(cb + t[hf] * Q + s0 + 8 * j + c2)
                                       : make_float2(0.f, 0.f);
      s[j][2 * hf] = v.x;
      s[j][2 * hf + 1] = v.y;
    }
}

// The same from a bfloat16 C B^T.
__device__ __forceinline__ void load_cb(float (&s)[8][4], const __nv_bfloat16* cb, int Q, const int (&t)[2], int s0,
                                        int jp_max) {
  const int c2 = 2 * int(threadIdx.x & 3);
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const float2 v = j / 2 <= jp_max ? __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(
                                             cb + t[hf] * Q + s0 + 8 * j + c2))
                                       : make_float2(0.f, 0.f);
      s[j][2 * hf] = v.x;
      s[j][2 * hf + 1] = v.y;
    }
}

template <typename T, bool kPreCB>
__global__ void __launch_bounds__(kThreads, 3) chunk_scan_mma_kernel(SsdParams p, Layout w) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int P = int(p.headdim), N = int(p.dstate), Q = int(p.chunk), Np = round16(N), ldn = Np + 8;
  const size_t nb = align128(kTile * ldn * sizeof(T)), xb = align128(kTile * kLd * sizeof(T));
  ChunkTokens& tok = *reinterpret_cast<ChunkTokens*>(smem);
  unsigned char* at = smem + align128(sizeof(ChunkTokens));
  T* cq = reinterpret_cast<T*>(at);
  T* bk0 = reinterpret_cast<T*>(at + nb);            // B_k buffers (without kPreCB)
  T* bk1 = reinterpret_cast<T*>(at + (kPreCB ? 1 : 2) * nb);  // first holds H_in
  T* xk0 = reinterpret_cast<T*>(at + (kPreCB ? 2 : 3) * nb);
  T* xk1 = reinterpret_cast<T*>(at + (kPreCB ? 2 : 3) * nb + xb);
  const int nq = Q / kTile, nqp = (nq + 1) / 2, ntp = (P + kTile - 1) / kTile;
  const int qp = blockIdx.x % nqp, pt = blockIdx.x / nqp % ntp, p0 = pt * kTile;
  const int64_t c = blockIdx.x / nqp / ntp, b = blockIdx.z, c0 = c * Q, L = p.seqlen;
  const int h = blockIdx.y, g = h / int(p.nheads / p.ngroups);
  if (c0 + qp * kTile >= L) return;
  const int rows_left = int(min(int64_t(Q), L - c0));  // valid tokens of the chunk
  // the block's query tiles: qp and nq - 1 - qp (nq + 1 key tiles together: balanced blocks)
  const int q_last = nq - 1 - qp, npass = q_last != qp && c0 + q_last * kTile < L ? 2 : 1;
  const int64_t bs1 = p.B.stride[1], xs1 = p.x.stride[1];
  const T* bsrc = ptr<T>(p.B) + b * p.B.stride[0] + g * p.B.stride[2] + c0 * bs1;
  const T* xsrc = ptr<T>(p.x) + b * p.x.stride[0] + h * p.x.stride[2] + p0 * p.x.stride[3] + c0 * xs1;
  const T* csrc = ptr<T>(p.C) + b * p.C.stride[0] + g * p.C.stride[2] + c0 * p.C.stride[1];
  const T* hin = reinterpret_cast<const T*>(ptr<float>(p.workspace) + w.hin) +
                 ((b * w.nchunks + c) * p.nheads + h) * int64_t(P) * N + int64_t(p0) * N;
  const float* cb = ptr<float>(p.workspace) + w.cb + ((b * w.nchunks + c) * p.ngroups + g) * int64_t(Q) * Q;
#pragma unroll 1
  for (int pass = 0; pass < npass; ++pass) {
    const int qt = pass == 0 ? qp : q_last, t0 = qt * kTile;
    if (pass > 0) __syncthreads();  // the first tile's buffers are free
    issue_tile<T>(cq, ldn, Np, csrc + t0 * p.C.stride[1], p.C.stride[1], p.C.stride[3], rows_left - t0, N);
    issue_tile<T>(bk1, ldn, Np, hin, N, 1, P - p0, N);  // bk1[p][n] = H_in[p0 + p][n]
    cp_async_commit();
    if (!kPreCB) issue_tile<T>(bk0, ldn, Np, bsrc, bs1, p.B.stride[3], rows_left, N);
    issue_tile<T>(xk0, kLd, kTile, xsrc, xs1, p.x.stride[3], rows_left, P - p0);
    cp_async_commit();
    if (pass == 0) load_chunk(p, b, h, c0, Q, tok);
    cp_async_wait<1>();
    __syncthreads();

    const int warp = int(threadIdx.x >> 5), r0 = warp * 16, g8 = int(threadIdx.x & 31) >> 2;
    const int trow[2] = {t0 + r0 + g8, t0 + r0 + g8 + 8};  // the thread's two query tokens
    float acc[8][4] = {};
    mma_rows_nk<T>(acc, cq, bk1, ldn, r0, Np, 3);  // C_q H_in^T
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const float scale = trow[hf] < rows_left && tok.run[trow[hf]] == 0 ? __expf(tok.cs[trow[hf]]) : 0.f;
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[j][2 * hf] *= scale, acc[j][2 * hf + 1] *= scale;
    }
    if (!kPreCB) __syncthreads();  // H_in read: bk1 takes the second key tile
    for (int kt = 0; kt <= qt; ++kt) {
      const T* bcur = kt & 1 ? bk1 : bk0;
      const T* xcur = kt & 1 ? xk1 : xk0;
      const int lim = kt == qt ? warp : 3;  // the diagonal tile: keys up to the warp's last row
      float s[8][4] = {};
      if (kPreCB) load_cb(s, cb, Q, trow, kt * kTile, lim);  // in flight across the barrier
      if (kt < qt) {  // the next key tile into the other buffers
        const int s1 = (kt + 1) * kTile;
        if (!kPreCB)
          issue_tile<T>(kt & 1 ? bk0 : bk1, ldn, Np, bsrc + s1 * bs1, bs1, p.B.stride[3], rows_left - s1, N);
        issue_tile<T>(kt & 1 ? xk0 : xk1, kLd, kTile, xsrc + s1 * xs1, xs1, p.x.stride[3], rows_left - s1, P - p0);
      }
      cp_async_commit();
      cp_async_wait<1>();
      __syncthreads();
      if (!kPreCB) mma_rows_nk<T>(s, cq, bcur, ldn, r0, Np, lim);
      decay_mask(s, tok, trow, kt * kTile, rows_left);
      mma_sx<T>(acc, s, xcur, lim);
      if (kt < qt) __syncthreads();  // before the next issue overwrites this key tile's buffers
    }
    const T* xq = qt & 1 ? xk1 : xk0;  // the query tokens' x
    const int lc = 2 * (threadIdx.x & 3);
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int i = trow[hf] - t0;
      if (trow[hf] >= rows_left) continue;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int pl = j * 8 + lc, pp = p0 + pl;
        if (pp >= P) continue;
        const float y0 = y_out<T>(p, tok, b, h, g, c0, trow[hf], pp, acc[j][2 * hf], to_float(xq[i * kLd + pl]));
        T* dst = y_ptr<T>(p, b, c0 + trow[hf], h, pp);
        if (pp + 1 >= P) {
          *dst = from_float<T>(y0);
          continue;
        }
        const float y1 =
            y_out<T>(p, tok, b, h, g, c0, trow[hf], pp + 1, acc[j][2 * hf + 1], to_float(xq[i * kLd + pl + 1]));
        if (p.out.stride[3] == 1 && (reinterpret_cast<uintptr_t>(dst) & 3) == 0) {
          *reinterpret_cast<unsigned*>(dst) = pack2<T>(y0, y1);  // the pair in one store
        } else {
          dst[0] = from_float<T>(y0);
          dst[p.out.stride[3]] = from_float<T>(y1);
        }
      }
    }
  }
}

// The precomputed C B^T (SSM_SSD_FWD_CB=0: per head inside the chunk-output kernel), read once.
inline bool pre_cb_enabled() {
  static const bool on = [] {
    const char* v = std::getenv("SSM_SSD_FWD_CB");
    return v == nullptr || std::strcmp(v, "0") != 0;
  }();
  return on;
}

}  // namespace ssm::cuda::ssd
