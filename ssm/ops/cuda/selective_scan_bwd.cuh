// Selective scan (Mamba-1), backward, on the GPU; included once per dtype by
// selective_scan_bwd_<dtype>.cu. Blocks are laid out as in the forward (kCh channels of one batch
// row and one B/C group; kTPC lanes per channel, kNT = 4 states per lane). Nothing is saved by the
// forward, so states are recomputed from checkpoints kept in shared memory:
//   superchunk starts (every kTiles tiles; one sweep over L, only when L spans several),
//   tile starts (one sweep per superchunk), subtile starts (one sweep per tile), and the kSub
//   states of a subtile in registers; the adjoint g then runs backwards over those registers:
//   g_t = C_t dy_t + a_{t+1} g_{t+1} (+ dlast at a sequence's end), a_t = exp(dt_t A).
// dB/dC (variable) are reduced over the warp's channels, summed over the block's warps in shared
// memory and added to the (zeroed) float32 output with one atomic per (n, step) per block.
#pragma once
#include "cuda/selective_scan_fwd.cuh"

namespace ssm::cuda::scan {

template <int kTPC_>
struct BwdCfg {
  static constexpr int kNT = 4, kTPC = kTPC_, kCh = kThreads / kTPC, kNP = kNT * kTPC;
  static constexpr int kLT = 64, kSub = 16, kNSub = kLT / kSub, kTiles = 8, kWarps = kThreads / 32;
  static constexpr int kRow = kLT + 1, kBRow = kNP + 4;
  // floats: u, delta, z, dout / dy tiles; B, C tiles; per-warp dB, dC; subtile and tile checkpoints
  static constexpr int kData = 4 * kCh * kRow + 2 * kLT * kBRow + 2 * kWarps * kLT * kNP;
  static constexpr int kCk = kThreads * kNT;  // floats per checkpoint
  static constexpr int kFixed = kData + kNSub * kCk + kTiles * kCk;
  static size_t smem_bytes(int64_t nsuper) { return (kFixed + nsuper * kCk) * sizeof(float) + (kLT + 1) * sizeof(int); }
};

template <typename C>
struct BwdSmem {
  float *u, *dl, *z, *dy, *Bs, *Cs, *dBw, *dCw, *sub, *tile, *sup;
  int* seq;
  __device__ BwdSmem(float* s, int64_t nsuper) {
    u = s, dl = u + C::kCh * C::kRow, z = dl + C::kCh * C::kRow, dy = z + C::kCh * C::kRow;
    Bs = dy + C::kCh * C::kRow, Cs = Bs + C::kLT * C::kBRow;
    dBw = Cs + C::kLT * C::kBRow, dCw = dBw + C::kWarps * C::kLT * C::kNP;
    sub = dCw + C::kWarps * C::kLT * C::kNP, tile = sub + C::kNSub * C::kCk, sup = tile + C::kTiles * C::kCk;
    seq = reinterpret_cast<int*>(sup + nsuper * C::kCk);
  }
};

// Which segment a step starts, and the state it starts from (seq_idx / cu_seqlens / plain).
struct Segments {
  const SelectiveScanParams& p;
  int64_t b;
  // True when step t starts a segment: t == 0, a seq_idx change, or a nonempty sequence's first step.
  __device__ bool starts(int64_t t, const int* seqs, int tt) const {
    if (t == 0) return true;
    if (has(p.seq_idx)) return seqs[tt + 1] != seqs[tt];
    if (has(p.cu_seqlens)) return seq_of(t) != seq_of(t - 1);
    return false;
  }
  // The sequence (cu_seqlens) holding step t: the last s with cu[s] <= t.
  __device__ int64_t seq_of(int64_t t) const {
    const int* cu = ptr<int>(p.cu_seqlens);
    int64_t lo = 0, hi = p.nrows - 1;
    while (lo < hi) {
      const int64_t mid = (lo + hi + 1) / 2;
      if (cu[mid * p.cu_seqlens.stride[0]] <= t) lo = mid; else hi = mid - 1;
    }
    return lo;
  }
  // Row of initial_state / last_state for a segment starting (or ending) at t, or -1 (zeros).
  __device__ int64_t row_of(int64_t t) const {
    if (has(p.cu_seqlens)) return seq_of(t);
    return t == 0 || !has(p.seq_idx) ? b : -1;
  }
};

template <typename T, typename C>
struct BwdThread {
  const SelectiveScanParams& p;
  int64_t b, g, d, c0;
  int c, part, n0, nch;
  bool valid;
  float A2[C::kNT], Bc[C::kNT], Cc[C::kNT];
  float Dd, bias;

