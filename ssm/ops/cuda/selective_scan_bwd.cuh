// Selective scan (Mamba-1), backward, on the GPU; included once per dtype by
// selective_scan_bwd_<dtype>.cu. A block takes kWarps channels of one batch row and one B/C
// group, a warp per channel; each lane owns kItems consecutive steps of a chunk of
// kChunk = 32 * kItems steps, and the warp walks L chunk by chunk, one state entry n at a time.
// The recurrence h_t = a'_t h_{t-1} + b_t and the adjoint e_t = a'_t (c_t + e_{t+1})
// (c_t = C_t dy_t, g_t = c_t + e_{t+1} = dL/dh_t) are warp scans of (decay, offset) pairs after a
// lane-local composition. A segment start (t = 0, seq_idx change, cu_seqlens start) has a' = 0
// and b_t += a_t * fresh. Phase 1 (L > kChunk): a forward pass stores the state before each chunk
// in the workspace chunk_states (B, D, nchunks, N) float32. Phase 2 runs the chunks in reverse,
// recomputes the chunk's states from its start, and accumulates per-step gradients in registers
// and per-n ones in per-warp shared slots. Variable dB/dC are summed over the block's channels in
// shared memory, then added to the zeroed float32 output by coalesced atomics; the grid puts the
// batch row fastest so that concurrent blocks add into different rows.
#pragma once
#include "cuda/selective_scan_warp.cuh"

