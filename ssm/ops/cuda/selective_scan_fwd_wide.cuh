// Selective scan (Mamba-1) forward for N == 16 and 2-byte types in fwd_rows_kernel's layout (every
// row contiguous along L, selective_scan_fwd_rows.cuh), for grids that fill the SMs: fwd_wide_kernel,
// a thread per channel holding all 16 states. The per-step values (dt, dt u, D u, silu(z)) stay in
// the thread's registers and y needs no sum across warps, so only the B/C tiles pass through shared
// memory (float, double-buffered, one barrier per 16-step group). Rows are read and y written with
// 16-byte accesses of 8 steps, the next group's in flight during the steps. y equals
// fwd_rows_kernel's bit for bit: the same operations in the same order (four partial sums of four
// states each, added to D u in order).
#pragma once
#include "cuda/selective_scan_fwd_rows.cuh"

namespace ssm::cuda::scan_wide {

using scan_rows::kN;
using scan_thread::kSteps;
constexpr int kThreads = 64;         // channels per block
constexpr int kHalf = kSteps / 2;    // steps per 16-byte row load (2-byte types)
constexpr int kParts = 4;            // y's partial sums, as fwd_rows_kernel's four warps

// 8 steps of a row from t (16-byte load; element by element past L, zeros there).
template <typename T>
__device__ __forceinline__ void load8(Pack<T>& r, const T* src, int t, int L) {
  if (t + kHalf <= L) {
    r.load(src + t);
    return;
  }
#pragma unroll
  for (int i = 0; i < kHalf; ++i) r.e[i] = t + i < L ? src[t + i] : scan_thread::zero<T>();
}

// A group's rows of this thread's channel as loaded: two 16-byte packs (8 steps each) per row.
template <typename T>
struct RowsRaw {
  Pack<T> u[2], dl[2], z[2];
  Pack<T> bc;  // this thread's chunk of the B/C tiles (8 steps of one state of B or C)
};

template <typename T>
struct Walk {
  const T *u = nullptr, *dl = nullptr, *z = nullptr;  // this thread's rows (clamped channel)
  const T* bc = nullptr;  // this thread's B/C chunk at step 0
  int L = 0, tile = 0, n = 0, i0 = 0;

  __device__ __forceinline__ void load(RowsRaw<T>& r, int t0, bool has_z) const {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int t = t0 + i * kHalf;
      load8(r.u[i], u, t, L), load8(r.dl[i], dl, t, L);
      if (has_z) load8(r.z[i], z, t, L);
    }
    load8(r.bc, bc, t0 + i0, L);
  }
};

// The block's B/C tiles of one group as float, [B or C][step][n]; two buffers.
struct Shared {
  float bc[2][2][kSteps][kN];
};

template <typename T>
__device__ __forceinline__ void put_bc(Shared& sh, int buf, const Walk<T>& wk, const Pack<T>& raw) {
#pragma unroll
  for (int i = 0; i < kHalf; ++i) sh.bc[buf][wk.tile][wk.i0 + i][wk.n] = to_float(raw.e[i]);
}

// One channel: dt bias, D, A log2(e) and the states.
struct Chan {
  float bias, Dd, A2[kN], s[kN];
};

// Per-step values of 8 steps (as fwd_rows_kernel's staging computes them): dt, dt u, D u, silu(z).
struct Vals {
  float dt[kHalf], dtu[kHalf], du[kHalf], zs[kHalf];
};

// dt is 0 from step `left` on (past L the state stays).
template <typename T>
__device__ __forceinline__ void step_values(Vals& v, const Chan& ch, const Pack<T>& ru, const Pack<T>& rd,
                                            const Pack<T>& rz, int left, bool softplus, bool has_z) {
#pragma unroll
  for (int k = 0; k < kHalf; ++k) {
    const float uu = to_float(ru.e[k]);
    const float x = to_float(rd.e[k]) + ch.bias;
    v.dt[k] = softplus ? scan_rows::softplus_ftz(x) : x;
    v.dtu[k] = v.dt[k] * uu;
    v.du[k] = __fmul_rn(ch.Dd, uu);  // not contracted into y's first add (fwd_rows_kernel's order)
    const float zz = to_float(rz.e[k]);
    v.zs[k] = has_z ? zz * scan_thread::sigmoid_of<T>(zz) : 1.f;
    if (k >= left) v.dt[k] = 0.f;
  }
}

