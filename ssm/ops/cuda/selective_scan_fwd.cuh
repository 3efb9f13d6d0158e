// Selective scan (Mamba-1), forward for N <= 16, on the GPU; included once per dtype by
// selective_scan_fwd_<dtype>.cu. A block takes kCh channels of one batch row and one B/C group
// and walks L in tiles of kLT steps: u, delta and z tiles (and the group's B/C tiles) are loaded
// coalesced into shared memory, each channel's state (N values, split over kTPC lanes of kNT
// each) stays in registers across tiles, so any L runs in one pass, and the output tile goes
// back coalesced. exp(dt * A) is one ex2 with A pre-scaled by log2(e).
#pragma once
#include "cuda/kernels.h"
#include "cuda/vec.cuh"

namespace ssm::cuda::scan {

constexpr int kThreads = 128, kPad = 1;
constexpr float kLog2e = 1.4426950408889634f;

template <int kNT_, int kTPC_, int kLT_ = 64>
struct Cfg {
  static constexpr int kNT = kNT_, kTPC = kTPC_, kCh = kThreads / kTPC, kNP = kNT * kTPC, kLT = kLT_;
  static constexpr int kRow = kLT + kPad;        // u/delta/z tile row stride (floats)
  static constexpr int kBRow = kNP + 4;          // B/C tile row stride: [step][n], 16-byte aligned
  static constexpr int kSmemFloats = 3 * kCh * kRow + 2 * kLT * kBRow;
  static constexpr size_t kSmemBytes = kSmemFloats * sizeof(float) + (kLT + 1) * sizeof(int);
};

// What load_rows applies to each element: nothing, dt = softplus?(delta + dt_bias), or silu.
enum class Xform { kNone, kDt, kSilu };

// dst[c * kRow + i] = f(src row (b, c0 + c) at step t0 + i), zeros past L or past the channels.
template <typename T, typename C, Xform kX = Xform::kNone>
__device__ void load_rows(float* dst, const TensorArg& src, int64_t b, int64_t c0, int nch, int64_t t0,
                          int64_t L, bool vec, const SelectiveScanParams* p = nullptr) {
  constexpr int kChunks = C::kLT / 8;
  for (int i = threadIdx.x; i < C::kCh * kChunks; i += kThreads) {
    const int c = i / kChunks, tc = (i % kChunks) * 8;
    float* d = dst + c * C::kRow + tc;
    const int64_t t = t0 + tc;
    if (c >= nch) {
      for (int e = 0; e < 8; ++e) d[e] = 0.f;
      continue;
    }
    const T* row = ptr<T>(src) + b * src.stride[0] + (c0 + c) * src.stride[1];
    float v[8];
    if (vec && t + 8 <= L) {
      load_floats<T, 8>(v, row + t);
    } else {
      for (int e = 0; e < 8; ++e) v[e] = t + e < L ? to_float(row[(t + e) * src.stride[2]]) : 0.f;
    }
    if (kX == Xform::kDt) {
      const float bias = has(p->dt_bias) ? ptr<float>(p->dt_bias)[(c0 + c) * p->dt_bias.stride[0]] : 0.f;
      for (int e = 0; e < 8; ++e) v[e] = p->softplus ? softplus(v[e] + bias) : v[e] + bias;
    }
    if (kX == Xform::kSilu)
      for (int e = 0; e < 8; ++e) v[e] = silu(v[e]);
    for (int e = 0; e < 8; ++e) d[e] = v[e];
  }
}

// dst[i * kBRow + n] = B[b, g, n, t0 + i] (transposed to step-major), zeros past N or L.
template <typename T, typename C>
__device__ void load_bc(float* dst, const TensorArg& src, int64_t b, int64_t g, int64_t N, int64_t t0, int64_t L) {
  for (int i = threadIdx.x; i < C::kNP * C::kLT; i += kThreads) {
    const int n = i / C::kLT, tt = i % C::kLT;
    const int64_t t = t0 + tt;
    float v = 0.f;
    if (n < N && t < L)
      v = to_float(ptr<T>(src)[b * src.stride[0] + g * src.stride[1] + n * src.stride[2] + t * src.stride[3]]);
    dst[tt * C::kBRow + n] = v;
  }
}

// Output tile back to out (b, c0 + c, t0 + i).
template <typename T, typename C>
__device__ void store_rows(const TensorArg& dst, const float* src, int64_t b, int64_t c0, int nch, int64_t t0,
                           int64_t L, bool vec) {
  constexpr int kChunks = C::kLT / 8;
  for (int i = threadIdx.x; i < C::kCh * kChunks; i += kThreads) {
    const int c = i / kChunks, tc = (i % kChunks) * 8;
    if (c >= nch) continue;
    const float* s = src + c * C::kRow + tc;
    T* row = ptr<T>(dst) + b * dst.stride[0] + (c0 + c) * dst.stride[1];
    const int64_t t = t0 + tc;
    if (vec && t + 8 <= L) {
      float v[8];
      for (int e = 0; e < 8; ++e) v[e] = s[e];
      store_floats<T, 8>(row + t, v);
    } else {
      for (int e = 0; e < 8 && t + e < L; ++e) row[(t + e) * dst.stride[2]] = from_float<T>(s[e]);
    }
  }
}

// v = this lane's kNT values of B (or C) at one step: from the shared tile (16-byte reads) or constant.
template <typename C>
__device__ __forceinline__ void load_bc_step(float* v, const float* tile, const float* constant, bool variable) {
  if (variable) {
#pragma unroll
    for (int n = 0; n < C::kNT; n += 4) {
      const float4 q = *reinterpret_cast<const float4*>(tile + n);
      v[n] = q.x, v[n + 1] = q.y, v[n + 2] = q.z, v[n + 3] = q.w;
    }
  } else {
#pragma unroll
    for (int n = 0; n < C::kNT; ++n) v[n] = constant[n];
  }
}

// One thread's share of a channel's state: kNT of the N state entries.
template <typename C>
struct State {
  float s[C::kNT], A2[C::kNT], Bc[C::kNT], Cc[C::kNT];

