// SSD backward steps 0, 3 and 4: C B^T per (chunk, group) once for all its heads (every dtype); then, for
// float32 (half / bfloat16: ssd_bwd_mma.cuh), per (chunk, 64-token tile, head) the gradients of C (target
// tiles) and of x and B (source tiles), from 64 x 64 FMA tile products. The dC and dB blocks first build the masked products of their tile against
// every partner tile of the chunk into a 64 x Q strip in shared memory, then multiply the strip by the
// partners' 64-wide slices of B / C; the dx block builds each 64 x 64 masked tile from the C B^T cache.
#pragma once
#include "cuda/ssd_bwd_common.cuh"

namespace ssm::cuda::ssd {

template <typename T>
size_t bwd_chunk_smem(int Q, int strips) {
  return align128(sizeof(ChunkTokens)) + strips * align128(kTile * (Q + 8) * sizeof(T)) +
         2 * align128(kTile * kLdT * sizeof(T)) + 2 * align128(kTile * kLdS * sizeof(float)) +
         5 * align128(kTile * sizeof(float));
}

struct ChunkSmem {
  unsigned char* at;
  template <typename V> __device__ V* take(int64_t bytes) {
    V* r = reinterpret_cast<V*>(at);
    at += align128(bytes);
    return r;
  }
};

// f[r * kLdS + q] = src[r * rs + q] for a 64 x 64 float32 tile (16-byte aligned rows), asynchronously:
// the next load_tile's wait (or cp.async.wait_all) completes it.
__device__ __forceinline__ void issue_tile_f(float* f, const float* src, int64_t rs) {
  for (int e = threadIdx.x; e < kTile * kTile / 4; e += kThreads) {
    const int r = e / (kTile / 4), c4 = e % (kTile / 4) * 4;
    cp_async16(f + r * kLdS + c4, src + r * rs + c4, true);
  }
}

// Decay factors of the pairs of a target tile t0.. after a source tile s0.. (t0 > s0): exp(cs_t - cs_s) =
// late[t - t0] · early[s - s0] about the source tile's last token, both factors <= 1 for a decaying A.
__device__ __forceinline__ void pair_factors(const ChunkTokens& tok, int t0, int s0, float* late, float* early) {
  const float ref = tok.cs[s0 + kTile - 1];
  if (threadIdx.x < kTile) late[threadIdx.x] = __expf(tok.cs[t0 + threadIdx.x] - ref);
  else early[threadIdx.x - kTile] = __expf(ref - tok.cs[s0 + threadIdx.x - kTile]);
}

// C_t · B_s for the tile pair (t-tile i, s-tile j <= i) of chunk c and group g, into cb and (transposed) cbt.
template <typename T>
__global__ void __launch_bounds__(kThreads) bwd_cb_kernel(SsdParams p, Layout w, BwdLayout v) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int N = int(p.dstate), Q = int(p.chunk), nq = Q / kTile, npairs = nq * (nq + 1) / 2;
  ChunkSmem sm{smem};
  T* sa = sm.take<T>(kTile * kLdT * sizeof(T));
  T* sb = sm.take<T>(kTile * kLdT * sizeof(T));
  float* f1 = sm.take<float>(kTile * kLdS * sizeof(float));
  int pair = blockIdx.x % npairs, i = 0;
  while (pair > i) pair -= ++i;
  const int j = pair, g = blockIdx.y, t0 = i * kTile, s0 = j * kTile;
  const int64_t c = blockIdx.x / npairs, b = blockIdx.z, c0 = c * Q;
  const int nv = int(min(int64_t(Q), p.seqlen - c0));
  if (t0 >= nv) return;
  const TensorArg &Bt = p.B, &Ct = p.C;
  const T* cq = ptr<T>(Ct) + b * Ct.stride[0] + g * Ct.stride[2] + (c0 + t0) * Ct.stride[1];
  const T* bk = ptr<T>(Bt) + b * Bt.stride[0] + g * Bt.stride[2] + (c0 + s0) * Bt.stride[1];
  Tile<T> cb;
  cb.zero();
  gemm_nt<T>(cb, sa, sb, cq, Ct.stride[1], Ct.stride[3], nv - t0, bk, Bt.stride[1], Bt.stride[3], nv - s0, N);
  cb.store(f1, kLdS);
  __syncthreads();
  const int64_t base = ((b * w.nchunks + c) * p.ngroups + g) * int64_t(Q) * Q;
  float* ws = ptr<float>(p.workspace);
  for (int e = threadIdx.x; e < kTile * kTile; e += kThreads) {
    const int r = e / kTile, q = e % kTile;
    ws[v.cb + base + int64_t(t0 + r) * Q + s0 + q] = f1[r * kLdS + q];
    ws[v.cbt + base + int64_t(s0 + r) * Q + t0 + q] = f1[q * kLdS + r];
  }
}

