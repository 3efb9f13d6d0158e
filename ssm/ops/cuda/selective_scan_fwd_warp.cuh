// Selective scan (Mamba-1), forward, on the GPU; included once per dtype by
// selective_scan_fwd_<dtype>.cu. A block takes kWarps channels of one batch row and one B/C
// group, a warp per channel (B * D warps: enough to hide the latency of each step's exp and
// loads); each lane owns kItems consecutive steps of a chunk of kChunk = 32 * kItems steps and the
// warp walks L chunk by chunk, one state entry n at a time: h_t = a'_t h_{t-1} + b_t is a warp scan
// of (decay, offset) pairs after a lane-local composition, then each lane runs its steps with the
// state in a register and adds C_t h_t to its steps' y. The state after a chunk (lane 31's) enters
// the next one through shared memory. A segment start (t = 0, seq_idx change, cu_seqlens start)
// has a' = 0 and b_t += a_t * fresh; a segment end writes the last state.
#pragma once
#include "cuda/selective_scan_warp.cuh"

namespace ssm::cuda::scan_fwd {

using namespace scan_warp;
constexpr int kThreads = 128, kWarps = kThreads / 32, kMaxN = 256;

template <int kItems_>
struct Cfg {
  static constexpr int kItems = kItems_, kChunk = 32 * kItems;
};

// One chunk and one state entry n: y += C h over the lane's steps; the state after the chunk
// goes to hcarry, last states to last_state.
template <typename T, typename K>
__device__ __forceinline__ void chunk_state_fwd(const Warp<T, K>& wp, float (*hcarry)[kMaxN], const float* u,
                                                const float* dt, float* y, unsigned rmask, unsigned emask, int64_t c,
                                                int64_t n, const Vec& vec) {
  constexpr int kI = K::kItems;
  const SelectiveScanParams& p = wp.p;
  const int64_t t = c * K::kChunk + wp.lane * kI;
  const float A2 = ptr<float>(p.A)[wp.d * p.A.stride[0] + n * p.A.stride[1]] * kLog2e;
  const float hstart = hcarry[(c + 1) & 1][n];
  float Bv[kI], Cv[kI], a[kI], bb[kI];
  wp.load_bc(Bv, p.B, p.B_var, n, t, vec.B);
  wp.load_bc(Cv, p.C, p.C_var, n, t, vec.C);
  float FA = 1.f, Fb = 0.f;
#pragma unroll
  for (int i = 0; i < kI; ++i) {
    a[i] = exp2f(dt[i] * A2), bb[i] = dt[i] * u[i] * Bv[i];
    if (rmask >> i & 1u) bb[i] += a[i] * wp.fresh(t + i, n), a[i] = 0.f;
    Fb = fmaf(a[i], Fb, bb[i]), FA *= a[i];
  }
  float FAe, Fbe;
  warp_scan<true>(FA, Fb, FAe, Fbe, wp.lane);
  float h = fmaf(FAe, hstart, Fbe);
#pragma unroll
  for (int i = 0; i < kI; ++i) {
    h = fmaf(a[i], h, bb[i]);
    y[i] = fmaf(Cv[i], h, y[i]);
    if ((emask >> i & 1u) && wp.valid && has(p.last_state))
      at3(p.last_state, wp.seg.end_row(t + i), wp.d, n) = h;
  }
  if (wp.lane == 31) hcarry[c & 1][n] = h;
}

// One chunk: load the steps, run every n, write y = (C . h + D u) * silu(z).
template <typename T, typename K>
__device__ __forceinline__ void chunk_fwd(const Warp<T, K>& wp, float (*hcarry)[kMaxN], int64_t c, const Vec& vec) {
  constexpr int kI = K::kItems;
  const SelectiveScanParams& p = wp.p;
  const int64_t t = c * K::kChunk + wp.lane * kI, L = wp.L;
  float u[kI], dt[kI], y[kI];
  wp.load_u_dt(u, dt, t, vec.rows);
#pragma unroll
  for (int i = 0; i < kI; ++i) y[i] = 0.f;
  const unsigned rmask = wp.start_mask(t), emask = wp.end_mask(t);
  __syncwarp();  // hcarry of the previous chunk, written by lane 31
  for (int64_t n = 0; n < p.dstate; ++n) chunk_state_fwd<T, K>(wp, hcarry, u, dt, y, rmask, emask, c, n, vec);
#pragma unroll
  for (int i = 0; i < kI; ++i) y[i] = fmaf(wp.Dd, u[i], y[i]);
  if (has(p.z)) {
    float z[kI];
    load_items<T, kI>(z, wp.row(p.z), p.z.stride[2], t, L, vec.rows);
#pragma unroll
    for (int i = 0; i < kI; ++i) y[i] *= silu(z[i]);
  }
  if (wp.valid) store_items<T, kI>(wp.out_row(p.out), p.out.stride[2], y, t, L, vec.rows);
}

template <typename T, typename K>
__global__ void __launch_bounds__(kThreads) scan_fwd_kernel(SelectiveScanParams p, Vec vec) {
  __shared__ float hcarry[kWarps][2][kMaxN];  // per warp: the state entering a chunk, by chunk parity
  const int64_t Dg = p.dim / p.ngroups, bpg = (Dg + kWarps - 1) / kWarps;
  const int64_t g = blockIdx.y / bpg, cg = (blockIdx.y % bpg) * kWarps + threadIdx.x / 32;
  Warp<T, K> wp{p, Segs{p, int64_t(blockIdx.x)}};
  wp.b = blockIdx.x, wp.g = g, wp.L = p.seqlen;
  wp.lane = threadIdx.x % 32, wp.w = threadIdx.x / 32;
  wp.valid = cg < Dg;
  wp.d = g * Dg + (wp.valid ? cg : Dg - 1);  // idle warps shadow the group's last channel, writing nothing
  wp.Dd = has(p.D) ? ptr<float>(p.D)[wp.d * p.D.stride[0]] : 0.f;
  wp.bias = has(p.dt_bias) ? ptr<float>(p.dt_bias)[wp.d * p.dt_bias.stride[0]] : 0.f;
  float (*hc)[kMaxN] = hcarry[wp.w];
  for (int i = wp.lane; i < kMaxN; i += 32) hc[0][i] = 0.f, hc[1][i] = 0.f;
  const int64_t nchunks = (p.seqlen + K::kChunk - 1) / K::kChunk;
  for (int64_t c = 0; c < nchunks; ++c) chunk_fwd<T, K>(wp, hc, c, vec);
  // empty cu_seqlens sequences keep their initial state
  if (!wp.valid || !has(p.cu_seqlens) || !has(p.last_state)) return;
  for (int64_t s = 0; s < p.nrows; ++s) {
    if (wp.seg.cu_at(s) != wp.seg.cu_at(s + 1)) continue;
    for (int64_t n = wp.lane; n < p.dstate; n += 32)
      at3(p.last_state, s, wp.d, n) = has(p.initial_state) ? at3(p.initial_state, s, wp.d, n) : 0.f;
  }
}

using FwdCfg = Cfg<8>;

template <typename T>
void launch_fwd(const SelectiveScanParams& p, cudaStream_t stream) {
  Vec vec;
  vec.rows = rows_vectorizable<T>(p.u, 2) && rows_vectorizable<T>(p.delta, 2) &&
             (!has(p.z) || rows_vectorizable<T>(p.z, 2)) && rows_vectorizable<T>(p.out, 2);
  vec.B = p.B_var && rows_vectorizable<T>(p.B, 3);
  vec.C = p.C_var && rows_vectorizable<T>(p.C, 3);
  const int64_t blocks = p.ngroups * ((p.dim / p.ngroups + kWarps - 1) / kWarps);
  SSM_CHECK(blocks <= 65535, "selective_scan_fwd", "dim ", p.dim, " needs ", blocks, " blocks of ", kWarps,
            " channels, at most 65535");
  const dim3 grid(unsigned(p.batch), unsigned(blocks));
  scan_fwd_kernel<T, FwdCfg><<<grid, kThreads, 0, stream>>>(p, vec);
}

}  // namespace ssm::cuda::scan_fwd
