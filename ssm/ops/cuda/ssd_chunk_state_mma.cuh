// SSD step 1 for half / bfloat16 on register fragments: per (chunk, head, 64 x 64 tile of P x N)
// S_c = X^T diag(w) B over the chunk's tokens, w_t = Δ_t exp(cs_last - cs_t) on the last run, else 0.
// Warp w owns P rows 16w..16w+15; X^T fragments come from the [t][p] tile with ldmatrix.trans and
// are scaled by w in registers; X / B tiles are double-buffered with cp.async; the float32 state
// goes out as float2 stores from the accumulators.
#pragma once
#include <type_traits>

#include "cuda/ssd_chunk_state.cuh"
#include "cuda/ssd_mma.cuh"

namespace ssm::cuda::ssd {

template <typename T>
size_t chunk_state_mma_smem() {
  return align128(sizeof(ChunkTokens)) + align128(kMaxChunk * sizeof(float)) + 4 * align128(kTile * kLd * sizeof(T));
}

// acc (16 P rows x 64 N columns) += X^T diag(w) B over one 64-token tile (xs [t][p], bs [t][n]).
template <typename T>
__device__ __forceinline__ void state_tile_mma(float (&acc)[8][4], const T* xs, const T* bs, const float* wt, int r0) {
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
    for (int jp = 0; jp < 4; ++jp) {
      unsigned bb[4];
      load_b_kn(bb, bs, kLd, jp * 16, k0);
      mma16816<T>(acc[2 * jp], a, bb[0], bb[1]);
      mma16816<T>(acc[2 * jp + 1], a, bb[2], bb[3]);
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) chunk_state_mma_kernel(SsdParams p, Layout w) {
  extern __shared__ __align__(128) unsigned char smem[];
  ChunkTokens& tok = *reinterpret_cast<ChunkTokens*>(smem);
  float* wt = reinterpret_cast<float*>(smem + align128(sizeof(ChunkTokens)));
  unsigned char* at = smem + align128(sizeof(ChunkTokens)) + align128(kMaxChunk * sizeof(float));
  const size_t tb = align128(kTile * kLd * sizeof(T));
  T* xs0 = reinterpret_cast<T*>(at);
  T* xs1 = reinterpret_cast<T*>(at + tb);
  T* bs0 = reinterpret_cast<T*>(at + 2 * tb);
  T* bs1 = reinterpret_cast<T*>(at + 3 * tb);
  const int P = int(p.headdim), N = int(p.dstate), Q = int(p.chunk);
  const int ntn = (N + kTile - 1) / kTile, ntiles = (P + kTile - 1) / kTile * ntn;
  const int64_t c = blockIdx.x / ntiles, b = blockIdx.z, c0 = c * Q;
  const int tile = blockIdx.x % ntiles, p0 = tile / ntn * kTile, n0 = tile % ntn * kTile;
  const int h = blockIdx.y, g = h / int(p.nheads / p.ngroups);
  const int nvalid = int(min(int64_t(Q), p.seqlen - c0)), last = nvalid - 1, nk = (nvalid + kTile - 1) / kTile;
  const int64_t xr = p.x.stride[1], br = p.B.stride[1];
  const T* xsrc = ptr<T>(p.x) + b * p.x.stride[0] + h * p.x.stride[2] + p0 * p.x.stride[3] + c0 * xr;
  const T* bsrc = ptr<T>(p.B) + b * p.B.stride[0] + g * p.B.stride[2] + n0 * p.B.stride[3] + c0 * br;
  issue_tile<T>(xs0, kLd, kTile, xsrc, xr, p.x.stride[3], nvalid, P - p0);  // in flight during load_chunk
  issue_tile<T>(bs0, kLd, kTile, bsrc, br, p.B.stride[3], nvalid, N - n0);
  cp_async_commit();
  load_chunk(p, b, h, c0, Q, tok);
  const int lr = tok.run[last];
  float* ws = ptr<float>(p.workspace);
  if (tile == 0 && threadIdx.x == 0)
    write_record(ws + w.record + ((b * p.nheads + h) * w.nchunks + c) * kRecord, tok, last);
  for (int k = threadIdx.x; k < kMaxChunk; k += kThreads)
    wt[k] = k < nvalid && tok.run[k] == lr ? tok.dt[k] * __expf(tok.cs[last] - tok.cs[k]) : 0.f;

  const int r0 = int(threadIdx.x >> 5) * 16;
  float acc[8][4] = {};
  for (int kt = 0; kt < nk; ++kt) {
    if (kt + 1 < nk) {  // the next token tile into the other buffers
      const int s1 = (kt + 1) * kTile;
      issue_tile<T>(kt & 1 ? xs0 : xs1, kLd, kTile, xsrc + s1 * xr, xr, p.x.stride[3], nvalid - s1, P - p0);
      issue_tile<T>(kt & 1 ? bs0 : bs1, kLd, kTile, bsrc + s1 * br, br, p.B.stride[3], nvalid - s1, N - n0);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    state_tile_mma<T>(acc, kt & 1 ? xs1 : xs0, kt & 1 ? bs1 : bs0, wt + kt * kTile, r0);
    if (kt + 1 < nk) __syncthreads();  // before the next issue overwrites this tile's buffers
  }
  // acc[j][2 hf + e] = S_c[p0 + r0 + lane / 4 + 8 hf][n0 + 8 j + 2 (lane % 4) + e]
  float* states = ws + w.states + ((b * w.nchunks + c) * p.nheads + h) * int64_t(P) * N;
  const int g8 = int(threadIdx.x & 31) >> 2, c2 = 2 * int(threadIdx.x & 3);
  const bool pairs = N % 2 == 0;
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const int pp = p0 + r0 + g8 + 8 * hf;
    if (pp >= P) continue;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int nn = n0 + 8 * j + c2;
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

}  // namespace ssm::cuda::ssd