// Per target tile i of chunk c: dC (per head), the decay-pair sums over s < k <= t for t in the tile,
// and Y_t = Σ_n C_t[n] (e0_t dY_t H_in)[n].
template <typename T>
__global__ void __launch_bounds__(kThreads) bwd_dc_kernel(SsdParams p, Layout w, BwdLayout v) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int P = int(p.headdim), N = int(p.dstate), Q = int(p.chunk), ldq = Q + 8, nq = Q / kTile;
  ChunkSmem sm{smem};
  ChunkTokens& tok = *sm.take<ChunkTokens>(sizeof(ChunkTokens));
  T* strip = sm.take<T>(kTile * ldq * sizeof(T));
  T* sa = sm.take<T>(kTile * kLdT * sizeof(T));
  T* sb = sm.take<T>(kTile * kLdT * sizeof(T));
  float* f1 = sm.take<float>(kTile * kLdS * sizeof(float));
  float* f2 = sm.take<float>(kTile * kLdS * sizeof(float));
  float* carry = sm.take<float>(kTile * sizeof(float));
  float* ysum = sm.take<float>(kTile * sizeof(float));
  float* late = sm.take<float>(kTile * sizeof(float));
  float* early = sm.take<float>(kTile * sizeof(float));
  const int i = blockIdx.x % nq, h = blockIdx.y, g = h / int(p.nheads / p.ngroups), t0 = i * kTile;
  const int64_t c = blockIdx.x / nq, b = blockIdx.z, c0 = c * Q, L = p.seqlen;
  if (c0 + t0 >= L) return;
  load_chunk(p, b, h, c0, Q, tok);
  const int nv = int(min(int64_t(Q), L - c0));
  if (threadIdx.x < kTile) carry[threadIdx.x] = 0.f, ysum[threadIdx.x] = 0.f;
  const TensorArg &X = p.x, &Bt = p.B, &Ct = p.C, &dY = p.dout;
  const T* cq = ptr<T>(Ct) + b * Ct.stride[0] + g * Ct.stride[2] + (c0 + t0) * Ct.stride[1];
  const T* dyq = ptr<T>(dY) + b * dY.stride[0] + h * dY.stride[2] + (c0 + t0) * dY.stride[1];
  const T* bk = ptr<T>(Bt) + b * Bt.stride[0] + g * Bt.stride[2] + c0 * Bt.stride[1];
  const T* xk = ptr<T>(X) + b * X.stride[0] + h * X.stride[2] + c0 * X.stride[1];
  float* pairs = ptr<float>(p.workspace) + v.pairs + (((b * p.nheads + h) * w.nchunks + c) * nq + i) * Q;
  const float* cbg = ptr<float>(p.workspace) + v.cb + ((b * w.nchunks + c) * p.ngroups + g) * int64_t(Q) * Q;
  for (int j = 0; j <= i; ++j) {
    const int s0 = j * kTile;
    issue_tile_f(f1, cbg + int64_t(t0) * Q + s0, Q);  // C B^T on (t, s), waited for by gemm_nt's loads
    if (j < i) pair_factors(tok, t0, s0, late, early);
    Tile<T> dx;
    dx.zero();
    gemm_nt<T>(dx, sa, sb, dyq, dY.stride[1], dY.stride[3], nv - t0, xk + s0 * X.stride[1], X.stride[1],
               X.stride[3], nv - s0, P);
    dx.store(f2, kLdS);
    __syncthreads();
    // strip = dY X^T ∘ L ∘ Δ_s; f1 = the decay pairs (C B^T) ∘ strip
    for (int e = threadIdx.x; e < kTile * kTile; e += kThreads) {
      const int r = e / kTile, q = e % kTile, t = t0 + r, s = s0 + q;
      const bool keep = s <= t && t < nv && tok.run[s] == tok.run[t];
      const float decay = j < i ? late[r] * early[q] : __expf(tok.cs[t] - tok.cs[s]);
      const float d = keep ? f2[r * kLdS + q] * decay * tok.dt[s] : 0.f;
      strip[r * ldq + s] = from_float<T>(d);
      f1[r * kLdS + q] = keep ? f1[r * kLdS + q] * d : 0.f;
    }
    __syncthreads();
    // f1[r][q] = carry_r + Σ_{q' < q} pair(r, q'): the pairs of target t0 + r with a source before s0 + q
    {
      const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
      for (int rr = 0; rr < 16; ++rr) {
        const int r = warp * 16 + rr;
        const float a = f1[r * kLdS + 2 * lane], a2 = f1[r * kLdS + 2 * lane + 1];
        float incl = a + a2;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
          const float n = __shfl_up_sync(0xffffffffu, incl, o);
          if (lane >= o) incl += n;
        }
        float excl = __shfl_up_sync(0xffffffffu, incl, 1);
        if (lane == 0) excl = 0.f;
        const float base = carry[r];
        f1[r * kLdS + 2 * lane] = base + excl;
        f1[r * kLdS + 2 * lane + 1] = base + excl + a;
        __syncwarp();
        if (lane == 31) carry[r] = base + incl;
      }
    }
    __syncthreads();
    // Σ over targets t >= k of the tile: the pairs crossing k = s0 + q
    if (threadIdx.x < kTile) {
      const int q = threadIdx.x;
      float sum = 0.f;
      for (int r = j < i ? 0 : q; r < kTile; ++r) sum += f1[r * kLdS + q];
      pairs[s0 + q] = sum;
    }
    __syncthreads();
  }
  // dC by 64-wide slices of N: Σ_j strip_j B_j + diag(e0) dY H_in
  const T* hin = reinterpret_cast<const T*>(ptr<float>(p.workspace) + w.hin) +
                 ((b * w.nchunks + c) * p.nheads + h) * int64_t(P) * N;
  // e0_t: the weight of the entering state in target t (late is free after the pairs)
  if (threadIdx.x < kTile) {
    const int t = t0 + threadIdx.x;
    late[threadIdx.x] = t < nv && tok.run[t] == 0 ? __expf(tok.cs[t]) : 0.f;
  }
  for (int n0 = 0; n0 < N; n0 += kTile) {
    Tile<T> acc, st;
    acc.zero();
    for (int j = 0; j <= i; ++j) {
      const int s0 = j * kTile;
      load_tile<T>(sb, kLdT, kTile, bk + s0 * Bt.stride[1] + n0 * Bt.stride[3], Bt.stride[1], Bt.stride[3], nv - s0,
                   N - n0);
      __syncthreads();
      acc.template mma<true, true>(strip + s0, ldq, sb, kLdT, kTile);
      __syncthreads();
    }
    st.zero();
    for (int p0 = 0; p0 < P; p0 += kTile) {
      load_tile<T>(sa, kLdT, kTile, dyq + p0 * dY.stride[3], dY.stride[1], dY.stride[3], nv - t0, P - p0);
      load_tile<T>(sb, kLdT, kTile, hin + int64_t(p0) * N + n0, N, 1, P - p0, N - n0);
      __syncthreads();
      for (int e = threadIdx.x; e < kTile * kTile; e += kThreads) {
        const int r = e / kTile;
        sa[r * kLdT + e % kTile] = from_float<T>(to_float(sa[r * kLdT + e % kTile]) * late[r]);
      }
      __syncthreads();
      st.template mma<true, true>(sa, kLdT, sb, kLdT, kTile);
      __syncthreads();
    }
    acc.store(f1, kLdS);
    st.store(f2, kLdS);
    load_tile<T>(sa, kLdT, kTile, cq + n0 * Ct.stride[3], Ct.stride[1], Ct.stride[3], nv - t0, N - n0);
    __syncthreads();
    float* dC = ptr<float>(p.dC);
    for (int e = threadIdx.x; e < kTile * kTile; e += kThreads) {
      const int r = e / kTile, q = e % kTile;
      if (t0 + r < nv && n0 + q < N)
        dC[b * p.dC.stride[0] + (c0 + t0 + r) * p.dC.stride[1] + h * p.dC.stride[2] + (n0 + q) * p.dC.stride[3]] =
            f1[r * kLdS + q] + f2[r * kLdS + q];
    }
    row_sums(ysum, [&](int r, int q) { return f2[r * kLdS + q] * to_float(sa[r * kLdT + q]); });
    __syncthreads();
  }
  if (threadIdx.x < kTile && t0 + threadIdx.x < nv)
    ptr<float>(p.workspace)[v.ysum + ((b * p.nheads + h) * w.nchunks + c) * Q + t0 + threadIdx.x] = ysum[threadIdx.x];
}

