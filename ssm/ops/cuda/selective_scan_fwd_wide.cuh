// Selective scan (Mamba-1) forward for N == 16 and 2-byte types in fwd_rows_kernel's layout (every
// row contiguous along L, selective_scan_fwd_rows.cuh), for grids that fill the SMs: fwd_wide_kernel,
// a thread per channel holding all 16 states. The per-step values (dt, dt u, D u, silu(z)) stay in
// the thread's registers and y needs no sum across warps, so only the B/C tiles pass through shared
// memory (float, double-buffered, one barrier per 16-step group). Rows are read and y written with
// 16-byte accesses of 8 steps, the next group's in flight during the steps. y equals
// fwd_rows_kernel's bit for bit: the same operations in the same order (four partial sums of four
// states each, added to D u in order). kPoly: the last kPoly states of a thread take 2^x on the FMA pipe;
// kSplit = 2: two lanes per channel, 8 states each, each lane computing the per-step values of half the steps
// (twice the warps, the values and half-sums of y passed by shuffles).
#pragma once
#include "cuda/selective_scan_fwd_rows.cuh"

namespace ssm::cuda::scan_wide {

using scan_rows::kN;
using scan_thread::kSteps;
constexpr int kThreads = 64;         // channels per block
constexpr int kHalf = kSteps / 2;    // steps per 16-byte row load (2-byte types)
constexpr int kParts = 4;            // y's partial sums, as fwd_rows_kernel's four warps

// 2^x on the FMA pipe, x clamped to [-125, 127]: 2^round(x) by an exponent add times a degree-5
// polynomial of the rest r in [-1/2, 1/2] (relative error 2.4e-7, about ex2.approx's).
__device__ __forceinline__ float ex2_fma(float x) {
  constexpr float kRound = 12582912.f;  // 1.5 * 2^23: round(x) lands in the low mantissa bits
  x = fminf(fmaxf(x, -125.f), 127.f);
  const float t = __fadd_rn(x, kRound);
  const float r = __fsub_rn(x, __fsub_rn(t, kRound));
  float q = 1.327647129e-03f;
  q = fmaf(q, r, 9.675541893e-03f);
  q = fmaf(q, r, 5.550713092e-02f);
  q = fmaf(q, r, 2.402212024e-01f);
  q = fmaf(q, r, 6.931469440e-01f);
  q = fmaf(q, r, 1.000000119e+00f);
  return __int_as_float(__float_as_int(q) + (__float_as_int(t) << 23));
}

template <int kPoly>
__device__ __forceinline__ float decay(float x, int n) {
  return n >= kN - kPoly ? ex2_fma(x) : scan_thread::ex2(x);
}

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

// A group's rows of this thread's channel as loaded: kPk 16-byte packs (8 steps each) per row, from step
// t0 + 8 q (kPk = 1: the half of the group lane q of a channel computes the per-step values of).
template <typename T, int kPk>
struct RowsRaw {
  Pack<T> u[kPk], dl[kPk], z[kPk];
  Pack<T> bc;  // this thread's chunk of the B/C tiles (8 steps of one state of B or C)
};

template <typename T>
struct Walk {
  const T *u = nullptr, *dl = nullptr, *z = nullptr;  // this thread's rows (clamped channel) at its first step
  const T* bc = nullptr;  // this thread's B/C chunk at step 0
  int L = 0, l0 = 0, tile = 0, n = 0, i0 = 0;  // l0: this thread's first step in a group