namespace ssm::cuda::scan_bwd {

using namespace scan_warp;
constexpr int kThreads = 128, kWarps = kThreads / 32, kMaxN = 256;

template <int kItems_>
struct Cfg {
  static constexpr int kItems = kItems_, kChunk = 32 * kItems;
  static constexpr int kXRow = kChunk + kChunk / 32;  // dB/dC row of a warp: one pad word per 32
};

template <int kXRow>
struct Shared {
  float ecarry[2][kWarps][kMaxN];      // per warp: adjoint entering a chunk from the next one, by chunk parity
  float acc[3][kWarps][kMaxN];         // per warp (channel): dA, constant dB, constant dC
  float xbuf[2][kWarps][2][kXRow];     // per warp: a chunk's dB, dC of one n; double-buffered
};

// Phase 1: the state before each chunk c >= 1 into chunk_states[b, d, c, :] (lane 31 carries it).
template <typename T, typename K>
__device__ void chunk_starts(const Warp<T, K>& wp, int64_t nchunks, const Vec& vec) {
  const SelectiveScanParams& p = wp.p;
  for (int64_t c = 0; c + 1 < nchunks; ++c) {
    const int64_t t = c * K::kChunk + wp.lane * K::kItems;
    float u[K::kItems], dt[K::kItems], Bv[K::kItems];
    wp.load_u_dt(u, dt, t, vec.rows);
    const unsigned rmask = wp.start_mask(t);
    for (int64_t n = 0; n < p.dstate; ++n) {
      const float A2 = ptr<float>(p.A)[wp.d * p.A.stride[0] + n * p.A.stride[1]] * kLog2e;
      wp.load_bc(Bv, p.B, p.B_var, n, t, vec.B);
      float FA = 1.f, Fb = 0.f;
#pragma unroll
      for (int i = 0; i < K::kItems; ++i) {
        float a = exp2f(dt[i] * A2), bb = dt[i] * u[i] * Bv[i];
        if (rmask >> i & 1u) bb += a * wp.fresh(t + i, n), a = 0.f;
        Fb = fmaf(a, Fb, bb), FA *= a;
      }
      float Pe, qe;
      warp_scan<true>(FA, Fb, Pe, qe, wp.lane);
      if (wp.lane == 31 && wp.valid) wp.chunk_state(c + 1, n) = fmaf(FA, c > 0 ? wp.chunk_state(c, n) : 0.f, Fb);
    }
  }
  __syncwarp();
}

// Per-step values of one chunk that do not depend on n.
template <int kItems>
struct Steps {
  float u[kItems], dt[kItems], dy[kItems], dzf[kItems];   // dy: dout * silu(z); dzf: dz per unit y
  float du[kItems], ddt[kItems], y[kItems];               // accumulated over n
  unsigned rmask, emask;
};

// Variable dB / dC of one n: summed over the block's warps in shared memory, then coalesced atomics.
template <typename T, typename K>
__device__ __forceinline__ void add_dbc(const Warp<T, K>& wp, float (*xb)[2][K::kXRow], int64_t tc, int64_t n) {
  const SelectiveScanParams& p = wp.p;
  __syncthreads();
  for (int q = threadIdx.x; q < 2 * K::kChunk; q += kThreads) {
    const int which = q / K::kChunk, j = q % K::kChunk;
    const int64_t tt = tc + j;
    if (tt >= wp.L || !(which == 0 ? p.B_var : p.C_var)) continue;
    float v = 0.f;
#pragma unroll
    for (int k = 0; k < kWarps; ++k) v += xb[k][which][j + j / 32];
    const TensorArg& o = which == 0 ? p.dB : p.dC;
    atomicAdd(ptr<float>(o) + wp.b * o.stride[0] + wp.g * o.stride[1] + n * o.stride[2] + tt * o.stride[3], v);
  }
}

// Phase 2 for one chunk and one state entry n.
template <typename T, typename K>
__device__ __forceinline__ void chunk_state_bwd(const Warp<T, K>& wp, Shared<K::kXRow>& sh, Steps<K::kItems>& s,
                                                int64_t c, int64_t n, int& it, const Vec& vec) {
  constexpr int kI = K::kItems;
  const SelectiveScanParams& p = wp.p;
  const int64_t tc = c * K::kChunk, t = tc + wp.lane * kI;
  const float An = ptr<float>(p.A)[wp.d * p.A.stride[0] + n * p.A.stride[1]], A2 = An * kLog2e;
  const float hstart = c > 0 ? wp.chunk_state(c, n) : 0.f;
  const float ecin = sh.ecarry[(c + 1) & 1][wp.w][n];
  float Bv[kI], Cv[kI], a[kI], h[kI];
  wp.load_bc(Bv, p.B, p.B_var, n, t, vec.B);
  wp.load_bc(Cv, p.C, p.C_var, n, t, vec.C);
  // lane-local maps: forward h -> FA h + Fb; reverse e -> RP e + Rq
  float FA = 1.f, Fb = 0.f, RP = 1.f, Rq = 0.f;
#pragma unroll
  for (int i = 0; i < kI; ++i) {
    a[i] = exp2f(s.dt[i] * A2);
    float ap = a[i], bb = s.dt[i] * s.u[i] * Bv[i];
    if (s.rmask >> i & 1u) bb += a[i] * wp.fresh(t + i, n), ap = 0.f;
    Fb = fmaf(ap, Fb, bb), FA *= ap;
  }
#pragma unroll
  for (int i = kI - 1; i >= 0; --i) {
    const float ap = s.rmask >> i & 1u ? 0.f : a[i];
    float cc = Cv[i] * s.dy[i];
    if ((s.emask >> i & 1u) && has(p.dlast)) cc += at3(p.dlast, wp.seg.end_row(t + i), wp.d, n);
    Rq = ap * (cc + Rq), RP *= ap;
  }
  float FAe, Fbe, RPe, Rqe;
  warp_scan<true>(FA, Fb, FAe, Fbe, wp.lane);
  warp_scan<false>(RP, Rq, RPe, Rqe, wp.lane);
  const float hin = fmaf(FAe, hstart, Fbe);
  float e = fmaf(RPe, ecin, Rqe);
  // forward over the lane's steps: states, y and dC
  float dCc = 0.f, hp = hin;
#pragma unroll
  for (int i = 0; i < kI; ++i) {
    float ap = a[i], bb = s.dt[i] * s.u[i] * Bv[i];
    if (s.rmask >> i & 1u) bb += a[i] * wp.fresh(t + i, n), ap = 0.f;
    h[i] = fmaf(ap, hp, bb), hp = h[i];
    s.y[i] = fmaf(Cv[i], h[i], s.y[i]);
    dCc = fmaf(h[i], s.dy[i], dCc);
  }
  // reverse over the lane's steps: the adjoint and the gradients
  float dAp = 0.f, dBc = 0.f, gB[kI];
#pragma unroll
  for (int i = kI - 1; i >= 0; --i) {
    const bool restart = s.rmask >> i & 1u;
    float cc = Cv[i] * s.dy[i];
    if ((s.emask >> i & 1u) && has(p.dlast)) cc += at3(p.dlast, wp.seg.end_row(t + i), wp.d, n);
    const float gn = cc + e;
    const float hprev = restart ? wp.fresh(t + i, n) : (i > 0 ? h[i - 1] : hin);
    const float gdt = gn * s.dt[i], gah = gn * a[i] * hprev;
    dAp = fmaf(gah, s.dt[i], dAp);
    s.ddt[i] = fmaf(An, gah, fmaf(gn * s.u[i], Bv[i], s.ddt[i]));
    s.du[i] = fmaf(gdt, Bv[i], s.du[i]);
    gB[i] = gdt * s.u[i];
    dBc += gB[i];
    if (restart && wp.valid && has(p.dinitial_state)) {
      const int64_t r = wp.seg.start_row(t + i);
      if (r >= 0) at3(p.dinitial_state, r, wp.d, n) = a[i] * gn;
    }
    e = restart ? 0.f : a[i] * gn;
  }
  if (wp.lane == 0) sh.ecarry[c & 1][wp.w][n] = e;
  dAp = warp_sum(dAp);
  if (!p.B_var) dBc = warp_sum(dBc);
  if (!p.C_var) dCc = warp_sum(dCc);
  if (wp.lane == 0) {
    sh.acc[0][wp.w][n] += dAp;
    if (!p.B_var) sh.acc[1][wp.w][n] += dBc;
    if (!p.C_var) sh.acc[2][wp.w][n] += dCc;
  }
  if (!p.B_var && !p.C_var) return;
  float (*xb)[2][K::kXRow] = sh.xbuf[it & 1];
  ++it;
#pragma unroll
  for (int i = 0; i < kI; ++i) {
    const int q = wp.lane * kI + i, qs = q + q / 32;
    xb[wp.w][0][qs] = wp.valid ? gB[i] : 0.f;
    xb[wp.w][1][qs] = wp.valid ? h[i] * s.dy[i] : 0.f;
  }
  add_dbc<T, K>(wp, xb, tc, n);
}

// Phase 2 for one chunk: load the steps, run every n, write du, ddelta, dz.
template <typename T, typename K>
__device__ __forceinline__ void chunk_bwd(const Warp<T, K>& wp, Shared<K::kXRow>& sh, int64_t c, int& it, float& dDp,
                                          float& dbp, const Vec& vec) {
  constexpr int kI = K::kItems;
  const SelectiveScanParams& p = wp.p;
  const int64_t t = c * K::kChunk + wp.lane * kI, L = wp.L;
  Steps<kI> s;
  wp.load_u_dt(s.u, s.dt, t, vec.rows);
  load_items<T, kI>(s.dy, wp.row(p.dout), p.dout.stride[2], t, L, vec.rows);
  if (has(p.z)) {
    float z[kI];
    load_items<T, kI>(z, wp.row(p.z), p.z.stride[2], t, L, vec.rows);
#pragma unroll
    for (int i = 0; i < kI; ++i) {
      const float sz = sigmoid(z[i]);
      s.dzf[i] = s.dy[i] * sz * (1.f + z[i] * (1.f - sz));
      s.dy[i] *= z[i] * sz;
    }
  }
#pragma unroll
  for (int i = 0; i < kI; ++i) s.du[i] = 0.f, s.ddt[i] = 0.f, s.y[i] = 0.f;
  s.rmask = wp.start_mask(t), s.emask = wp.end_mask(t);
  __syncwarp();  // the ecarry written by lane 0 for the previous chunk
  for (int64_t n = 0; n < p.dstate; ++n) chunk_state_bwd<T, K>(wp, sh, s, c, n, it, vec);
  // softplus'(x) = sigmoid(x) = 1 - exp(-softplus(x)); 1 to float precision above the threshold 20
#pragma unroll
  for (int i = 0; i < kI; ++i) {
    s.du[i] = fmaf(wp.Dd, s.dy[i], s.du[i]);
    if (p.softplus) s.ddt[i] *= -expm1f(-s.dt[i]);
    dDp = fmaf(s.dy[i], s.u[i], dDp);
    dbp += s.ddt[i];
    if (has(p.z)) s.y[i] = s.dzf[i] * fmaf(wp.Dd, s.u[i], s.y[i]);
  }
  if (!wp.valid) return;
  store_items<T, kI>(wp.out_row(p.du), p.du.stride[2], s.du, t, L, vec.rows);
  store_items<T, kI>(wp.out_row(p.ddelta), p.ddelta.stride[2], s.ddt, t, L, vec.rows);
  if (has(p.z)) store_items<T, kI>(wp.out_row(p.dz), p.dz.stride[2], s.y, t, L, vec.rows);
}

// Per-(batch, channel) parameter gradients from the warp's slots; empty cu_seqlens sequences
// pass dlast straight to dinitial_state.
template <typename T, typename K>
__device__ void write_params(const Warp<T, K>& wp, Shared<K::kXRow>& sh, float dDp, float dbp) {
  const SelectiveScanParams& p = wp.p;
  const int64_t b = wp.b, d = wp.d;
  __syncwarp();
  for (int64_t n = wp.lane; n < p.dstate; n += 32) {
    at3(p.dA, b, d, n) = sh.acc[0][wp.w][n];
    if (!p.B_var) at3(p.dB, b, d, n) = sh.acc[1][wp.w][n];
    if (!p.C_var) at3(p.dC, b, d, n) = sh.acc[2][wp.w][n];
  }
  if (wp.lane == 0 && has(p.dD)) ptr<float>(p.dD)[b * p.dD.stride[0] + d * p.dD.stride[1]] = dDp;
  if (wp.lane == 0 && has(p.ddt_bias)) ptr<float>(p.ddt_bias)[b * p.ddt_bias.stride[0] + d * p.ddt_bias.stride[1]] = dbp;
  if (!has(p.cu_seqlens) || !has(p.dinitial_state)) return;
  for (int64_t s = 0; s < p.nrows; ++s) {
    if (wp.seg.cu_at(s) != wp.seg.cu_at(s + 1)) continue;
    for (int64_t n = wp.lane; n < p.dstate; n += 32)
      at3(p.dinitial_state, s, d, n) = has(p.dlast) ? at3(p.dlast, s, d, n) : 0.f;
  }
}

template <typename T, typename K>
__global__ void __launch_bounds__(kThreads) scan_bwd_kernel(SelectiveScanParams p, Vec vec) {
  __shared__ Shared<K::kXRow> sh;
  const int64_t Dg = p.dim / p.ngroups, bpg = (Dg + kWarps - 1) / kWarps;
  const int64_t g = blockIdx.y / bpg, cg = (blockIdx.y % bpg) * kWarps + threadIdx.x / 32;
  Warp<T, K> wp{p, Segs{p, int64_t(blockIdx.x)}};
  wp.b = blockIdx.x, wp.g = g, wp.L = p.seqlen;
  wp.lane = threadIdx.x % 32, wp.w = threadIdx.x / 32;
  wp.valid = cg < Dg;
  wp.d = g * Dg + (wp.valid ? cg : Dg - 1);  // idle warps shadow the group's last channel, writing nothing
  wp.Dd = has(p.D) ? ptr<float>(p.D)[wp.d * p.D.stride[0]] : 0.f;
  wp.bias = has(p.dt_bias) ? ptr<float>(p.dt_bias)[wp.d * p.dt_bias.stride[0]] : 0.f;
  for (int i = wp.lane; i < kMaxN; i += 32) {
    sh.ecarry[0][wp.w][i] = 0.f, sh.ecarry[1][wp.w][i] = 0.f;
    sh.acc[0][wp.w][i] = 0.f, sh.acc[1][wp.w][i] = 0.f, sh.acc[2][wp.w][i] = 0.f;
  }
  const int64_t nchunks = (p.seqlen + K::kChunk - 1) / K::kChunk;
  chunk_starts<T, K>(wp, nchunks, vec);
  int it = 0;
  float dDp = 0.f, dbp = 0.f;
  for (int64_t c = nchunks - 1; c >= 0; --c) chunk_bwd<T, K>(wp, sh, c, it, dDp, dbp, vec);
  if (!wp.valid) return;
  write_params<T, K>(wp, sh, warp_sum(dDp), warp_sum(dbp));
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

// 8 steps per lane (chunk 256): 16 steps reach 255 registers and spill.
using BwdCfg = Cfg<8>;

template <typename T>
void launch_bwd(const SelectiveScanParams& p, cudaStream_t stream) {
  if (p.B_var || p.C_var) {
    const int64_t total = p.nslices * p.batch * p.ngroups * p.dstate * p.seqlen;
    if (total > 0) zero_bc<<<ceil_div(total, 256), 256, 0, stream>>>(p);
  }
  const int64_t nchunks = (p.seqlen + BwdCfg::kChunk - 1) / BwdCfg::kChunk;
  SSM_CHECK(nchunks <= 1 || has(p.chunk_states), "selective_scan_bwd", "L = ", p.seqlen, " > ", BwdCfg::kChunk,
            " needs the chunk_states workspace (B, D, ", nchunks, ", N) float32");
  Vec vec;
  vec.rows = rows_vectorizable<T>(p.u, 2) && rows_vectorizable<T>(p.delta, 2) && rows_vectorizable<T>(p.dout, 2) &&
             (!has(p.z) || rows_vectorizable<T>(p.z, 2)) && rows_vectorizable<T>(p.du, 2) &&
             rows_vectorizable<T>(p.ddelta, 2) && (!has(p.dz) || rows_vectorizable<T>(p.dz, 2));
  vec.B = p.B_var && rows_vectorizable<T>(p.B, 3);
  vec.C = p.C_var && rows_vectorizable<T>(p.C, 3);
  const int64_t blocks = p.ngroups * ((p.dim / p.ngroups + kWarps - 1) / kWarps);
  SSM_CHECK(blocks <= 65535, "selective_scan_bwd", "dim ", p.dim, " needs ", blocks, " blocks of ", kWarps,
            " channels, at most 65535");
  const dim3 grid(unsigned(p.batch), unsigned(blocks));
  scan_bwd_kernel<T, BwdCfg><<<grid, kThreads, 0, stream>>>(p, vec);
}

}  // namespace ssm::cuda::scan_bwd
