// SSD backward step 1 for half / bfloat16 on register fragments: dS_c = dY^T diag(e0) C per (chunk, head), the
// forward chunk state's product with dY, C and e0_t = exp(cs_t) on the chunk's first run. For N <= 128 the forward's
// multi-head kernel computes it (session 9) from the token rows that the recompute's tokens kernel wrote (v.tok):
// no load_chunk per (head, tile), C once per head quad; N > 128 keeps bwd_dstate_mma_kernel (per 64 x 64 tile,
// load_chunk, writes v.tok).
#pragma once
#include "cuda/ssd_bwd_mma.cuh"
#include "cuda/ssd_chunk_state_heads.cuh"

namespace ssm::cuda::ssd {

// Step 1 on register fragments: per (chunk, head, 64 x 64 tile of P x N) dS_c = dY^T diag(e0) C over the
// chunk's tokens, e0_t = exp(cs_t) on the first run (the forward's chunk-state product with dY, C, e0).
template <typename T>
__global__ void __launch_bounds__(kThreads) bwd_dstate_mma_kernel(SsdParams p, Layout w, BwdLayout v) {
  extern __shared__ __align__(128) unsigned char smem[];
  MmaSmem sm{smem};
  ChunkTokens& tok = *sm.take<ChunkTokens>(1);
  float* wt = sm.take<float>(kMaxChunk);
  T* ys0 = sm.take<T>(kTile * kLd);
  T* ys1 = sm.take<T>(kTile * kLd);
  T* cs0 = sm.take<T>(kTile * kLd);
  T* cs1 = sm.take<T>(kTile * kLd);
  const int P = int(p.headdim), N = int(p.dstate), Q = int(p.chunk);
  const int ntn = (N + kTile - 1) / kTile, ntiles = (P + kTile - 1) / kTile * ntn;
  const int64_t c = blockIdx.x / ntiles, b = blockIdx.z, c0 = c * Q;
  const int tile = int(blockIdx.x % ntiles), p0 = tile / ntn * kTile, n0 = tile % ntn * kTile;
  const int h = blockIdx.y, g = h / int(p.nheads / p.ngroups);
  const int nv = int(min(int64_t(Q), p.seqlen - c0)), nk = (nv + kTile - 1) / kTile;
  const TensorArg &dY = p.dout, &Ct = p.C;
  const int64_t yr = dY.stride[1], cr = Ct.stride[1];
  const T* ysrc = ptr<T>(dY) + b * dY.stride[0] + h * dY.stride[2] + p0 * dY.stride[3] + c0 * yr;
  const T* csrc = ptr<T>(Ct) + b * Ct.stride[0] + g * Ct.stride[2] + n0 * Ct.stride[3] + c0 * cr;
  issue_rows_n<T>(ys0, kLd, kTile, ysrc, yr, dY.stride[3], nv, P - p0);
  issue_rows_n<T>(cs0, kLd, kTile, csrc, cr, Ct.stride[3], nv, N - n0);
  cp_async_commit();
  load_chunk(p, b, h, c0, Q, tok);
  for (int k = threadIdx.x; k < kMaxChunk; k += kThreads)
    wt[k] = k < nv && tok.run[k] == 0 ? __expf(tok.cs[k]) : 0.f;
  if (tile == 0) {  // the token data for the tile kernels
    float* dst = ptr<float>(p.workspace) + v.tok + ((b * p.nheads + h) * w.nchunks + c) * 3 * kMaxChunk;
    for (int k = threadIdx.x; k < kMaxChunk; k += kThreads)
      dst[k] = tok.dt[k], dst[kMaxChunk + k] = tok.cs[k], dst[2 * kMaxChunk + k] = __int_as_float(tok.run[k]);
  }
  const int r0 = int(threadIdx.x >> 5) * 16;
  float acc[8][4] = {};
  for (int kt = 0; kt < nk; ++kt) {
    if (kt + 1 < nk) {
      const int s1 = (kt + 1) * kTile;
      issue_rows_n<T>(kt & 1 ? ys0 : ys1, kLd, kTile, ysrc + s1 * yr, yr, dY.stride[3], nv - s1, P - p0);
      issue_rows_n<T>(kt & 1 ? cs0 : cs1, kLd, kTile, csrc + s1 * cr, cr, Ct.stride[3], nv - s1, N - n0);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    state_tile_mma<T>(acc, kt & 1 ? ys1 : ys0, kt & 1 ? cs1 : cs0, wt + kt * kTile, r0);
    if (kt + 1 < nk) __syncthreads();
  }
  float* dst = ptr<float>(p.workspace) + v.dstate + ((b * w.nchunks + c) * p.nheads + h) * int64_t(P) * N;
  const int g8 = int(threadIdx.x & 31) >> 2, c2 = 2 * int(threadIdx.x & 3);
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const int pp = p0 + r0 + g8 + 8 * hf;
    if (pp >= P) continue;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int nn = n0 + 8 * j + c2;
      if (nn < N) dst[int64_t(pp) * N + nn] = acc[j][2 * hf];
      if (nn + 1 < N) dst[int64_t(pp) * N + nn + 1] = acc[j][2 * hf + 1];
    }
  }
}

// dS_c by the multi-head chunk-state kernel (N <= 128, v.tok written by the tokens kernel).
inline bool bwd_dstate_heads(const SsdParams& p) { return p.dtype != DType::f32 && p.dstate <= 2 * kTile; }

template <typename T>
void launch_bwd_dstate_mma(const SsdParams& p, const Layout& w, const BwdLayout& v, cudaStream_t s) {
  if (bwd_dstate_heads(p)) {
    launch_state_product<T>(p, w, StateProduct{p.dout, p.C, v.tok, v.dstate, true}, s);
    return;
  }
  const int64_t tiles = ((p.headdim + kTile - 1) / kTile) * ((p.dstate + kTile - 1) / kTile);
  const size_t smem = align128(sizeof(ChunkTokens)) + align128(kMaxChunk * sizeof(float)) +
                      4 * align128(kTile * kLd * sizeof(T));
  const dim3 grid(unsigned(w.nchunks * tiles), unsigned(p.nheads), unsigned(p.batch));
  launch_bwd(bwd_dstate_mma_kernel<T>, grid, smem, s, p, w, v);
}

}  // namespace ssm::cuda::ssd