// The state-leaving weight e_s = exp(cs_last - cs_s) of source s on the chunk's last run, else 0 (Tok: ChunkTokens
// or the tile kernels' TileTokens).
template <typename Tok>
__device__ __forceinline__ float leave_weight(const Tok& tok, int s, int nv) {
  return s < nv && tok.run[s] == tok.run[nv - 1] ? __expf(tok.cs[nv - 1] - tok.cs[s]) : 0.f;
}

// Per source tile j of chunk c: o = (C B^T ∘ L)^T dY + diag(e) B dH_out^T, dx = Δ o + D dY, x·o, the
// source's pairs into the leaving state X_s = Δ_s e_s x_s·(B_s dH_out^T), and the tile's share of dD.
template <typename T>
__global__ void __launch_bounds__(kThreads) bwd_dx_kernel(SsdParams p, Layout w, BwdLayout v) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int P = int(p.headdim), N = int(p.dstate), Q = int(p.chunk), nq = Q / kTile;
  ChunkSmem sm{smem};
  ChunkTokens& tok = *sm.take<ChunkTokens>(sizeof(ChunkTokens));
  T* sa = sm.take<T>(kTile * kLdT * sizeof(T));
  T* sb = sm.take<T>(kTile * kLdT * sizeof(T));
  float* f1 = sm.take<float>(kTile * kLdS * sizeof(float));
  float* f2 = sm.take<float>(kTile * kLdS * sizeof(float));
  float* xo = sm.take<float>(kTile * sizeof(float));
  float* xsum = sm.take<float>(kTile * sizeof(float));
  float* late = sm.take<float>(kTile * sizeof(float));
  float* early = sm.take<float>(kTile * sizeof(float));
  float* leave = sm.take<float>(kTile * sizeof(float));
  const int j = blockIdx.x % nq, h = blockIdx.y, g = h / int(p.nheads / p.ngroups), s0 = j * kTile;
  const int64_t c = blockIdx.x / nq, b = blockIdx.z, c0 = c * Q, L = p.seqlen;
  // this tile's share of dD = Σ dY x (zero for a tile past the end)
  float* dD = has(p.dD) ? ptr<float>(p.dD) + ((b * w.nchunks + c) * nq + j) * p.dD.stride[0] + h * p.dD.stride[1]
                        : nullptr;
  if (c0 + s0 >= L) {
    for (int pp = threadIdx.x; dD && pp < P; pp += kThreads) dD[pp] = 0.f;
    return;
  }
  load_chunk(p, b, h, c0, Q, tok);
  const int nv = int(min(int64_t(Q), L - c0)), ni = (nv + kTile - 1) / kTile;
  if (threadIdx.x < kTile) {
    xo[threadIdx.x] = 0.f, xsum[threadIdx.x] = 0.f;
    leave[threadIdx.x] = leave_weight(tok, s0 + threadIdx.x, nv);
  }
  const TensorArg &X = p.x, &Bt = p.B, &dY = p.dout;
  const T* bs = ptr<T>(Bt) + b * Bt.stride[0] + g * Bt.stride[2] + (c0 + s0) * Bt.stride[1];
  const T* dyt = ptr<T>(dY) + b * dY.stride[0] + h * dY.stride[2] + c0 * dY.stride[1];
  const float* cbt = ptr<float>(p.workspace) + v.cbt + ((b * w.nchunks + c) * p.ngroups + g) * int64_t(Q) * Q;
  const T* dHout = reinterpret_cast<const T*>(ptr<float>(p.workspace) + v.dhout) +
                   ((b * w.nchunks + c) * p.nheads + h) * int64_t(P) * N;
  const T* xs = ptr<T>(X) + b * X.stride[0] + h * X.stride[2] + (c0 + s0) * X.stride[1];
  for (int p0 = 0; p0 < P; p0 += kTile) {
    Tile<T> acc, st;
    acc.zero();
    for (int i = j; i < ni; ++i) {
      const int t0 = i * kTile;
      // sa = (C B^T ∘ L)^T on (s, t) from the cached transpose (f2); sb = dY on (t, p)
      issue_tile_f(f2, cbt + int64_t(s0) * Q + t0, Q);
      if (i > j) pair_factors(tok, t0, s0, late, early);
      load_tile<T>(sb, kLdT, kTile, dyt + t0 * dY.stride[1] + p0 * dY.stride[3], dY.stride[1], dY.stride[3], nv - t0,
                   P - p0);
      __syncthreads();
      for (int e = threadIdx.x; e < kTile * kTile; e += kThreads) {
        const int r = e / kTile, q = e % kTile, s = s0 + r, t = t0 + q;
        const bool keep = s <= t && t < nv && tok.run[s] == tok.run[t];
        const float decay = i > j ? late[q] * early[r] : __expf(tok.cs[t] - tok.cs[s]);
        sa[r * kLdT + q] = from_float<T>(keep ? f2[r * kLdS + q] * decay : 0.f);
      }
      __syncthreads();
      acc.template mma<true, true>(sa, kLdT, sb, kLdT, kTile);
      __syncthreads();
    }
    st.zero();
    for (int n0 = 0; n0 < N; n0 += kTile) {
      load_tile<T>(sa, kLdT, kTile, bs + n0 * Bt.stride[3], Bt.stride[1], Bt.stride[3], nv - s0, N - n0);
      load_tile<T>(sb, kLdT, kTile, dHout + int64_t(p0) * N + n0, N, 1, P - p0, N - n0);
      __syncthreads();
      st.template mma<true, false>(sa, kLdT, sb, kLdT, kTile);  // (dH_out^T)(n, p) = sb[p][n]
      __syncthreads();
    }
    acc.store(f1, kLdS);
    st.store(f2, kLdS);
    // the source tile's x and dY on (s, p)
    load_tile<T>(sa, kLdT, kTile, xs + p0 * X.stride[3], X.stride[1], X.stride[3], nv - s0, P - p0);
    load_tile<T>(sb, kLdT, kTile, dyt + s0 * dY.stride[1] + p0 * dY.stride[3], dY.stride[1], dY.stride[3], nv - s0,
                 P - p0);
    __syncthreads();
    if (dD && threadIdx.x < kTile && p0 + threadIdx.x < P) {
      float sum = 0.f;
      for (int r = 0; r < kTile; ++r) sum += to_float(sa[r * kLdT + threadIdx.x]) * to_float(sb[r * kLdT + threadIdx.x]);
      dD[p0 + threadIdx.x] = sum;
    }
    for (int e = threadIdx.x; e < kTile * kTile; e += kThreads) {
      const int r = e / kTile, q = e % kTile, s = s0 + r, pp = p0 + q;
      float o = 0.f, xv = 0.f;
      if (s < nv && pp < P) {
        o = f1[r * kLdS + q] + leave[r] * f2[r * kLdS + q];
        float d = tok.dt[s] * o;
        if (has(p.D)) d += ptr<float>(p.D)[h * p.D.stride[0] + pp * p.D.stride[1]] * to_float(sb[r * kLdT + q]);
        ptr<T>(p.dx)[b * p.dx.stride[0] + (c0 + s) * p.dx.stride[1] + h * p.dx.stride[2] + pp * p.dx.stride[3]] =
            from_float<T>(d);
        xv = to_float(sa[r * kLdT + q]);
      }
      f1[r * kLdS + q] = o * xv;
      f2[r * kLdS + q] *= xv;
    }
    __syncthreads();
    row_sums(xo, [&](int r, int q) { return f1[r * kLdS + q]; });
    row_sums(xsum, [&](int r, int q) { return f2[r * kLdS + q]; });
    __syncthreads();
  }
  if (threadIdx.x < kTile && s0 + threadIdx.x < nv) {
    const int s = s0 + threadIdx.x;
    const int64_t at = ((b * p.nheads + h) * w.nchunks + c) * Q + s;
    float* ws = ptr<float>(p.workspace);
    ws[v.xo + at] = xo[threadIdx.x];
    ws[v.xsum + at] = tok.dt[s] * leave[threadIdx.x] * xsum[threadIdx.x];
  }
}

