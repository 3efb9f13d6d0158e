// SSD backward steps 1 and 2: the output gradient's pull on the state entering each chunk,
// dS_c = Σ_{t in the first run} exp(cs_t) dY_t ⊗ C_t (a 64 x Q by Q x 64 product per P x N tile; this kernel
// for float32, ssd_bwd_mma.cuh's for half / bfloat16), then the adjoint states passed backwards over the chunks
// (elementwise over P x N) with the partial sums of <H_in(c), dH_out(c)> for finalize.
#pragma once
#include "cuda/ssd_bwd_finalize.cuh"
#include "cuda/ssd_state_passing.cuh"

namespace ssm::cuda::ssd {

template <typename T>
size_t bwd_dstate_smem() {
  return align128(sizeof(ChunkTokens)) + 2 * align128(kTile * kLdT * sizeof(T)) + align128(kMaxChunk * sizeof(float));
}

template <typename T>
__global__ void __launch_bounds__(kThreads) bwd_dstate_kernel(SsdParams p, Layout w, BwdLayout v) {
  extern __shared__ __align__(128) unsigned char smem[];
  unsigned char* at = smem;
  ChunkTokens& tok = *reinterpret_cast<ChunkTokens*>(at);
  T* ys = reinterpret_cast<T*>(at += align128(sizeof(ChunkTokens)));
  T* cs = reinterpret_cast<T*>(at += align128(kTile * kLdT * sizeof(T)));
  float* wt = reinterpret_cast<float*>(at += align128(kTile * kLdT * sizeof(T)));
  const int P = int(p.headdim), N = int(p.dstate), Q = int(p.chunk);
  const int ntn = (N + kTile - 1) / kTile, ntiles = (P + kTile - 1) / kTile * ntn;
  const int64_t c = blockIdx.x / ntiles, b = blockIdx.z, c0 = c * Q;
  const int tile = blockIdx.x % ntiles, p0 = tile / ntn * kTile, n0 = tile % ntn * kTile;
  const int h = blockIdx.y, g = h / int(p.nheads / p.ngroups);
  load_chunk(p, b, h, c0, Q, tok);
  const int nvalid = int(min(int64_t(Q), p.seqlen - c0));
  // weight of token t: exp(cs_t) on the first run (the one that sees H_in)
  for (int t = threadIdx.x; t < Q; t += kThreads) wt[t] = t < nvalid && tok.run[t] == 0 ? __expf(tok.cs[t]) : 0.f;
  const T* ysrc = ptr<T>(p.dout) + b * p.dout.stride[0] + h * p.dout.stride[2] + p0 * p.dout.stride[3];
  const T* csrc = ptr<T>(p.C) + b * p.C.stride[0] + g * p.C.stride[2] + n0 * p.C.stride[3];
  Tile<T> acc;
  acc.zero();
  for (int k0 = 0; k0 < nvalid; k0 += kTile) {
    const int64_t t = c0 + k0;
    load_tile<T>(ys, kLdT, kTile, ysrc + t * p.dout.stride[1], p.dout.stride[1], p.dout.stride[3], nvalid - k0, P - p0);
    load_tile<T>(cs, kLdT, kTile, csrc + t * p.C.stride[1], p.C.stride[1], p.C.stride[3], nvalid - k0, N - n0);
    __syncthreads();
    for (int e = threadIdx.x; e < kTile * kTile; e += kThreads)
      cs[e / kTile * kLdT + e % kTile] = from_float<T>(to_float(cs[e / kTile * kLdT + e % kTile]) * wt[k0 + e / kTile]);
    __syncthreads();
    acc.template mma<false, true>(ys, kLdT, cs, kLdT, kTile);  // (dY^T)(p, t) = ys[t][p]
    __syncthreads();
  }
  // stage through the (now free) element tiles' space as float
  float* stage = reinterpret_cast<float*>(ys);
  acc.store(stage, kLdS);
  __syncthreads();
  float* dst = ptr<float>(p.workspace) + v.dstate + ((b * w.nchunks + c) * p.nheads + h) * int64_t(P) * N;
  for (int e = threadIdx.x; e < kTile * kTile; e += kThreads) {
    const int i = e / kTile, j = e % kTile;
    if (p0 + i < P && n0 + j < N) dst[int64_t(p0 + i) * N + n0 + j] = stage[i * kLdS + j];
  }
}

// Reverse over chunks, V consecutive elements per thread: the chunks' dS_c and H_in(c) (hin, + its residue v.hinlo
// from the state pass with kSplit) loaded kAhead at a time; writes dH_out(c) in T (and its residue with kSplit),
// dinitial = dH_in(0), and per block and chunk the partial sum of H_in(c) · dH_out(c) over the block's elements (the
// pairs through the chunk) into the chunk's first float32 slot of the block (finalize sums them: through_span).
template <typename T, bool kSplit, int V>
__global__ void __launch_bounds__(kThreads) bwd_state_kernel(SsdParams p, Layout w, BwdLayout v) {
  __shared__ float red[2][4][kThreads / 32];
  const int64_t PN = p.headdim * p.dstate, blk = int64_t(blockIdx.x) * kThreads * V, e0 = blk + threadIdx.x * V;
  const bool on = e0 < PN;  // (every thread takes part in the block sums)
  const int h = blockIdx.y, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t b = blockIdx.z, nc = w.nchunks, step = p.nheads * PN, base = b * nc * step + h * PN;
  float* ws = ptr<float>(p.workspace);
  const float* rec = ws + w.record + (b * p.nheads + h) * nc * kRecord;
  float* slot = ws + v.dstate + base;  // dS_c in; the block's partials out (at its first element)
  T* slot_t = reinterpret_cast<T*>(ws + v.dhout) + base + e0;
  T* slot_lo = reinterpret_cast<T*>(ws + v.dhlo) + base + e0;
  const T* hin = reinterpret_cast<const T*>(ws + w.hin) + base + e0;
  const T* hinlo = reinterpret_cast<const T*>(ws + v.hinlo) + base + e0;  // split: H_in = hin + hinlo (the state pass)
  int pp[V], nn[V];
  float dH[V];
#pragma unroll
  for (int u = 0; u < V; ++u) {
    pp[u] = int((e0 + u) / p.dstate), nn[u] = int((e0 + u) % p.dstate);
    dH[u] = on && has(p.dfinal) ? at4<float>(p.dfinal, b, h, pp[u], nn[u]) : 0.f;
  }
  constexpr int kAhead = 4;
  for (int64_t top = nc - 1, q = 0; top >= 0; top -= kAhead, q ^= 1) {
    Pack<float, V> dS[kAhead], Hin[kAhead];
    float decay[kAhead];
    int flags[kAhead];  // reset (1), continues (2): the records loaded with the states, not after each chunk's stores
#pragma unroll
    for (int u = 0; u < kAhead; ++u) {
      const int64_t c = top - u;
      if (!on || c < 0) continue;
      const float* r = rec + c * kRecord;
      decay[u] = r[kDecayAll];
      flags[u] = (__float_as_int(r[kHasReset]) != 0 ? 1 : 0) | (__float_as_int(r[kContinues]) != 0 ? 2 : 0);
      dS[u] = *reinterpret_cast<const Pack<float, V>*>(slot + c * step + e0);
      const Pack<T, V> hv = *reinterpret_cast<const Pack<T, V>*>(hin + c * step);
      Pack<T, V> lv;
      if (kSplit) lv = *reinterpret_cast<const Pack<T, V>*>(hinlo + c * step);
#pragma unroll
      for (int k = 0; k < V; ++k) Hin[u].v[k] = to_float(hv.v[k]) + (kSplit ? to_float(lv.v[k]) : 0.f);
    }
    float th[kAhead];
#pragma unroll
    for (int u = 0; u < kAhead; ++u) {
      const int64_t c = top - u;
      th[u] = 0.f;
      if (!on || c < 0) continue;
      const bool reset = flags[u] & 1, cont = flags[u] & 2;
      Pack<T, V> hi, lo;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        hi.v[k] = from_float<T>(dH[k]);
        lo.v[k] = from_float<T>(dH[k] - to_float(hi.v[k]));
        th[u] += Hin[u].v[k] * dH[k];
        const float dH_in = dS[u].v[k] + (reset ? 0.f : decay[u] * dH[k]);
        if (c == 0 && has(p.dinitial))
          ptr<float>(p.dinitial)[b * p.dinitial.stride[0] + h * p.dinitial.stride[1] + pp[k] * p.dinitial.stride[2] +
                                 nn[k] * p.dinitial.stride[3]] = dH_in;
        dH[k] = c == 0 || cont ? dH_in : 0.f;
      }
      *reinterpret_cast<Pack<T, V>*>(slot_t + c * step) = hi;
      if (kSplit) *reinterpret_cast<Pack<T, V>*>(slot_lo + c * step) = lo;
    }
#pragma unroll
    for (int u = 0; u < kAhead; ++u) {
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) th[u] += __shfl_xor_sync(0xffffffffu, th[u], o);
      if (lane == 0) red[q][u][warp] = th[u];
    }
    __syncthreads();
    if (threadIdx.x < kAhead && top - int64_t(threadIdx.x) >= 0) {  // the chunk's partial, in a fixed order
      float t = 0.f;
      for (int i = 0; i < kThreads / 32; ++i) t += red[q][threadIdx.x][i];
      slot[(top - threadIdx.x) * step + blk] = t;
    }
  }
}