// One step of the 16 states (B, C of the step at bp, cp); y: D u plus the four partial sums in order, times silu(z).
template <typename T>
__device__ __forceinline__ T state_step(Chan& ch, const float* bp, const float* cp, float dt, float dtu, float du,
                                        float zs) {
  float y = du;
#pragma unroll
  for (int w = 0; w < kParts; ++w) {
    const float4 bv = *reinterpret_cast<const float4*>(bp + 4 * w);
    const float4 cv = *reinterpret_cast<const float4*>(cp + 4 * w);
    const float bb[4] = {bv.x, bv.y, bv.z, bv.w}, cc[4] = {cv.x, cv.y, cv.z, cv.w};
    float part = 0.f;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int n = 4 * w + j;
      ch.s[n] = fmaf(scan_thread::ex2(dt * ch.A2[n]), ch.s[n], dtu * bb[j]);
      part = fmaf(ch.s[n], cc[j], part);
    }
    y += part;
  }
  return from_float<T>(y * zs);
}

// y of 8 steps from t into the row (16-byte store; element by element at the end of L).
template <typename T>
__device__ __forceinline__ void store8(T* out, const Pack<T>& y, int t, int L) {
  if (t + kHalf <= L) {
    y.store(out + t);
    return;
  }
#pragma unroll
  for (int k = 0; k < kHalf; ++k)
    if (t + k < L) out[t + k] = y.e[k];
}

// 8 steps from t = t0 + h8 (h8 = 0 or 8): their values, the steps, y.
template <typename T>
__device__ __forceinline__ void half_group(Chan& ch, const float (*bcs)[kSteps][kN], const Pack<T>& ru,
                                           const Pack<T>& rd, const Pack<T>& rz, T* out, int h8, int t, int L,
                                           bool softplus, bool has_z, bool writes_y) {
  Vals v;
  step_values<T>(v, ch, ru, rd, rz, L - t, softplus, has_z);
  Pack<T> yv;
#pragma unroll
  for (int k = 0; k < kHalf; ++k)
    yv.e[k] = state_step<T>(ch, bcs[0][h8 + k], bcs[1][h8 + k], v.dt[k], v.dtu[k], v.du[k], v.zs[k]);
  if (writes_y && t < L) store8(out, yv, t, L);
}

// One group (16 steps from t0): two halves of 8 steps as a loop (half the code of the unrolled form, as fast).
template <typename T>
__device__ __forceinline__ void group(Chan& ch, const float (*bcs)[kSteps][kN], const RowsRaw<T>& cur, T* out,
                                      int t0, int L, bool softplus, bool has_z, bool writes_y) {
#pragma unroll 1
  for (int h = 0; h < 2; ++h) {
    const Pack<T> ru = h ? cur.u[1] : cur.u[0], rd = h ? cur.dl[1] : cur.dl[0], rz = h ? cur.z[1] : cur.z[0];
    half_group<T>(ch, bcs, ru, rd, rz, out, h * kHalf, t0 + h * kHalf, L, softplus, has_z, writes_y);
  }
}