// Per source tile j of chunk c: dB (per head) = Δ ((dY X^T ∘ L)^T C + diag(e) X dH_out).
template <typename T>
__global__ void __launch_bounds__(kThreads) bwd_db_kernel(SsdParams p, Layout w, BwdLayout v) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int P = int(p.headdim), N = int(p.dstate), Q = int(p.chunk), ldq = Q + 8, nq = Q / kTile;
  ChunkSmem sm{smem};
  ChunkTokens& tok = *sm.take<ChunkTokens>(sizeof(ChunkTokens));
  T* s3 = sm.take<T>(kTile * ldq * sizeof(T));
  T* sa = sm.take<T>(kTile * kLdT * sizeof(T));
  T* sb = sm.take<T>(kTile * kLdT * sizeof(T));
  float* f1 = sm.take<float>(kTile * kLdS * sizeof(float));
  sm.take<float>(kTile * kLdS * sizeof(float));
  float* late = sm.take<float>(kTile * sizeof(float));
  float* early = sm.take<float>(kTile * sizeof(float));
  const int j = blockIdx.x % nq, h = blockIdx.y, g = h / int(p.nheads / p.ngroups), s0 = j * kTile;
  const int64_t c = blockIdx.x / nq, b = blockIdx.z, c0 = c * Q, L = p.seqlen;
  if (c0 + s0 >= L) return;
  load_chunk(p, b, h, c0, Q, tok);
  const int nv = int(min(int64_t(Q), L - c0)), ni = (nv + kTile - 1) / kTile;
  const TensorArg &X = p.x, &Ct = p.C, &dY = p.dout;
  const T* xs = ptr<T>(X) + b * X.stride[0] + h * X.stride[2] + (c0 + s0) * X.stride[1];
  const T* ct = ptr<T>(Ct) + b * Ct.stride[0] + g * Ct.stride[2] + c0 * Ct.stride[1];
  const T* dyt = ptr<T>(dY) + b * dY.stride[0] + h * dY.stride[2] + c0 * dY.stride[1];
  for (int i = j; i < ni; ++i) {
    const int t0 = i * kTile;
    if (i > j) pair_factors(tok, t0, s0, late, early);
    Tile<T> dx;
    dx.zero();
    gemm_nt<T>(dx, sa, sb, xs, X.stride[1], X.stride[3], nv - s0, dyt + t0 * dY.stride[1], dY.stride[1],
               dY.stride[3], nv - t0, P);
    dx.store(f1, kLdS);
    __syncthreads();
    // s3 = (dY X^T ∘ L)^T, rows s, columns t
    for (int e = threadIdx.x; e < kTile * kTile; e += kThreads) {
      const int r = e / kTile, q = e % kTile, s = s0 + r, t = t0 + q;
      const bool keep = s <= t && t < nv && tok.run[s] == tok.run[t];
      const float decay = i > j ? late[q] * early[r] : __expf(tok.cs[t] - tok.cs[s]);
      s3[r * ldq + t] = from_float<T>(keep ? f1[r * kLdS + q] * decay : 0.f);
    }
    __syncthreads();
  }
  const T* dHout = reinterpret_cast<const T*>(ptr<float>(p.workspace) + v.dhout) +
                   ((b * w.nchunks + c) * p.nheads + h) * int64_t(P) * N;
  float* dB = ptr<float>(p.dB);
  if (threadIdx.x < kTile) late[threadIdx.x] = leave_weight(tok, s0 + threadIdx.x, nv);  // free after the strip
  for (int n0 = 0; n0 < N; n0 += kTile) {
    Tile<T> acc;
    acc.zero();
    for (int i = j; i < ni; ++i) {
      const int t0 = i * kTile;
      load_tile<T>(sb, kLdT, kTile, ct + t0 * Ct.stride[1] + n0 * Ct.stride[3], Ct.stride[1], Ct.stride[3], nv - t0,
                   N - n0);
      __syncthreads();
      acc.template mma<true, true>(s3 + t0, ldq, sb, kLdT, kTile);
      __syncthreads();
    }
    for (int p0 = 0; p0 < P; p0 += kTile) {
      load_tile<T>(sa, kLdT, kTile, xs + p0 * X.stride[3], X.stride[1], X.stride[3], nv - s0, P - p0);
      load_tile<T>(sb, kLdT, kTile, dHout + int64_t(p0) * N + n0, N, 1, P - p0, N - n0);
      __syncthreads();
      for (int e = threadIdx.x; e < kTile * kTile; e += kThreads) {
        const int r = e / kTile;
        sa[r * kLdT + e % kTile] = from_float<T>(to_float(sa[r * kLdT + e % kTile]) * late[r]);
      }
      __syncthreads();
      acc.template mma<true, true>(sa, kLdT, sb, kLdT, kTile);
      __syncthreads();
    }
    acc.store(f1, kLdS);
    __syncthreads();
    for (int e = threadIdx.x; e < kTile * kTile; e += kThreads) {
      const int r = e / kTile, q = e % kTile, s = s0 + r;
      if (s < nv && n0 + q < N)
        dB[b * p.dB.stride[0] + (c0 + s) * p.dB.stride[1] + h * p.dB.stride[2] + (n0 + q) * p.dB.stride[3]] =
            tok.dt[s] * f1[r * kLdS + q];
    }
    __syncthreads();
  }
}