  __device__ void load(const SelectiveScanParams& p, const TensorArg& src, int64_t row, int64_t d, int n0, bool valid) {
#pragma unroll
    for (int n = 0; n < C::kNT; ++n) {
      const bool in = valid && n0 + n < p.dstate && has(src);
      s[n] = in ? ptr<float>(src)[row * src.stride[0] + d * src.stride[1] + (n0 + n) * src.stride[2]] : 0.f;
    }
  }
  __device__ void store(const SelectiveScanParams& p, int64_t row, int64_t d, int n0, bool valid) const {
    if (!valid || !has(p.last_state)) return;
    const TensorArg& o = p.last_state;
#pragma unroll
    for (int n = 0; n < C::kNT; ++n)
      if (n0 + n < p.dstate) ptr<float>(o)[row * o.stride[0] + d * o.stride[1] + (n0 + n) * o.stride[2]] = s[n];
  }
};

// The cu_seqlens walk: which sequence the next step belongs to and where it ends.
struct Varlen {
  int64_t seq = 0, next = 0;
  // Before step t: close every sequence that ends at t (its last state), open the next ones.
  template <typename C>
  __device__ void advance(const SelectiveScanParams& p, State<C>& st, int64_t t, int64_t d, int n0, bool valid) {
    const int* cu = ptr<int>(p.cu_seqlens);
    while (seq < p.nrows && next <= t) {
      st.store(p, seq, d, n0, valid);
      if (++seq < p.nrows) {
        next = cu[(seq + 1) * p.cu_seqlens.stride[0]];
        st.load(p, p.initial_state, seq, d, n0, valid);
      }
    }
  }
};

template <typename T, typename C>
__global__ void __launch_bounds__(kThreads) scan_fwd_kernel(SelectiveScanParams p, bool vec_in, bool vec_z, bool vec_out) {
  extern __shared__ float smem[];
  float* us = smem;
  float* ds = us + C::kCh * C::kRow;
  float* zs = ds + C::kCh * C::kRow;
  float* Bs = zs + C::kCh * C::kRow;
  float* Cs = Bs + C::kLT * C::kBRow;
  int* seqs = reinterpret_cast<int*>(Cs + C::kLT * C::kBRow);

  const int64_t Dg = p.dim / p.ngroups, bpg = (Dg + C::kCh - 1) / C::kCh;
  const int64_t b = blockIdx.y, g = blockIdx.x / bpg;
  const int64_t cg = (blockIdx.x % bpg) * C::kCh, c0 = g * Dg + cg;
  const int nch = int(Dg - cg < C::kCh ? Dg - cg : C::kCh);
  const int c = threadIdx.x / C::kTPC, part = threadIdx.x % C::kTPC, n0 = part * C::kNT;
  const bool valid = c < nch;
  const int64_t d = c0 + (valid ? c : 0), L = p.seqlen;
  const bool varlen = has(p.cu_seqlens), seqidx = has(p.seq_idx);

  State<C> st;
#pragma unroll
  for (int n = 0; n < C::kNT; ++n) {
    const bool in = n0 + n < p.dstate;
    st.A2[n] = in ? ptr<float>(p.A)[d * p.A.stride[0] + (n0 + n) * p.A.stride[1]] * kLog2e : 0.f;
    st.Bc[n] = in && !p.B_var ? ptr<float>(p.B)[d * p.B.stride[0] + (n0 + n) * p.B.stride[1]] : 0.f;
    st.Cc[n] = in && !p.C_var ? ptr<float>(p.C)[d * p.C.stride[0] + (n0 + n) * p.C.stride[1]] : 0.f;
  }
  st.load(p, p.initial_state, b, d, n0, valid);
  Varlen vl;
  if (varlen) vl.next = ptr<int>(p.cu_seqlens)[p.cu_seqlens.stride[0]];
  const float Dd = has(p.D) ? ptr<float>(p.D)[d * p.D.stride[0]] : 0.f;

  for (int64_t t0 = 0; t0 < L; t0 += C::kLT) {
    load_rows<T, C>(us, p.u, b, c0, nch, t0, L, vec_in);
    load_rows<T, C, Xform::kDt>(ds, p.delta, b, c0, nch, t0, L, vec_in, &p);
    if (has(p.z)) load_rows<T, C, Xform::kSilu>(zs, p.z, b, c0, nch, t0, L, vec_z);
    if (p.B_var) load_bc<T, C>(Bs, p.B, b, g, p.dstate, t0, L);
    if (p.C_var) load_bc<T, C>(Cs, p.C, b, g, p.dstate, t0, L);
    if (seqidx)
      for (int i = threadIdx.x; i <= C::kLT; i += kThreads) {
        const int64_t t = t0 - 1 + i < 0 ? 0 : (t0 - 1 + i < L ? t0 - 1 + i : L - 1);
        seqs[i] = ptr<int>(p.seq_idx)[b * p.seq_idx.stride[0] + t * p.seq_idx.stride[1]];
      }
    __syncthreads();
    const int steps = int(L - t0 < C::kLT ? L - t0 : C::kLT);
    for (int tt = 0; tt < steps; ++tt) {
      if (varlen && t0 + tt >= vl.next) vl.advance(p, st, t0 + tt, d, n0, valid);
      if (seqidx && seqs[tt + 1] != seqs[tt]) {
#pragma unroll
        for (int n = 0; n < C::kNT; ++n) st.s[n] = 0.f;
      }
      const float dt = ds[c * C::kRow + tt], uu = us[c * C::kRow + tt], du = dt * uu;
      float bn[C::kNT], cn[C::kNT];
      load_bc_step<C>(bn, Bs + tt * C::kBRow + n0, st.Bc, p.B_var);
      load_bc_step<C>(cn, Cs + tt * C::kBRow + n0, st.Cc, p.C_var);
      float y[4] = {0.f, 0.f, 0.f, 0.f};  // four partial sums: short dependency chains
#pragma unroll
      for (int n = 0; n < C::kNT; ++n) {
        st.s[n] = exp2f(dt * st.A2[n]) * st.s[n] + du * bn[n];
        y[n % 4] += st.s[n] * cn[n];
      }
      float yt = (y[0] + y[1]) + (y[2] + y[3]);
#pragma unroll
      for (int off = C::kTPC / 2; off > 0; off /= 2) yt += __shfl_xor_sync(0xffffffffu, yt, off);
      float out = yt + Dd * uu;
      if (has(p.z)) out *= zs[c * C::kRow + tt];
      __syncwarp();
      if (part == 0) us[c * C::kRow + tt] = out;
    }
    __syncthreads();
    store_rows<T, C>(p.out, us, b, c0, nch, t0, L, vec_out);
    __syncthreads();
  }
  if (varlen) vl.advance(p, st, L, d, n0, valid);
  else st.store(p, b, d, n0, valid);
}

// N up to 16 (larger N: the warp-per-channel kernel of selective_scan_fwd_warp.cuh): kNT states
// per lane, kTPC lanes per channel; N in (8, 16]: a channel per thread (no shuffles per step),
// 32-step tiles to keep 3 blocks per SM.
constexpr int kMaxN = 16;
#define SSM_SCAN_N_SWITCH(N, C, ...)                                        \
  [&] {                                                                     \
    if (N <= 4) { using C = Cfg<4, 1>; return __VA_ARGS__(); }              \
    if (N <= 8) { using C = Cfg<4, 2>; return __VA_ARGS__(); }              \
    using C = Cfg<16, 1, 32>; return __VA_ARGS__();                         \
  }()

template <typename T>
void launch_fwd(const SelectiveScanParams& p, cudaStream_t stream) {
  const bool vec_in = rows_vectorizable<T>(p.u, 2) && rows_vectorizable<T>(p.delta, 2);
  const bool vec_z = has(p.z) && rows_vectorizable<T>(p.z, 2);
  const bool vec_out = rows_vectorizable<T>(p.out, 2);
  SSM_SCAN_N_SWITCH(p.dstate, C, [&] {
    const int64_t Dg = p.dim / p.ngroups;
    const dim3 grid(unsigned(p.ngroups * ((Dg + C::kCh - 1) / C::kCh)), unsigned(p.batch));
    auto kernel = scan_fwd_kernel<T, C>;
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(C::kSmemBytes));
    kernel<<<grid, kThreads, C::kSmemBytes, stream>>>(p, vec_in, vec_z, vec_out);
  });
}

}  // namespace ssm::cuda::scan
