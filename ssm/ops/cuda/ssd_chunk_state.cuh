// SSD step 1: per (chunk, head, 64 x 64 tile of P x N) the chunk's own state
// S_c[p, n] = sum over the chunk's last run of x_t[p] · Δ_t exp(cs_last - cs_t) B_t[n]
// (a 64 x Q by Q x 64 product on tensor cores), and the chunk record for the state pass. Float32
// runs this kernel; half and bfloat16 the one of ssd_chunk_state_mma.cuh, which holds the launcher.
#pragma once
#include "cuda/ssd_common.cuh"
#include "cuda/ssd_tile.cuh"

namespace ssm::cuda::ssd {

constexpr int kLd = kTile + 8;       // row stride of 64-wide element tiles (bank spread)
constexpr int kLdF = kTile + 4;      // row stride of 64-wide float staging tiles

template <typename T>
size_t chunk_state_smem() {
  return align128(sizeof(ChunkTokens)) + 2 * align128(kTile * kLd * sizeof(T)) + kTile * kLdF * sizeof(float);
}

// The record of chunk c (see Rec) from its tokens; `last` is the chunk's last valid token.
__device__ inline void write_record(float* rec, const ChunkTokens& tok, int last) {
  const int lr = tok.run[last], rs = tok.runstart[lr];
  rec[kDecayAll] = __expf(tok.cs[last]);
  rec[kDecayLastRun] = __expf(tok.cs[last] - cs_before(tok, rs));
  rec[kHasReset] = __int_as_float(lr > 0 ? 1 : 0);
  rec[kContinues] = __int_as_float(tok.continues);
  rec[kSegFirst] = __int_as_float(tok.seg[0]);
  rec[kSegLast] = __int_as_float(tok.seg[last]);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) chunk_state_kernel(SsdParams p, Layout w) {
  extern __shared__ __align__(128) unsigned char smem[];
  ChunkTokens& tok = *reinterpret_cast<ChunkTokens*>(smem);
  T* xs = reinterpret_cast<T*>(smem + align128(sizeof(ChunkTokens)));
  T* bs = reinterpret_cast<T*>(reinterpret_cast<unsigned char*>(xs) + align128(kTile * kLd * sizeof(T)));
  float* stage = reinterpret_cast<float*>(reinterpret_cast<unsigned char*>(bs) + align128(kTile * kLd * sizeof(T)));
  const int P = int(p.headdim), N = int(p.dstate), Q = int(p.chunk);
  const int ntn = (N + kTile - 1) / kTile, ntiles = (P + kTile - 1) / kTile * ntn;
  const int64_t c = blockIdx.x / ntiles, b = blockIdx.z, c0 = c * Q;
  const int tile = blockIdx.x % ntiles, p0 = tile / ntn * kTile, n0 = tile % ntn * kTile;
  const int h = blockIdx.y, g = h / int(p.nheads / p.ngroups);
  load_chunk(p, b, h, c0, Q, tok);
  const int nvalid = int(min(int64_t(Q), p.seqlen - c0)), last = nvalid - 1, lr = tok.run[last];
  float* ws = ptr<float>(p.workspace);
  if (tile == 0 && threadIdx.x == 0)
    write_record(ws + w.record + ((b * p.nheads + h) * w.nchunks + c) * kRecord, tok, last);

  // weight of token k in the chunk state: Δ_k exp(cs_last - cs_k) on the last run, else 0
  float* wt = stage;
  for (int k = threadIdx.x; k < Q; k += kThreads)
    wt[k] = k < nvalid && tok.run[k] == lr ? tok.dt[k] * __expf(tok.cs[last] - tok.cs[k]) : 0.f;
  const T* xsrc = ptr<T>(p.x) + b * p.x.stride[0] + h * p.x.stride[2] + p0 * p.x.stride[3];
  const T* bsrc = ptr<T>(p.B) + b * p.B.stride[0] + g * p.B.stride[2] + n0 * p.B.stride[3];
  Tile<T> acc;
  acc.zero();
  for (int k0 = 0; k0 < nvalid; k0 += kTile) {
    // xs[i][j] = x[t, p0 + j]; bs[i][j] = B[t, n0 + j] wt[t]
    const int64_t t = c0 + k0;
    load_tile<T>(xs, kLd, kTile, xsrc + t * p.x.stride[1], p.x.stride[1], p.x.stride[3], nvalid - k0, P - p0);
    load_tile<T>(bs, kLd, kTile, bsrc + t * p.B.stride[1], p.B.stride[1], p.B.stride[3], nvalid - k0, N - n0);
    __syncthreads();
    for (int e = threadIdx.x; e < kTile * kTile; e += kThreads)
      bs[e / kTile * kLd + e % kTile] = from_float<T>(to_float(bs[e / kTile * kLd + e % kTile]) * wt[k0 + e / kTile]);
    __syncthreads();
    acc.template mma<false, true>(xs, kLd, bs, kLd, kTile);  // (X^T)(p, t) = xs[t][p]
    __syncthreads();
  }
  acc.store(stage, kLdF);
  __syncthreads();
  float* states = ws + w.states + ((b * w.nchunks + c) * p.nheads + h) * int64_t(P) * N;
  for (int e = threadIdx.x; e < kTile * kTile; e += kThreads) {
    const int i = e / kTile, j = e % kTile;
    if (p0 + i < P && n0 + j < N) states[int64_t(p0 + i) * N + n0 + j] = stage[i * kLdF + j];
  }
}

}  // namespace ssm::cuda::ssd