  __device__ float fresh(int64_t row, int n) const {
    if (row < 0 || !has(p.initial_state) || !valid || n0 + n >= p.dstate) return 0.f;
    const TensorArg& s = p.initial_state;
    return ptr<float>(s)[row * s.stride[0] + d * s.stride[1] + (n0 + n) * s.stride[2]];
  }
  __device__ float dt_of(const float* dl, int tt) const {
    const float v = dl[c * C::kRow + tt] + bias;
    return p.softplus ? softplus(v) : v;
  }
  __device__ float bval(const float* Bs, int tt, int n) const { return p.B_var ? Bs[tt * C::kBRow + n0 + n] : Bc[n]; }
  __device__ float cval(const float* Cs, int tt, int n) const { return p.C_var ? Cs[tt * C::kBRow + n0 + n] : Cc[n]; }

  // h <- the state after step tt of the loaded tile (t = t0 + tt), restarting at segment starts.
  __device__ void step(float* h, const BwdSmem<C>& sm, const Segments& seg, int64_t t, int tt) const {
    const float dt = dt_of(sm.dl, tt), du = dt * sm.u[c * C::kRow + tt];
    const bool restart = seg.starts(t, sm.seq, tt);
    const int64_t row = restart ? seg.row_of(t) : -1;
#pragma unroll
    for (int n = 0; n < C::kNT; ++n) {
      const float prev = restart ? fresh(row, n) : h[n];
      h[n] = exp2f(dt * A2[n]) * prev + du * bval(sm.Bs, tt, n);
    }
  }
};

template <typename C>
__device__ __forceinline__ float lane_sum(float v) {
#pragma unroll
  for (int off = C::kTPC / 2; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Loads the tile at t0 (u, delta, z, dout, B, C, seq ids) into shared memory.
template <typename T, typename C>
__device__ void load_bwd_tile(const SelectiveScanParams& p, const BwdSmem<C>& sm, int64_t b, int64_t g, int64_t c0,
                              int nch, int64_t t0, bool vec, bool grads) {
  const int64_t L = p.seqlen;
  using FC = Cfg<C::kNT, C::kTPC>;
  static_assert(FC::kCh == C::kCh && FC::kRow == C::kRow && FC::kBRow == C::kBRow && kLT == C::kLT, "tile layout");
  load_rows<T, FC>(sm.u, p.u, b, c0, nch, t0, L, vec);
  load_rows<T, FC>(sm.dl, p.delta, b, c0, nch, t0, L, vec);
  if (grads) {
    if (has(p.z)) load_rows<T, FC>(sm.z, p.z, b, c0, nch, t0, L, vec);
    load_rows<T, FC>(sm.dy, p.dout, b, c0, nch, t0, L, vec);
  }
  if (p.B_var) load_bc<T, FC>(sm.Bs, p.B, b, g, p.dstate, t0, L);
  if (grads && p.C_var) load_bc<T, FC>(sm.Cs, p.C, b, g, p.dstate, t0, L);
  if (has(p.seq_idx))
    for (int i = threadIdx.x; i <= C::kLT; i += kThreads) {
      const int64_t t = t0 - 1 + i < 0 ? 0 : (t0 - 1 + i < L ? t0 - 1 + i : L - 1);
      sm.seq[i] = ptr<int>(p.seq_idx)[b * p.seq_idx.stride[0] + t * p.seq_idx.stride[1]];
    }
  __syncthreads();
}

// Forward sweep over [t_begin, t_end) from the state h, writing h at every `every` steps into ck.
template <typename T, typename C>
__device__ void sweep(const BwdThread<T, C>& th, const BwdSmem<C>& sm, const Segments& seg, float* h, int64_t t_begin,
                      int64_t t_end, int64_t every, float* ck, bool vec) {
  for (int64_t t0 = t_begin; t0 < t_end; t0 += C::kLT) {
    if ((t0 - t_begin) % every == 0) {
#pragma unroll
      for (int n = 0; n < C::kNT; ++n) ck[((t0 - t_begin) / every) * C::kCk + threadIdx.x * C::kNT + n] = h[n];
    }
    __syncthreads();
    load_bwd_tile<T, C>(th.p, sm, th.b, th.g, th.c0, th.nch, t0, vec, false);
    const int steps = int(th.p.seqlen - t0 < C::kLT ? th.p.seqlen - t0 : C::kLT);
    for (int tt = 0; tt < steps; ++tt) th.step(h, sm, seg, t0 + tt, tt);
  }
}

template <typename T, typename C>
__global__ void __launch_bounds__(kThreads) scan_bwd_kernel(SelectiveScanParams p, int64_t nsuper, bool vec) {
  extern __shared__ float smem[];
  const BwdSmem<C> sm(smem, nsuper);
  const int64_t Dg = p.dim / p.ngroups, bpg = (Dg + C::kCh - 1) / C::kCh;
  BwdThread<T, C> th{p};
  th.b = blockIdx.y, th.g = blockIdx.x / bpg;
  const int64_t cg = (blockIdx.x % bpg) * C::kCh;
  th.c0 = th.g * Dg + cg;
  th.nch = int(Dg - cg < C::kCh ? Dg - cg : C::kCh);
  th.c = threadIdx.x / C::kTPC, th.part = threadIdx.x % C::kTPC, th.n0 = th.part * C::kNT;
  th.valid = th.c < th.nch;
  th.d = th.c0 + (th.valid ? th.c : 0);
  const int64_t d = th.d, L = p.seqlen, b = th.b;
#pragma unroll
  for (int n = 0; n < C::kNT; ++n) {
    const bool in = th.n0 + n < p.dstate;
    th.A2[n] = in ? ptr<float>(p.A)[d * p.A.stride[0] + (th.n0 + n) * p.A.stride[1]] * kLog2e : 0.f;
    th.Bc[n] = in && !p.B_var ? ptr<float>(p.B)[d * p.B.stride[0] + (th.n0 + n) * p.B.stride[1]] : 0.f;
    th.Cc[n] = in && !p.C_var ? ptr<float>(p.C)[d * p.C.stride[0] + (th.n0 + n) * p.C.stride[1]] : 0.f;
  }
  th.Dd = has(p.D) ? ptr<float>(p.D)[d * p.D.stride[0]] : 0.f;
  th.bias = has(p.dt_bias) ? ptr<float>(p.dt_bias)[d * p.dt_bias.stride[0]] : 0.f;
  const Segments seg{p, b};
  const int64_t super_len = int64_t(C::kTiles) * C::kLT;

  // superchunk starts: h before step 0 is a placeholder (step 0 restarts from the segment's state)
  float h[C::kNT];
#pragma unroll
  for (int n = 0; n < C::kNT; ++n) h[n] = 0.f;
  if (nsuper > 1) sweep<T, C>(th, sm, seg, h, 0, L, super_len, sm.sup, vec);

  float gc[C::kNT] = {}, dA[C::kNT] = {}, dBc[C::kNT] = {}, dCc[C::kNT] = {};
  float dD = 0.f, dbias = 0.f;
  for (int64_t s = nsuper - 1; s >= 0; --s) {
    const int64_t s_begin = s * super_len, s_end = s_begin + super_len < L ? s_begin + super_len : L;
#pragma unroll
    for (int n = 0; n < C::kNT; ++n) h[n] = nsuper > 1 ? sm.sup[s * C::kCk + threadIdx.x * C::kNT + n] : 0.f;
    sweep<T, C>(th, sm, seg, h, s_begin, s_end, C::kLT, sm.tile, vec);
    for (int64_t t0 = s_begin + ((s_end - s_begin - 1) / C::kLT) * C::kLT; t0 >= s_begin; t0 -= C::kLT) {
      __syncthreads();
      load_bwd_tile<T, C>(p, sm, b, th.g, th.c0, th.nch, t0, vec, true);
      for (int i = threadIdx.x; i < 2 * C::kWarps * C::kLT * C::kNP; i += kThreads) sm.dBw[i] = 0.f;
      const int steps = int(L - t0 < C::kLT ? L - t0 : C::kLT);
      // subtile starts within the tile
#pragma unroll
      for (int n = 0; n < C::kNT; ++n) h[n] = sm.tile[((t0 - s_begin) / C::kLT) * C::kCk + threadIdx.x * C::kNT + n];
      for (int tt = 0; tt < steps; ++tt) {
        if (tt % C::kSub == 0)
#pragma unroll
          for (int n = 0; n < C::kNT; ++n) sm.sub[(tt / C::kSub) * C::kCk + threadIdx.x * C::kNT + n] = h[n];
        th.step(h, sm, seg, t0 + tt, tt);
      }
      __syncthreads();
      for (int sb = (steps - 1) / C::kSub; sb >= 0; --sb) {
        // states after each step of the subtile, in registers
        float hs[C::kSub][C::kNT];
#pragma unroll
        for (int n = 0; n < C::kNT; ++n) h[n] = sm.sub[sb * C::kCk + threadIdx.x * C::kNT + n];
#pragma unroll
        for (int j = 0; j < C::kSub; ++j) {
          if (sb * C::kSub + j < steps) th.step(h, sm, seg, t0 + sb * C::kSub + j, sb * C::kSub + j);
#pragma unroll
          for (int n = 0; n < C::kNT; ++n) hs[j][n] = h[n];
        }
#pragma unroll
        for (int j = C::kSub - 1; j >= 0; --j) {
          const int tt = sb * C::kSub + j;
          if (tt >= steps) continue;
          const int64_t t = t0 + tt;
          const float dt_raw = sm.dl[th.c * C::kRow + tt] + th.bias;
          const float dt = p.softplus ? softplus(dt_raw) : dt_raw;
          const float u = sm.u[th.c * C::kRow + tt];
          float ysum = 0.f;
#pragma unroll
          for (int n = 0; n < C::kNT; ++n) ysum += th.cval(sm.Cs, tt, n) * hs[j][n];
          const float y = lane_sum<C>(ysum) + th.Dd * u;
          const float dout = sm.dy[th.c * C::kRow + tt];
          float dy = dout, dz = 0.f;
          if (has(p.z)) {
            const float z = sm.z[th.c * C::kRow + tt], sz = sigmoid(z);
            dy = dout * z * sz;
            dz = dout * y * sz * (1.f + z * (1.f - sz));
          }
          dD += dy * u;
          // the adjoint at step t: carry from t+1, C_t dy_t, and dlast where a sequence ends here
          const bool restart = seg.starts(t, sm.seq, tt);
          const bool ends = t == L - 1 || (has(p.cu_seqlens) && seg.seq_of(t + 1) != seg.seq_of(t));
          const int64_t end_row = ends ? (has(p.cu_seqlens) ? seg.seq_of(t) : b) : -1;
          const int64_t start_row = restart ? seg.row_of(t) : -1;
          float ddt = 0.f, dus = 0.f;
          float gB[C::kNT], gC[C::kNT];
#pragma unroll
          for (int n = 0; n < C::kNT; ++n) {
            float gn = gc[n] + th.cval(sm.Cs, tt, n) * dy;
            if (end_row >= 0 && has(p.dlast) && th.valid && th.n0 + n < p.dstate)
              gn += ptr<float>(p.dlast)[end_row * p.dlast.stride[0] + d * p.dlast.stride[1] + (th.n0 + n) * p.dlast.stride[2]];
            const float a = exp2f(dt * th.A2[n]);
            const float hp = restart ? th.fresh(start_row, n) : (j > 0 ? hs[j - 1][n] : sm.sub[sb * C::kCk + threadIdx.x * C::kNT + n]);
            const float Bn = th.bval(sm.Bs, tt, n);
            gC[n] = hs[j][n] * dy;
            gB[n] = gn * dt * u;
            ddt += gn * (th.A2[n] * (1.f / kLog2e) * a * hp + u * Bn);
            dus += gn * dt * Bn;
            dA[n] += gn * dt * a * hp;
            if (restart && start_row >= 0 && has(p.dinitial_state) && th.valid && th.n0 + n < p.dstate) {
              const TensorArg& di = p.dinitial_state;
              ptr<float>(di)[start_row * di.stride[0] + d * di.stride[1] + (th.n0 + n) * di.stride[2]] = a * gn;
            }
            gc[n] = restart ? 0.f : a * gn;
          }
          ddt = lane_sum<C>(ddt);
          dus = lane_sum<C>(dus) + th.Dd * dy;
          const float ddelta = p.softplus && dt_raw <= 20.f ? ddt * sigmoid(dt_raw) : ddt;
          dbias += ddelta;
          if (th.part == 0) {
            sm.u[th.c * C::kRow + tt] = dus, sm.dl[th.c * C::kRow + tt] = ddelta;
            if (has(p.z)) sm.z[th.c * C::kRow + tt] = dz;
          }
          // dB, dC: constant -> per thread; variable -> summed over the warp's channels
#pragma unroll
          for (int n = 0; n < C::kNT; ++n) {
            if (!th.valid) gB[n] = 0.f, gC[n] = 0.f;
            if (!p.B_var) dBc[n] += gB[n];
            if (!p.C_var) dCc[n] += gC[n];
#pragma unroll
            for (int off = 16; off >= C::kTPC; off /= 2) {
              if (p.B_var) gB[n] += __shfl_xor_sync(0xffffffffu, gB[n], off);
              if (p.C_var) gC[n] += __shfl_xor_sync(0xffffffffu, gC[n], off);
            }
          }
          if (threadIdx.x % 32 < C::kTPC) {
            const int w = threadIdx.x / 32;
#pragma unroll
            for (int n = 0; n < C::kNT; ++n) {
              sm.dBw[(w * C::kLT + tt) * C::kNP + th.n0 + n] = gB[n];
              sm.dCw[(w * C::kLT + tt) * C::kNP + th.n0 + n] = gC[n];
            }
          }
        }
      }
      __syncthreads();
      // the tile's du, ddelta, dz back to memory; dB/dC tile into the group's rows
      using FC = Cfg<C::kNT, C::kTPC>;
      store_rows<T, FC>(p.du, sm.u, b, th.c0, th.nch, t0, L, vec);
      store_rows<T, FC>(p.ddelta, sm.dl, b, th.c0, th.nch, t0, L, vec);
      if (has(p.z)) store_rows<T, FC>(p.dz, sm.z, b, th.c0, th.nch, t0, L, vec);
      for (int i = threadIdx.x; i < steps * C::kNP; i += kThreads) {
        const int tt = i / C::kNP, n = i % C::kNP;
        if (n >= p.dstate) continue;
        float vb = 0.f, vc = 0.f;
        for (int w = 0; w < C::kWarps; ++w)
          vb += sm.dBw[(w * C::kLT + tt) * C::kNP + n], vc += sm.dCw[(w * C::kLT + tt) * C::kNP + n];
        const int64_t t = t0 + tt;
        if (p.B_var) atomicAdd(ptr<float>(p.dB) + b * p.dB.stride[0] + th.g * p.dB.stride[1] + n * p.dB.stride[2] + t * p.dB.stride[3], vb);
        if (p.C_var) atomicAdd(ptr<float>(p.dC) + b * p.dC.stride[0] + th.g * p.dC.stride[1] + n * p.dC.stride[2] + t * p.dC.stride[3], vc);
      }
    }
  }
  // per-(batch, channel) parameter gradients; empty cu_seqlens sequences pass dlast to dinit
  if (th.valid) {
#pragma unroll
    for (int n = 0; n < C::kNT; ++n) {
      if (th.n0 + n >= p.dstate) continue;
      ptr<float>(p.dA)[b * p.dA.stride[0] + d * p.dA.stride[1] + (th.n0 + n) * p.dA.stride[2]] = dA[n];
      if (!p.B_var) ptr<float>(p.dB)[b * p.dB.stride[0] + d * p.dB.stride[1] + (th.n0 + n) * p.dB.stride[2]] = dBc[n];
      if (!p.C_var) ptr<float>(p.dC)[b * p.dC.stride[0] + d * p.dC.stride[1] + (th.n0 + n) * p.dC.stride[2]] = dCc[n];
    }
    if (th.part == 0 && has(p.dD)) ptr<float>(p.dD)[b * p.dD.stride[0] + d * p.dD.stride[1]] = dD;
    if (th.part == 0 && has(p.ddt_bias)) ptr<float>(p.ddt_bias)[b * p.ddt_bias.stride[0] + d * p.ddt_bias.stride[1]] = dbias;
    if (has(p.cu_seqlens) && has(p.dinitial_state)) {
      const int* cu = ptr<int>(p.cu_seqlens);
      for (int64_t s = 0; s < p.nrows; ++s) {
        if (cu[s * p.cu_seqlens.stride[0]] != cu[(s + 1) * p.cu_seqlens.stride[0]]) continue;
        for (int n = 0; n < C::kNT && th.n0 + n < p.dstate; ++n) {
          const float v = has(p.dlast) ? ptr<float>(p.dlast)[s * p.dlast.stride[0] + d * p.dlast.stride[1] + (th.n0 + n) * p.dlast.stride[2]] : 0.f;
          ptr<float>(p.dinitial_state)[s * p.dinitial_state.stride[0] + d * p.dinitial_state.stride[1] + (th.n0 + n) * p.dinitial_state.stride[2]] = v;
        }
      }
    }
  }
}

static __global__ void zero_bc(SelectiveScanParams p) {
  // variable dB / dC: (nslices * B, G, N, L) float32, summed into by the blocks
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t L = p.seqlen, N = p.dstate, per = p.ngroups * N * L;
  if (i >= p.nslices * p.batch * per) return;
  const int64_t r = i / per, g = (i / (N * L)) % p.ngroups, n = (i / L) % N, t = i % L;
  if (p.B_var) ptr<float>(p.dB)[r * p.dB.stride[0] + g * p.dB.stride[1] + n * p.dB.stride[2] + t * p.dB.stride[3]] = 0.f;
  if (p.C_var) ptr<float>(p.dC)[r * p.dC.stride[0] + g * p.dC.stride[1] + n * p.dC.stride[2] + t * p.dC.stride[3]] = 0.f;
}

#define SSM_SCAN_BWD_N_SWITCH(N, C, ...)                              \
  [&] {                                                               \
    if (N <= 4) { using C = BwdCfg<1>; return __VA_ARGS__(); }        \
    if (N <= 8) { using C = BwdCfg<2>; return __VA_ARGS__(); }        \
    if (N <= 16) { using C = BwdCfg<4>; return __VA_ARGS__(); }       \
    using C = BwdCfg<8>; return __VA_ARGS__();                        \
  }()

template <typename T>
void launch_bwd(const SelectiveScanParams& p, cudaStream_t stream) {
  if (p.B_var || p.C_var) {
    const int64_t total = p.nslices * p.batch * p.ngroups * p.dstate * p.seqlen;
    if (total > 0) zero_bc<<<ceil_div(total, 256), 256, 0, stream>>>(p);
  }
  const bool vec = rows_vectorizable<T>(p.u, 2) && rows_vectorizable<T>(p.delta, 2) &&
                   (!has(p.z) || rows_vectorizable<T>(p.z, 2)) && rows_vectorizable<T>(p.dout, 2) &&
                   rows_vectorizable<T>(p.du, 2) && rows_vectorizable<T>(p.ddelta, 2) &&
                   (!has(p.dz) || rows_vectorizable<T>(p.dz, 2));
  SSM_SCAN_BWD_N_SWITCH(p.dstate, C, [&] {
    const int64_t super_len = int64_t(C::kTiles) * C::kLT;
    const int64_t nsuper = p.seqlen > 0 ? (p.seqlen + super_len - 1) / super_len : 1;
    const size_t smem = C::smem_bytes(nsuper);
    SSM_CHECK(smem <= 227 * 1024, "selective_scan_bwd", "seqlen ", p.seqlen, " is too long for the CUDA backward");
    const int64_t Dg = p.dim / p.ngroups;
    const dim3 grid(unsigned(p.ngroups * ((Dg + C::kCh - 1) / C::kCh)), unsigned(p.batch));
    auto kernel = scan_bwd_kernel<T, C>;
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    kernel<<<grid, kThreads, smem, stream>>>(p, nsuper, vec);
  });
}

}  // namespace ssm::cuda::scan