template <typename Kernel>
void launch_bwd(Kernel kernel, dim3 grid, size_t smem, cudaStream_t s, const SsdParams& p, const Layout& w,
                const BwdLayout& v) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;
  if (smem > 48 * 1024) {  // and the largest shared-memory carveout: the tile kernels fit 3-4 blocks of 50-65 KB
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, int(cudaSharedmemCarveoutMaxShared));
  }
  kernel<<<grid, kThreads, smem, s>>>(p, w, v);
}

template <typename T>
void launch_bwd_cb(const SsdParams& p, const Layout& w, const BwdLayout& v, cudaStream_t s) {
  const int64_t nq = p.chunk / kTile;
  const dim3 grid(unsigned(w.nchunks * nq * (nq + 1) / 2), unsigned(p.ngroups), unsigned(p.batch));
  const size_t smem = 2 * align128(kTile * kLdT * sizeof(T)) + align128(kTile * kLdS * sizeof(float));
  launch_bwd(bwd_cb_kernel<T>, grid, smem, s, p, w, v);
}

template <typename T>
void launch_bwd_dc(const SsdParams& p, const Layout& w, const BwdLayout& v, cudaStream_t s) {
  const dim3 grid(unsigned(w.nchunks * (p.chunk / kTile)), unsigned(p.nheads), unsigned(p.batch));
  launch_bwd(bwd_dc_kernel<T>, grid, bwd_chunk_smem<T>(int(p.chunk), 1), s, p, w, v);
}

template <typename T>
void launch_bwd_dx(const SsdParams& p, const Layout& w, const BwdLayout& v, cudaStream_t s) {
  const dim3 grid(unsigned(w.nchunks * (p.chunk / kTile)), unsigned(p.nheads), unsigned(p.batch));
  launch_bwd(bwd_dx_kernel<T>, grid, bwd_chunk_smem<T>(int(p.chunk), 0), s, p, w, v);
  launch_bwd(bwd_db_kernel<T>, grid, bwd_chunk_smem<T>(int(p.chunk), 1), s, p, w, v);
}

}  // namespace ssm::cuda::ssd
