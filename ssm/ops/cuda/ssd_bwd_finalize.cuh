// SSD backward step 5, per (chunk, head): the gradient of each token's log-decay Δ_k A as the sum of
// the genuine pair terms crossing k (inside the chunk, from the entering state, into the leaving
// state, and through the chunk), never as a difference of larger sums; then ddt through the clamp
// and softplus, and the chunk's share of dA.
#pragma once
#include "cuda/ssd_bwd_common.cuh"

namespace ssm::cuda::ssd {

// The block's sum of v (every thread gets it), in a fixed order. Block-wide (syncs).
__device__ inline float block_sum(float v, float* red) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  float t = 0.f;
  for (int i = 0; i < kThreads / 32; ++i) t += red[i];
  __syncthreads();
  return t;
}

// Elements per block of bwd_state_kernel (V = 4 per thread where P N allows): the partial sums of
// H_in(c) · dH_out(c) lie in chunk c's float32 dS slots at multiples of this span.
__host__ __device__ inline int64_t through_span(int64_t PN) { return kThreads * (PN % 4 == 0 ? 4 : 1); }

// The chunk's tokens: from the backward's token rows (v.tok: half / bfloat16; the recompute's tokens kernel or
// dstate wrote them), else load_chunk.
__device__ inline void finalize_tokens(const SsdParams& p, const Layout& w, const BwdLayout& v, int64_t b, int h,
                                       int64_t c, ChunkTokens& tok) {
  if (v.tok == 0) {
    load_chunk(p, b, h, c * p.chunk, int(p.chunk), tok);
    return;
  }
  const float* src = ptr<float>(p.workspace) + v.tok + ((b * p.nheads + h) * w.nchunks + c) * 3 * kMaxChunk;
  for (int k = threadIdx.x; k < kMaxChunk; k += kThreads)
    tok.dt[k] = src[k], tok.cs[k] = src[kMaxChunk + k], tok.run[k] = __float_as_int(src[2 * kMaxChunk + k]);
  __syncthreads();
}

template <typename T>
__global__ void __launch_bounds__(kThreads) bwd_finalize_kernel(SsdParams p, Layout w, BwdLayout v) {
  __shared__ ChunkTokens tok;
  __shared__ float ry[kMaxChunk], rx[kMaxChunk], red[kThreads / 32];
  const int Q = int(p.chunk), nq = Q / kTile, h = blockIdx.y;
  const int64_t c = blockIdx.x, b = blockIdx.z, c0 = c * Q, PN = p.headdim * p.dstate;
  finalize_tokens(p, w, v, b, h, c, tok);
  const int nv = int(min(int64_t(Q), p.seqlen - c0)), last = nv - 1, ni = (nv + kTile - 1) / kTile;
  const int64_t bhc = (b * p.nheads + h) * w.nchunks + c;
  const float* ws = ptr<float>(p.workspace);
  // ry: Y reversed (its inclusive scan gives Σ_{t >= k}); rx: X shifted by one (Σ_{s < k})
  for (int k = threadIdx.x; k < kMaxChunk; k += kThreads) {
    float y = 0.f, x = 0.f;
    for (int sl = 0; k < nv && sl < v.ny; ++sl) y += ws[v.ysum + (bhc * v.ny + sl) * Q + k];
    for (int sl = 0; k > 0 && k - 1 < nv && sl < v.nx; ++sl) x += ws[v.xsum + (bhc * v.nx + sl) * Q + k - 1];
    ry[kMaxChunk - 1 - k] = y;
    rx[k] = x;
  }
  // pairs through the chunk: exp(cs_last) <H_in, dH_out> when no sequence starts inside it (bwd_state's partials)
  float th = 0.f;
  if (tok.run[last] == 0) {
    const float* part = ws + v.dstate + ((b * w.nchunks + c) * p.nheads + h) * PN;
    const int64_t span = through_span(PN);
    for (int64_t j = threadIdx.x; j * span < PN; j += kThreads) th += part[j * span];
  }
  const float through = block_sum(th, red) * __expf(tok.cs[last]);
  block_scan(ry, tok.ftot);
  block_scan(rx, tok.ftot);
  const float A = ptr<float>(p.A)[h * p.A.stride[0]];
  float da = 0.f;
  for (int k = threadIdx.x; k < nv; k += kThreads) {
    float intra = 0.f;
    for (int i = k / kTile; i < ni; ++i) intra += ws[v.pairs + (bhc * nq + i) * Q + k];
    const float dl = intra + ry[kMaxChunk - 1 - k] + rx[k] + through, d = tok.dt[k];
    da += d * dl;
    float g = A * dl;
    for (int sl = 0; sl < v.nx; ++sl) g += ws[v.xo + (bhc * v.nx + sl) * Q + k];
    // through the clamp and softplus of dt + dt_bias
    const int64_t t = c0 + k;
    float raw = ptr<float>(p.dt)[b * p.dt.stride[0] + t * p.dt.stride[1] + h * p.dt.stride[2]];
    if (has(p.dt_bias)) raw += ptr<float>(p.dt_bias)[h * p.dt_bias.stride[0]];
    const float sp = p.dt_softplus ? softplus(raw) : raw;
    if (!(sp >= p.dt_lo && sp <= p.dt_hi)) g = 0.f;
    if (p.dt_softplus && raw <= 20.f) g *= sigmoid(raw);
    ptr<float>(p.ddt)[b * p.ddt.stride[0] + t * p.ddt.stride[1] + h * p.ddt.stride[2]] = g;
  }
  const float total = block_sum(da, red);
  if (threadIdx.x == 0) ptr<float>(p.dA)[(b * p.nheads + h) * p.dA.stride[0] + c * p.dA.stride[1]] = total;
}

template <typename T>
void launch_bwd_finalize(const SsdParams& p, const Layout& w, const BwdLayout& v, cudaStream_t s) {
  const dim3 grid(unsigned(w.nchunks), unsigned(p.nheads), unsigned(p.batch));
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;
  bwd_finalize_kernel<T><<<grid, kThreads, 0, s>>>(p, w, v);
}

}  // namespace ssm::cuda::ssd