template <typename T>
void launch_bwd_dstate(const SsdParams& p, const Layout& w, const BwdLayout& v, cudaStream_t s) {
  const int64_t tiles = ((p.headdim + kTile - 1) / kTile) * ((p.dstate + kTile - 1) / kTile);
  const dim3 grid(unsigned(w.nchunks * tiles), unsigned(p.nheads), unsigned(p.batch));
  const size_t smem = bwd_dstate_smem<T>();
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;
  if (smem > 48 * 1024) cudaFuncSetAttribute(bwd_dstate_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  bwd_dstate_kernel<T><<<grid, kThreads, smem, s>>>(p, w, v);
}

template <typename T>
void launch_bwd_state(const SsdParams& p, const Layout& w, const BwdLayout& v, cudaStream_t s) {
  const int64_t PN = p.headdim * p.dstate;
  const dim3 grid(ceil_div(PN, through_span(PN)), unsigned(p.nheads), unsigned(p.batch));
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;
  if (PN % 4 == 0) {
    if (v.dhlo) bwd_state_kernel<T, true, 4><<<grid, kThreads, 0, s>>>(p, w, v);
    else bwd_state_kernel<T, false, 4><<<grid, kThreads, 0, s>>>(p, w, v);
  } else {
    if (v.dhlo) bwd_state_kernel<T, true, 1><<<grid, kThreads, 0, s>>>(p, w, v);
    else bwd_state_kernel<T, false, 1><<<grid, kThreads, 0, s>>>(p, w, v);
  }
}

}  // namespace ssm::cuda::ssd