  template <int kPk>
  __device__ __forceinline__ void load(RowsRaw<T, kPk>& r, int t0, bool has_z) const {
#pragma unroll
    for (int i = 0; i < kPk; ++i) {
      const int t = t0 + l0 + i * kHalf;
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

// One thread's part of a channel: dt bias, D, A log2(e) and the states of entries n0 .. n0 + kNS - 1.
template <int kNS>
struct Chan {
  float bias, Dd, A2[kNS], s[kNS];
  int n0;
};

// Per-step values of 8 steps (as fwd_rows_kernel's staging computes them): dt (0 from step `left` on: past L
// the state stays), dt u, D u, silu(z).
struct Vals {
  float dt[kHalf], dtu[kHalf], du[kHalf], zs[kHalf];
};

template <typename T, int kNS>
__device__ __forceinline__ void step_values(Vals& v, const Chan<kNS>& ch, const Pack<T>& ru, const Pack<T>& rd,
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
  }
  if (left < kHalf) {
#pragma unroll
    for (int k = 0; k < kHalf; ++k)
      if (k >= left) v.dt[k] = 0.f;
  }
}

// One step of this thread's kNS states (B, C of the step at bp, cp); its partial sums of y (4 states each).
template <int kPoly, int kNS>
__device__ __forceinline__ void state_step(Chan<kNS>& ch, const float* bp, const float* cp, float dt, float dtu,
                                           float (&part)[kNS / 4]) {
#pragma unroll
  for (int w = 0; w < kNS / 4; ++w) {
    const float4 bv = *reinterpret_cast<const float4*>(bp + ch.n0 + 4 * w);
    const float4 cv = *reinterpret_cast<const float4*>(cp + ch.n0 + 4 * w);
    const float bb[4] = {bv.x, bv.y, bv.z, bv.w}, cc[4] = {cv.x, cv.y, cv.z, cv.w};
    part[w] = 0.f;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int n = 4 * w + j;
      ch.s[n] = fmaf(decay<kPoly>(dt * ch.A2[n], n + kN - kNS), ch.s[n], dtu * bb[j]);
      part[w] = fmaf(ch.s[n], cc[j], part[w]);
    }
  }
}

// y of one step: D u plus the four partial sums in order, times silu(z).
template <typename T>
__device__ __forceinline__ T y_of(float du, const float (&part)[kParts], float zs) {
  float y = du;
#pragma unroll
  for (int w = 0; w < kParts; ++w) y += part[w];
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

// kSplit = 1, one group (16 steps from t0) of a channel's 16 states: per 8 steps the values, the steps, y.
template <typename T, int kPoly>
__device__ __forceinline__ void group_one(Chan<kN>& ch, const float (*bcs)[kSteps][kN], const RowsRaw<T, 2>& cur,
                                          T* out, int t0, int L, bool softplus, bool has_z, bool writes_y) {
#pragma unroll 1
  for (int h = 0; h < 2; ++h) {
    const Pack<T> ru = h ? cur.u[1] : cur.u[0], rd = h ? cur.dl[1] : cur.dl[0], rz = h ? cur.z[1] : cur.z[0];
    const int t = t0 + h * kHalf;
    Vals v;
    step_values<T>(v, ch, ru, rd, rz, L - t, softplus, has_z);
    Pack<T> yv;
#pragma unroll
    for (int k = 0; k < kHalf; ++k) {
      float part[kParts];
      state_step<kPoly>(ch, bcs[0][h * kHalf + k], bcs[1][h * kHalf + k], v.dt[k], v.dtu[k], part);
      yv.e[k] = y_of<T>(v.du[k], part, v.zs[k]);
    }
    if (writes_y && t < L) store8(out, yv, t, L);
  }
}

// kSplit = 2, one group of a channel's states n0 .. n0 + 7 on lane q of the pair: lane q computes the values of
// steps 8q .. 8q + 7 and, after both lanes' states took them (shuffles), y of those steps.
template <typename T, int kPoly>
__device__ __forceinline__ void group_two(Chan<kN / 2>& ch, const float (*bcs)[kSteps][kN], const RowsRaw<T, 1>& cur,
                                          T* out, int t0, int L, int q, bool softplus, bool has_z, bool writes_y) {
  const int lane = threadIdx.x % 32;
  Vals v;
  step_values<T>(v, ch, cur.u[0], cur.dl[0], cur.z[0], L - t0 - q * kHalf, softplus, has_z);
#pragma unroll 1
  for (int h = 0; h < 2; ++h) {
    const int src = (lane & ~1) | h;  // the lane holding these steps' values
    Pack<T> yv;
#pragma unroll
    for (int k = 0; k < kHalf; ++k) {
      const float dt = __shfl_sync(0xffffffffu, v.dt[k], src), dtu = __shfl_sync(0xffffffffu, v.dtu[k], src);
      float own[2];
      state_step<kPoly>(ch, bcs[0][h * kHalf + k], bcs[1][h * kHalf + k], dt, dtu, own);
      const float other[2] = {__shfl_xor_sync(0xffffffffu, own[0], 1), __shfl_xor_sync(0xffffffffu, own[1], 1)};
      const float part[kParts] = {q ? other[0] : own[0], q ? other[1] : own[1], q ? own[0] : other[0],
                                  q ? own[1] : other[1]};
      yv.e[k] = y_of<T>(v.du[k], part, v.zs[k]);
    }
    const int t = t0 + h * kHalf;
    if (writes_y && q == h && t < L) store8(out, yv, t, L);
  }
}

// kSplit lanes per channel (kN / kSplit states each), 64 channels per block.
template <typename T, bool kCk, int kPoly, int kSplit>
__global__ void __launch_bounds__(kThreads * kSplit, 4) fwd_wide_kernel(SelectiveScanParams p) {
  static_assert(sizeof(T) == 2, "8 steps per 16-byte row load");
  constexpr int kNS = kN / kSplit;
  __shared__ __align__(16) Shared sh;
  const int Dg = int(p.dim / p.ngroups), bpg = (Dg + kThreads - 1) / kThreads;
  const int64_t b = blockIdx.y, g = blockIdx.x / bpg;
  const int cg = int(blockIdx.x % bpg) * kThreads;
  const int nch = Dg - cg < kThreads ? Dg - cg : kThreads;
  const int c = threadIdx.x / kSplit, q = threadIdx.x % kSplit, cc = c < nch ? c : nch - 1;  // (clamped for loads)
  const int64_t d = g * Dg + cg + cc;
  const int L = int(p.seqlen);
  const bool has_z = has(p.z), valid = c < nch, loads_bc = threadIdx.x < kThreads;

  Walk<T> wk;
  wk.L = L, wk.l0 = kSplit == 2 ? q * kHalf : 0;
  wk.u = ptr<T>(p.u) + b * p.u.stride[0] + d * p.u.stride[1];
  wk.dl = ptr<T>(p.delta) + b * p.delta.stride[0] + d * p.delta.stride[1];
  wk.z = has_z ? ptr<T>(p.z) + b * p.z.stride[0] + d * p.z.stride[1] : nullptr;
  const int j = threadIdx.x % kThreads;  // B/C chunk (threads below kThreads)
  wk.tile = j / (kThreads / 2), wk.n = j % (kThreads / 2) / 2, wk.i0 = j % 2 * kHalf;
  const TensorArg& bct = wk.tile ? p.C : p.B;
  wk.bc = ptr<T>(bct) + b * bct.stride[0] + g * bct.stride[1] + wk.n * bct.stride[2];
  T* out = ptr<T>(p.out) + b * p.out.stride[0] + d * p.out.stride[1];

  Chan<kNS> ch;
  ch.n0 = q * kNS;
  ch.bias = has(p.dt_bias) ? ptr<float>(p.dt_bias)[d * p.dt_bias.stride[0]] : 0.f;
  ch.Dd = has(p.D) ? ptr<float>(p.D)[d * p.D.stride[0]] : 0.f;
#pragma unroll
  for (int n = 0; n < kNS; ++n) {
    ch.A2[n] = ptr<float>(p.A)[d * p.A.stride[0] + (ch.n0 + n) * p.A.stride[1]] * scan_thread::kLog2e;
    const TensorArg& h0 = p.initial_state;
    ch.s[n] = has(h0) ? ptr<float>(h0)[b * h0.stride[0] + d * h0.stride[1] + (ch.n0 + n) * h0.stride[2]] : 0.f;
  }

  constexpr int kPk = 2 / kSplit;
  RowsRaw<T, kPk> cur, nxt;
  if (!has_z) {
#pragma unroll
    for (int i = 0; i < kPk; ++i) cur.z[i] = nxt.z[i] = Pack<T>{};
  }
  wk.load(cur, 0, has_z);
  if (loads_bc) put_bc(sh, 0, wk, cur.bc);
  __syncthreads();
  for (int t0 = 0, buf = 0; t0 < L; t0 += kSteps, buf ^= 1) {
    const bool more = t0 + kSteps < L;
    if (more) wk.load(nxt, t0 + kSteps, has_z);  // in flight during the steps
    if constexpr (kSplit == 1) group_one<T, kPoly>(ch, sh.bc[buf], cur, out, t0, L, p.softplus, has_z, valid);
    else group_two<T, kPoly>(ch, sh.bc[buf], cur, out, t0, L, q, p.softplus, has_z, valid);
    if (kCk && more && valid) {
      const TensorArg& ck = p.chunk_states;
      float* dst = ptr<float>(ck) + b * ck.stride[0] + d * ck.stride[1] + (t0 / kSteps + 1) * ck.stride[2];
#pragma unroll
      for (int n = 0; n < kNS; ++n) dst[(ch.n0 + n) * ck.stride[3]] = ch.s[n];
    }
    if (!more) break;
    if (loads_bc) put_bc(sh, buf ^ 1, wk, nxt.bc);  // that buffer's last readers passed the previous barrier
    cur = nxt;
    __syncthreads();
  }
  if (valid && has(p.last_state)) {
    const TensorArg& o = p.last_state;
#pragma unroll
    for (int n = 0; n < kNS; ++n)
      ptr<float>(o)[b * o.stride[0] + d * o.stride[1] + (ch.n0 + n) * o.stride[2]] = ch.s[n];
  }
}

// Which form the switch SSM_SCAN_ROWS asks for: 'w' a thread per channel, 'p' / 'q' that with one / two states of
// 16 on the FMA pipe, 'h' two lanes per channel (8 states each); unset: the row kernels (this round's default).
inline char mode() { return scan_rows::env_rows(); }

// Host, for 2-byte types where the row kernels take p (scan_rows::takes) and y is wanted: this kernel or theirs.
inline bool takes(const SelectiveScanParams&) {
  const char m = mode();
  return m == 'w' || m == 'p' || m == 'q' || m == 'h';
}

template <typename T, bool kCk, int kPoly, int kSplit>
void launch_kernel(const SelectiveScanParams& p, cudaStream_t stream) {
  const int64_t Dg = p.dim / p.ngroups;
  const dim3 grid(unsigned(p.ngroups * ((Dg + kThreads - 1) / kThreads)), unsigned(p.batch));
  fwd_wide_kernel<T, kCk, kPoly, kSplit><<<grid, kThreads * kSplit, 0, stream>>>(p);
}

// ck: write the checkpoints (chunk_states, D fastest) besides y.
template <typename T>
void launch(const SelectiveScanParams& p, bool ck, cudaStream_t stream) {
  const char m = mode();
  if (m == 'h') return ck ? launch_kernel<T, true, 0, 2>(p, stream) : launch_kernel<T, false, 0, 2>(p, stream);
  if (ck) launch_kernel<T, true, 0, 1>(p, stream);
  else if (m == 'p') launch_kernel<T, false, 1, 1>(p, stream);
  else if (m == 'q') launch_kernel<T, false, 2, 1>(p, stream);
  else launch_kernel<T, false, 0, 1>(p, stream);
}

}  // namespace ssm::cuda::scan_wide
