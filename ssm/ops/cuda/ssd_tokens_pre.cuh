// load_chunk (ssd_common.cuh) in two steps, so that a kernel can fetch the next head's dt while it works
// on the current head: dt_fetch loads the raw dt of the thread's tokens (i = threadIdx.x + k kThreads)
// into registers, load_chunk_pre builds the chunk's tokens from them. Same arithmetic as load_chunk.
#pragma once
#include "cuda/ssd_common.cuh"

namespace ssm::cuda::ssd {

constexpr int kTokPerThread = kMaxChunk / kThreads;

__device__ __forceinline__ void dt_fetch(const SsdParams& p, int64_t b, int h, int64_t c0, int Q,
                                         float (&v)[kTokPerThread]) {
  const float* dt = ptr<float>(p.dt) + b * p.dt.stride[0] + h * p.dt.stride[2];
#pragma unroll
  for (int k = 0; k < kTokPerThread; ++k) {
    const int i = int(threadIdx.x) + k * kThreads;
    v[k] = i < Q && c0 + i < p.seqlen ? dt[(c0 + i) * p.dt.stride[1]] : 0.f;
  }
}

// delta() of a raw dt value v
__device__ __forceinline__ float delta_of(const SsdParams& p, int h, float v) {
  if (has(p.dt_bias)) v += ptr<float>(p.dt_bias)[h * p.dt_bias.stride[0]];
  if (p.dt_softplus) v = softplus(v);
  return fminf(fmaxf(v, p.dt_lo), p.dt_hi);
}

// load_chunk with the raw dt from dt_fetch. Block-wide (syncs).
__device__ inline void load_chunk_pre(const SsdParams& p, int64_t b, int h, int64_t c0, int Q, ChunkTokens& s,
                                      const float (&v)[kTokPerThread]) {
  const float A = ptr<float>(p.A)[h * p.A.stride[0]];
#pragma unroll
  for (int k = 0; k < kTokPerThread; ++k) {
    const int i = int(threadIdx.x) + k * kThreads;
    const int64_t t = c0 + i;
    const bool valid = i < Q && t < p.seqlen;
    const float d = valid ? delta_of(p, h, v[k]) : 0.f;
    const int sg = valid ? seg_of(p, b, t) : 0;
    s.dt[i] = p.inject_unit ? (valid ? 1.f : 0.f) : d;
    s.cs[i] = d * A;
    s.seg[i] = sg;
    s.run[i] = valid && i > 0 && sg != seg_of(p, b, t - 1) ? 1 : 0;
  }
  if (threadIdx.x == 0)
    s.continues = c0 > 0 && c0 < p.seqlen && seg_of(p, b, c0) == seg_of(p, b, c0 - 1);
  __syncthreads();
  block_scan(s.cs, s.ftot);
  block_scan(s.run, s.itot);
  for (int i = threadIdx.x; i < Q && c0 + i < p.seqlen; i += kThreads)
    if (i == 0 || s.run[i] != s.run[i - 1]) s.runstart[s.run[i]] = i;
  __syncthreads();
}

}  // namespace ssm::cuda::ssd