template <typename T, bool kCk>
__global__ void __launch_bounds__(kThreads, 4) fwd_wide_kernel(SelectiveScanParams p) {
  static_assert(sizeof(T) == 2, "8 steps per 16-byte row load");
  __shared__ __align__(16) Shared sh;
  const int Dg = int(p.dim / p.ngroups), bpg = (Dg + kThreads - 1) / kThreads;
  const int64_t b = blockIdx.y, g = blockIdx.x / bpg;
  const int cg = int(blockIdx.x % bpg) * kThreads;
  const int nch = Dg - cg < kThreads ? Dg - cg : kThreads;
  const int c = threadIdx.x, cc = c < nch ? c : nch - 1;  // channel (clamped for loads)
  const int64_t d = g * Dg + cg + cc;
  const int L = int(p.seqlen);
  const bool has_z = has(p.z), valid = c < nch;

  Walk<T> wk;
  wk.L = L;
  wk.u = ptr<T>(p.u) + b * p.u.stride[0] + d * p.u.stride[1];
  wk.dl = ptr<T>(p.delta) + b * p.delta.stride[0] + d * p.delta.stride[1];
  wk.z = has_z ? ptr<T>(p.z) + b * p.z.stride[0] + d * p.z.stride[1] : nullptr;
  wk.tile = c / (kThreads / 2), wk.n = c % (kThreads / 2) / 2, wk.i0 = c % 2 * kHalf;  // this thread's B/C chunk
  const TensorArg& bct = wk.tile ? p.C : p.B;
  wk.bc = ptr<T>(bct) + b * bct.stride[0] + g * bct.stride[1] + wk.n * bct.stride[2];
  T* out = ptr<T>(p.out) + b * p.out.stride[0] + d * p.out.stride[1];

  Chan ch;
  ch.bias = has(p.dt_bias) ? ptr<float>(p.dt_bias)[d * p.dt_bias.stride[0]] : 0.f;
  ch.Dd = has(p.D) ? ptr<float>(p.D)[d * p.D.stride[0]] : 0.f;
#pragma unroll
  for (int n = 0; n < kN; ++n) {
    ch.A2[n] = ptr<float>(p.A)[d * p.A.stride[0] + n * p.A.stride[1]] * scan_thread::kLog2e;
    const TensorArg& h0 = p.initial_state;
    ch.s[n] = has(h0) ? ptr<float>(h0)[b * h0.stride[0] + d * h0.stride[1] + n * h0.stride[2]] : 0.f;
  }

  RowsRaw<T> cur, nxt;
  if (!has_z) cur.z[0] = cur.z[1] = nxt.z[0] = nxt.z[1] = Pack<T>{};
  wk.load(cur, 0, has_z);
  put_bc(sh, 0, wk, cur.bc);
  __syncthreads();
  for (int t0 = 0, buf = 0; t0 < L; t0 += kSteps, buf ^= 1) {
    const bool more = t0 + kSteps < L;
    if (more) wk.load(nxt, t0 + kSteps, has_z);  // in flight during the steps
    group<T>(ch, sh.bc[buf], cur, out, t0, L, p.softplus, has_z, valid);
    if (kCk && more && valid) {
      const TensorArg& ck = p.chunk_states;
      float* dst = ptr<float>(ck) + b * ck.stride[0] + d * ck.stride[1] + (t0 / kSteps + 1) * ck.stride[2];
#pragma unroll
      for (int n = 0; n < kN; ++n) dst[n * ck.stride[3]] = ch.s[n];
    }
    if (!more) break;
    put_bc(sh, buf ^ 1, wk, nxt.bc);  // that buffer's last readers passed the previous barrier
    cur = nxt;
    __syncthreads();
  }
  if (valid && has(p.last_state)) {
    const TensorArg& o = p.last_state;
#pragma unroll
    for (int n = 0; n < kN; ++n) ptr<float>(o)[b * o.stride[0] + d * o.stride[1] + n * o.stride[2]] = ch.s[n];
  }
}

// Host, for 2-byte types where the row kernels take p (scan_rows::takes) and y is wanted: this kernel where the
// two-channel row kernel ran before it (grids of >= 3 blocks of 64 channels per SM: D 4096 at batch 8; round 1:
// 457 us against 527 at mamba-1.4b's shape, 318 against the one-channel row kernel's 242 at mamba-130m's).
// SSM_SCAN_ROWS=1 / 2 force the row kernels, w this one.
inline bool takes(const SelectiveScanParams& p) {
  const char m = scan_rows::env_rows();
  if (m == '1' || m == '2') return false;
  return m == 'w' || scan_rows::two_channels(p);
}

// ck: write the checkpoints (chunk_states, D fastest) besides y.
template <typename T>
void launch(const SelectiveScanParams& p, bool ck, cudaStream_t stream) {
  const int64_t Dg = p.dim / p.ngroups;
  const dim3 grid(unsigned(p.ngroups * ((Dg + kThreads - 1) / kThreads)), unsigned(p.batch));
  if (ck) fwd_wide_kernel<T, true><<<grid, kThreads, 0, stream>>>(p);
  else fwd_wide_kernel<T, false><<<grid, kThreads, 0, stream>>>(p);
}

}  // namespace ssm::cuda::scan_wide
