// Small-batch linear layer with an optional gated RMSNorm prologue (NormGemvParams). Every block
// normalizes the B input rows into shared memory itself (a few KB from L2), so the norm needs no
// kernel of its own. The weights stream through registers: a grid that fills the GPU once, each warp
// walking its rows with the next weights in flight while the current ones are used, the first ones
// loaded before the prologue (they do not depend on it), launched with PDL (pdl.cuh). Optionally the
// outputs go on through a depthwise conv update (Mamba-1's in_proj and conv in one kernel).
#include <algorithm>
#include <cstdlib>
#include <vector>

#include "cuda/kernels.h"
#include "cuda/pdl.cuh"
#include "cuda/vec.cuh"

namespace ssm::cuda {
namespace {

constexpr int kWarps = 8, kThreads = kWarps * 32, kMaxB = 4, kMaxSegments = 64;

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// 16-byte chunks of the input rows a thread takes in the vector prologue (B x K <= 2 x 256 x kN).
constexpr int kVecChunks = 2;

// The norm statistics in ONE summation order for every prologue form (so that kernels differing only in
// their epilogue, grid or prologue give bitwise the same rows): the B x K inputs in kN-wide chunks, chunk
// i = t + j kThreads to thread t, which adds its values of segment s in the order (j, e); then a warp's
// shuffle sum, then the warps' partials in order from 0. Explicit roundings: no contraction left to the
// compiler, which may choose differently in two kernels.
struct StatParts {
  float (*sum)[kMaxSegments];  // [kWarps][kMaxSegments] in shared memory, one for each pass
  float (*sq)[kMaxSegments];
};

__device__ __forceinline__ float stat_term(float acc, float v, float c, bool square) {
  if (!square) return __fadd_rn(acc, v);
  const float d = __fsub_rn(v, c);
  return __fmaf_rn(d, d, acc);
}

__device__ __forceinline__ float warps_total(const float (*part)[kMaxSegments], int s) {
  float t = 0.f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) t = __fadd_rn(t, part[w][s]);
  return t;
}

__device__ __forceinline__ float stat_mean(float total, int gs) { return __fdiv_rn(total, float(gs)); }
__device__ __forceinline__ float stat_rstd(float total, int gs, float eps) {
  return rsqrtf(__fadd_rn(__fdiv_rn(total, float(gs)), eps));
}

// (v - mean) * rstd * norm weight, rounded as written.
__device__ __forceinline__ float normalized(float v, float mean, float rstd, float nw) {
  return __fmul_rn(__fmul_rn(__fsub_rn(v, mean), rstd), nw);
}

// A warp's total of each segment s < segments into part[warp][s]; term(s) is this thread's part, then a barrier.
template <typename Term>
__device__ __forceinline__ void warp_partials(int segments, float (*part)[kMaxSegments], Term term) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int s = 0; s < segments; ++s) {
    const float acc = warp_sum(term(s));
    if (lane == 0) part[warp][s] = acc;
  }
  __syncthreads();
}

// The statistics of the element-wise prologue: xs (B, K) in shared memory -> mean, rstd of each segment
// (row, group of gs features) in shared memory, in the order above; ends with a barrier.
template <int kN, bool kCenter>
__device__ void xs_stats(const float* xs, int K, int B, int gs, float eps, StatParts parts, float* mean,
                         float* rstd) {
  const int groups = K / gs, segments = B * groups, cpr = K / kN, total = B * cpr;
  const auto term = [&](int s, bool square) {
    const int b = s / groups, k0 = (s - b * groups) * gs;  // segment s: row b, features [k0, k0 + gs)
    const float c = square && kCenter ? mean[s] : 0.f;
    float acc = 0.f;
    for (int i = threadIdx.x; i < total; i += kThreads) {
      const int row = i / cpr, col = (i - row * cpr) * kN;
      if (row != b || col + kN <= k0 || col >= k0 + gs) continue;
#pragma unroll
      for (int e = 0; e < kN; ++e)
        if (col + e >= k0 && col + e < k0 + gs) acc = stat_term(acc, xs[row * K + col + e], c, square);
    }
    return acc;
  };
  if (kCenter) {
    warp_partials(segments, parts.sum, [&](int s) { return term(s, false); });
    if (threadIdx.x < segments) mean[threadIdx.x] = stat_mean(warps_total(parts.sum, threadIdx.x), gs);
    __syncthreads();
  } else if (threadIdx.x < segments) {
    mean[threadIdx.x] = 0.f;
  }
  warp_partials(segments, parts.sq, [&](int s) { return term(s, true); });
  if (threadIdx.x < segments) rstd[threadIdx.x] = stat_rstd(warps_total(parts.sq, threadIdx.x), gs, eps);
  __syncthreads();
}

// The same statistics from a thread's registers (the vector prologue: chunk j holds v[j], segment seg[j] or -1;
// groups are whole chunks): mean and rstd of each chunk's segment. Barriers: one, two for LayerNorm.
template <int kN, bool kCenter>
__device__ void chunk_stats(const float (&v)[kVecChunks][kN], const int (&seg)[kVecChunks], int segments, int gs,
                            float eps, StatParts parts, float (&mean)[kVecChunks], float (&rstd)[kVecChunks]) {
  const auto term = [&](int s, bool square) {
    float acc = 0.f;
#pragma unroll
    for (int j = 0; j < kVecChunks; ++j)
      if (seg[j] == s) {
#pragma unroll
        for (int e = 0; e < kN; ++e) acc = stat_term(acc, v[j][e], mean[j], square);
      }
    return acc;
  };
#pragma unroll
  for (int j = 0; j < kVecChunks; ++j) mean[j] = 0.f;
  if (kCenter) {
    warp_partials(segments, parts.sum, [&](int s) { return term(s, false); });
#pragma unroll
    for (int j = 0; j < kVecChunks; ++j)
      if (seg[j] >= 0) mean[j] = stat_mean(warps_total(parts.sum, seg[j]), gs);
  }
  warp_partials(segments, parts.sq, [&](int s) { return term(s, true); });
#pragma unroll
  for (int j = 0; j < kVecChunks; ++j) rstd[j] = seg[j] >= 0 ? stat_rstd(warps_total(parts.sq, seg[j]), gs, eps) : 0.f;
}

// The prologue, one element a thread at a time: xs (B, K) <- the linear layer's input rows (see
// NormGemvParams). Any strides; the path of inputs the vector prologue does not take.
template <typename T, int kMode>
__device__ void load_inputs(const NormGemvParams& p, float* xs, StatParts parts, float* mean, float* rstd) {
  const int K = int(p.in_features), B = int(p.batch);
  for (int b = 0; b < B; ++b)
    for (int k = threadIdx.x; k < K; k += kThreads) {
      float v = to_float(ptr<T>(p.x)[b * p.x.stride[0] + k * p.x.stride[1]]);
      if (kMode == 1) v = __fmul_rn(v, silu(to_float(ptr<T>(p.z)[b * p.z.stride[0] + k * p.z.stride[1]])));
      if (kMode >= 3) {
        if (has(p.residual))
          v = __fadd_rn(v, ptr<float>(p.residual)[b * p.residual.stride[0] + k * p.residual.stride[1]]);
        if (blockIdx.x == 0)
          ptr<float>(p.residual_out)[b * p.residual_out.stride[0] + k * p.residual_out.stride[1]] = v;
      }
      xs[b * K + k] = v;
    }
  if (kMode == 0) return;
  __syncthreads();
  const int gs = kMode >= 3 ? K : int(p.group_size), groups = K / gs;
  xs_stats<Pack<T>::kN, kMode == 4>(xs, K, B, gs, p.eps, parts, mean, rstd);
  for (int b = 0; b < B; ++b)
    for (int k = threadIdx.x; k < K; k += kThreads) {
      const int s = b * groups + (groups == 1 ? 0 : k / gs);
      float v = normalized(xs[b * K + k], mean[s], rstd[s], ptr<float>(p.norm_weight)[k * p.norm_weight.stride[0]]);
      if (kMode == 2) v = __fmul_rn(v, silu(to_float(ptr<T>(p.z)[b * p.z.stride[0] + k * p.z.stride[1]])));
      if (kMode == 4 && has(p.norm_bias)) v = __fadd_rn(v, ptr<float>(p.norm_bias)[k * p.norm_bias.stride[0]]);
      xs[b * K + k] = to_float(from_float<T>(v));
    }
}

template <int kN>
__device__ __forceinline__ void load_f32(float (&v)[kN], const float* src) {
#pragma unroll
  for (int q = 0; q < kN / 4; ++q) *reinterpret_cast<float4*>(v + 4 * q) = reinterpret_cast<const float4*>(src)[q];
}

template <int kN>
__device__ __forceinline__ void store_f32(float* dst, const float (&v)[kN]) {
#pragma unroll
  for (int q = 0; q < kN / 4; ++q) reinterpret_cast<float4*>(dst)[q] = *reinterpret_cast<const float4*>(v + 4 * q);
}

// The prologue with 16-byte accesses (rows contiguous and aligned, at most kVecChunks chunks a
// thread, groups a multiple of a chunk): every global load of a thread issued before any use, so
// the inputs cost one round trip after the previous kernel (the scalar loop paid one per element);
// the norm statistics from the registers (chunk_stats: one or two barriers, the element-wise form's three or five).
template <typename T, int kMode>
__device__ void load_inputs_vec(const NormGemvParams& p, float* xs, StatParts parts) {
  constexpr int kN = Pack<T>::kN;
  constexpr bool kGate = kMode == 1 || kMode == 2, kRes = kMode == 3 || kMode == 4;
  const int K = int(p.in_features), cpr = K / kN, total = int(p.batch) * cpr;
  Pack<T> xv[kVecChunks], zv[kVecChunks];
  float xr[kVecChunks][kN], res[kVecChunks][kN], nw[kVecChunks][kN];  // xr: the chunks' values before the norm
  // chunk j of this thread: row b, columns [k0, k0 + kN)
  int row[kVecChunks], col[kVecChunks];
#pragma unroll
  for (int j = 0; j < kVecChunks; ++j) {
    const int i = int(threadIdx.x) + j * kThreads;
    row[j] = i < total ? i / cpr : -1;
    col[j] = i < total ? (i - row[j] * cpr) * kN : 0;
    if (row[j] < 0) continue;
    const int64_t b = row[j];
    xv[j].load(ptr<T>(p.x) + b * p.x.stride[0] + col[j]);
    if (kGate) zv[j].load(ptr<T>(p.z) + b * p.z.stride[0] + col[j]);
    if (kRes && has(p.residual)) load_f32<kN>(res[j], ptr<float>(p.residual) + b * p.residual.stride[0] + col[j]);
    if (kMode >= 1) load_f32<kN>(nw[j], ptr<float>(p.norm_weight) + col[j]);
  }
#pragma unroll
  for (int j = 0; j < kVecChunks; ++j) {
    if (row[j] < 0) continue;
#pragma unroll
    for (int e = 0; e < kN; ++e) {
      float v = to_float(xv[j].e[e]);
      if (kMode == 1) v = __fmul_rn(v, silu(to_float(zv[j].e[e])));
      if (kRes && has(p.residual)) v = __fadd_rn(v, res[j][e]);
      xr[j][e] = v;
    }
    if (kRes && blockIdx.x == 0)
      store_f32<kN>(ptr<float>(p.residual_out) + row[j] * p.residual_out.stride[0] + col[j], xr[j]);
    if (kMode == 0) store_f32<kN>(xs + row[j] * K + col[j], xr[j]);
  }
  if (kMode == 0) return;
  const int gs = kRes ? K : int(p.group_size), groups = K / gs;
  int seg[kVecChunks];  // the (row, group) segment of chunk j, -1 for none
#pragma unroll
  for (int j = 0; j < kVecChunks; ++j) seg[j] = row[j] < 0 ? -1 : row[j] * groups + (groups == 1 ? 0 : col[j] / gs);
  float mean[kVecChunks], rstd[kVecChunks];
  chunk_stats<kN, kMode == 4>(xr, seg, int(p.batch) * groups, gs, p.eps, parts, mean, rstd);
#pragma unroll
  for (int j = 0; j < kVecChunks; ++j) {
    if (row[j] < 0) continue;
    float v[kN], nb[kN];
    if (kMode == 4 && has(p.norm_bias)) load_f32<kN>(nb, ptr<float>(p.norm_bias) + col[j]);
#pragma unroll
    for (int e = 0; e < kN; ++e) {
      v[e] = normalized(xr[j][e], mean[j], rstd[j], nw[j][e]);
      if (kMode == 2) v[e] = __fmul_rn(v[e], silu(to_float(zv[j].e[e])));
      if (kMode == 4 && has(p.norm_bias)) v[e] = __fadd_rn(v[e], nb[e]);
      v[e] = to_float(from_float<T>(v[e]));
    }
    store_f32<kN>(xs + row[j] * K + col[j], v);
  }
}

// acc[b] += dot(w chunk c of this lane, xs[b] at the chunk's columns), rounded as written (the same in every kernel).
template <typename T>
__device__ __forceinline__ void fma_chunk(float* acc, const Pack<T>& w, const float* xs, int64_t K, int64_t batch,
                                          int64_t col) {
  constexpr int kN = Pack<T>::kN;
#pragma unroll
  for (int b = 0; b < kMaxB; ++b) {
    if (b >= batch) break;
    const float4* xv = reinterpret_cast<const float4*>(xs + b * K + col);
#pragma unroll
    for (int q = 0; q < kN / 4; ++q) {
      const float4 v = xv[q];
      float t = __fmul_rn(to_float(w.e[4 * q]), v.x);
      t = __fmaf_rn(to_float(w.e[4 * q + 1]), v.y, t);
      t = __fmaf_rn(to_float(w.e[4 * q + 2]), v.z, t);
      t = __fmaf_rn(to_float(w.e[4 * q + 3]), v.w, t);
      acc[b] = __fadd_rn(acc[b], t);
    }
  }
}

// Warp w of W takes the row groups q = w, w + W, ... (kG consecutive rows each) and walks their
// units: unit u holds, for each row of the group, the 16-byte chunks [u, u + 1) * 32 * kJ of it,
// kJ = kSlots / kG per lane. The next unit is loaded while the current one is used (two register
// buffers); the first before the prologue and before the previous kernel ends (PDL).
constexpr int kSlots = 8;

struct Cursor {
  int q, u;  // row group, unit within the group's rows
};

template <typename T, int kG>
__device__ __forceinline__ void load_unit(Pack<T> (&buf)[kSlots], const T* w, int64_t ldw, int M, int nchunks,
                                          Cursor c, int lane) {
  constexpr int kJ = kSlots / kG;
#pragma unroll
  for (int s = 0; s < kSlots; ++s) {
    const int row = c.q * kG + s / kJ, idx = (c.u * kJ + s % kJ) * 32 + lane;
    if (row < M && idx < nchunks) buf[s].load(w + int64_t(row) * ldw + int64_t(idx) * Pack<T>::kN);
  }
}

template <typename T, int kG>
__device__ __forceinline__ void use_unit(float (&acc)[kG][kMaxB], const Pack<T> (&buf)[kSlots], const float* xs,
                                         int K, int batch, int M, int nchunks, Cursor c, int lane) {
  constexpr int kJ = kSlots / kG;
#pragma unroll
  for (int s = 0; s < kSlots; ++s) {
    const int row = c.q * kG + s / kJ, idx = (c.u * kJ + s % kJ) * 32 + lane;
    if (row < M && idx < nchunks) fma_chunk<T>(acc[s / kJ], buf[s], xs, K, batch, int64_t(idx) * Pack<T>::kN);
  }
}

// Unit c of a warp's row group into L2 (lane g < kG: row g's chunks of the unit, one bulk prefetch each).
template <typename T, int kG>
__device__ __forceinline__ void prefetch_unit(const T* w, int64_t ldw, int M, int nchunks, Cursor c, int lane) {
  constexpr int kJ = kSlots / kG;
  const int row = c.q * kG + lane, idx = c.u * kJ * 32;
  if (lane < kG && row < M && idx < nchunks)
    prefetch_l2_bulk(w + int64_t(row) * ldw + int64_t(idx) * Pack<T>::kN, uint32_t(min(kJ * 32, nchunks - idx) * 16));
}

// The ring form (SSM_GEMV_RING=stages[:blocks an SM], a variant): a warp's units go global -> shared memory by
// cp.async (16 bytes a lane, each lane reading back only its own chunks: no barrier), `stages` units in flight
// a warp instead of two register buffers; fewer registers, and the bytes in flight set by shared memory.
// Stage t of warp w: kSlots x 32 chunks at ring + ((w * stages + t) * kSlots) * 32.
__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
  const uint32_t d = uint32_t(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(d), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }

// Waits until at most n (< 8) of this thread's newest groups are pending.
__device__ __forceinline__ void cp_async_wait(int n) {
  switch (n) {
    case 0: asm volatile("cp.async.wait_group 0;" ::: "memory"); break;
    case 1: asm volatile("cp.async.wait_group 1;" ::: "memory"); break;
    case 2: asm volatile("cp.async.wait_group 2;" ::: "memory"); break;
    case 3: asm volatile("cp.async.wait_group 3;" ::: "memory"); break;
    case 4: asm volatile("cp.async.wait_group 4;" ::: "memory"); break;
    case 5: asm volatile("cp.async.wait_group 5;" ::: "memory"); break;
    case 6: asm volatile("cp.async.wait_group 6;" ::: "memory"); break;
    default: asm volatile("cp.async.wait_group 7;" ::: "memory"); break;
  }
}

// Unit c into stage st (then one commit group, empty past the warp's last unit).
template <typename T, int kG>
__device__ __forceinline__ void issue_unit(uint4* st, const T* w, int64_t ldw, int M, int nchunks, int groups,
                                           Cursor c, int lane) {
  constexpr int kJ = kSlots / kG;
  if (c.q < groups) {
#pragma unroll
    for (int s = 0; s < kSlots; ++s) {
      const int row = c.q * kG + s / kJ, idx = (c.u * kJ + s % kJ) * 32 + lane;
      if (row < M && idx < nchunks) cp_async16(st + s * 32 + lane, w + int64_t(row) * ldw + int64_t(idx) * Pack<T>::kN);
    }
  }
  cp_async_commit();
}

template <typename T, int kG>
__device__ __forceinline__ void use_stage(float (&acc)[kG][kMaxB], const uint4* st, const float* xs, int K, int batch,
                                          int M, int nchunks, Cursor c, int lane) {
  constexpr int kJ = kSlots / kG;
#pragma unroll
  for (int s = 0; s < kSlots; ++s) {
    const int row = c.q * kG + s / kJ, idx = (c.u * kJ + s % kJ) * 32 + lane;
    if (row < M && idx < nchunks) {
      Pack<T> pk;
      *reinterpret_cast<uint4*>(pk.e) = st[s * 32 + lane];
      fma_chunk<T>(acc[s / kJ], pk, xs, K, batch, int64_t(idx) * Pack<T>::kN);
    }
  }
}

// The conv epilogue (conv_rows > 0): lane l of a warp owns the output (row g, batch row b) of the warp's
// i-th row group, i = l / (B kG), and with it channel m's conv weights, bias and state row (S <= 4).
template <typename T>
struct ConvLane {
  float w[4], cb, lb;  // conv weights and bias of channel m, the linear layer's bias of row m
  T s[4];              // channel m's conv state row (batch row b)
  int i, g, b;
  int64_t m;
  bool ok;
};

// Before the wait: the lane's place and its parameters (no kernel writes them).
template <typename T, int kG>
__device__ __forceinline__ void conv_lane_params(const NormGemvParams& p, ConvLane<T>& cl, int warp, int nwarps,
                                                 int lane) {
  const int per = int(p.batch) * kG, r = lane % per;
  cl.i = lane / per, cl.g = r / int(p.batch), cl.b = r % int(p.batch);
  cl.m = (int64_t(warp) + int64_t(cl.i) * nwarps) * kG + cl.g;
  cl.ok = lane < 32 / per * per && cl.m < p.conv_rows;
  if (!cl.ok) return;
  const float* w = ptr<float>(p.conv_weight) + cl.m * p.conv_weight.stride[0];
#pragma unroll
  for (int j = 0; j < 4; ++j) cl.w[j] = j < p.width ? w[j * p.conv_weight.stride[1]] : 0.f;
  cl.cb = has(p.conv_bias) ? ptr<float>(p.conv_bias)[cl.m * p.conv_bias.stride[0]] : 0.f;
  cl.lb = has(p.bias) ? ptr<float>(p.bias)[cl.m * p.bias.stride[0]] : 0.f;
}

// After the wait (the state may be the previous kernel's output): the lane's conv state row.
template <typename T>
__device__ __forceinline__ void conv_lane_state(const NormGemvParams& p, ConvLane<T>& cl) {
  if (!cl.ok) return;
  const T* st = ptr<T>(p.conv_state) + cl.b * p.conv_state.stride[0] + cl.m * p.conv_state.stride[1];
#pragma unroll
  for (int j = 0; j < 4; ++j)
    if (j < p.state_len) cl.s[j] = st[j * p.conv_state.stride[2]];
}

// The lane's output row done (its sum v without bias): the conv output of the rounded input and the shifted state.
template <typename T>
__device__ __forceinline__ void conv_lane_finish(const NormGemvParams& p, const ConvLane<T>& cl, float v) {
  const T xin = from_float<T>(v + cl.lb);
  const int S = int(p.state_len), W = int(p.width);
  float acc = cl.cb;
#pragma unroll
  for (int j = 0; j < 3; ++j)  // history: the state's last W - 1 entries
    if (j < W - 1) acc += cl.w[j] * to_float(cl.s[S - (W - 1) + j]);
  acc += cl.w[W - 1] * to_float(xin);
  T& out = ptr<T>(p.conv_out)[cl.b * p.conv_out.stride[0] + cl.m * p.conv_out.stride[1]];
  out = from_float<T>(p.silu ? silu(acc) : acc);
  T* st = ptr<T>(p.conv_state) + cl.b * p.conv_state.stride[0] + cl.m * p.conv_state.stride[1];
#pragma unroll
  for (int j = 0; j < 3; ++j)
    if (j < S - 1) st[j * p.conv_state.stride[2]] = cl.s[j + 1];
  st[(S - 1) * p.conv_state.stride[2]] = xin;
}

// The group's rows done: out[b, m] = the warp's sum (+ bias); the accumulators reset. i: the group's index
// among the warp's (the conv epilogue's owner lanes).
template <typename T, int kG, bool kConv>
__device__ __forceinline__ void store_rows(float (&acc)[kG][kMaxB], const NormGemvParams& p, int q, int lane,
                                           const ConvLane<T>& cl, int i) {
#pragma unroll
  for (int g = 0; g < kG; ++g) {
    const int64_t m = int64_t(q) * kG + g;
#pragma unroll
    for (int b = 0; b < kMaxB; ++b) {
      if (b >= p.batch) break;
      const float v = warp_sum(acc[g][b]);
      acc[g][b] = 0.f;
      if (lane == 0 && m < p.out_features) {
        const float bias = has(p.bias) ? ptr<float>(p.bias)[m * p.bias.stride[0]] : 0.f;
        ptr<T>(p.out)[b * p.out.stride[0] + m * p.out.stride[1]] = from_float<T>(v + bias);
      }
      if (kConv && cl.ok && cl.i == i && cl.g == g && cl.b == b) conv_lane_finish<T>(p, cl, v);
    }
  }
}

// Pulls a float32 parameter vector (unit stride) into L2 without waiting for it (a 128-byte line a thread).
__device__ __forceinline__ void prefetch_l2(const TensorArg& t, int64_t n) {
  if (!has(t) || t.stride[0] != 1) return;
  const float* v = ptr<float>(t);
  for (int64_t i = int64_t(threadIdx.x) * 32; i < n; i += int64_t(kThreads) * 32)
    asm volatile("prefetch.global.L2 [%0];" ::"l"(v + i));
}

template <typename T, int kMode, int kG, bool kConv, bool kRing>
__global__ void __launch_bounds__(kThreads, 2) norm_gemv_stream_kernel(NormGemvParams p, bool vec, bool own, int stages) {
  extern __shared__ float4 smem4[];
  float* xs = reinterpret_cast<float*>(smem4);  // (B, K)
  __shared__ float mean[kMaxSegments], rstd[kMaxSegments], part_sum[kWarps][kMaxSegments],
      part_sq[kWarps][kMaxSegments];
  constexpr int kUnitChunks = 32 * (kSlots / kG);
  const int lane = threadIdx.x % 32, nwarps = int(gridDim.x) * kWarps, batch = int(p.batch);
  const int M = int(p.out_features), K = int(p.in_features), nchunks = K / Pack<T>::kN;
  const int groups = (M + kG - 1) / kG, units = (nchunks + kUnitChunks - 1) / kUnitChunks;
  const T* w = ptr<T>(p.weight);
  const int64_t ldw = p.weight.stride[0];
  const auto next = [&](Cursor c) { return c.u + 1 < units ? Cursor{c.q, c.u + 1} : Cursor{c.q + nwarps, 0}; };
  Cursor a{int(blockIdx.x) * kWarps + int(threadIdx.x) / 32, 0}, c = next(a);
  // the ring form: this warp's stages after xs; the first `stages` units issued before the prologue
  uint4* ring = reinterpret_cast<uint4*>(xs + batch * K) + (threadIdx.x / 32) * stages * kSlots * 32;
  Cursor issued = a;
  // the register form: both buffers' loads issued before the prologue (and the previous kernel's end); with `own`
  // their units pulled into L2 first by bulk prefetches (the requests then reach DRAM whatever the SM's limit on
  // loads in flight)
  Pack<T> b0[kSlots], b1[kSlots];
  if (kRing) {
    for (int t = 0; t < stages; ++t, issued = next(issued))
      issue_unit<T, kG>(ring + t * kSlots * 32, w, ldw, M, nchunks, groups, issued, lane);
  } else {
    if (own && a.q < groups) prefetch_unit<T, kG>(w, ldw, M, nchunks, a, lane);
    if (own && c.q < groups) prefetch_unit<T, kG>(w, ldw, M, nchunks, c, lane);
    if (a.q < groups) load_unit<T, kG>(b0, w, ldw, M, nchunks, a, lane);
    if (c.q < groups) load_unit<T, kG>(b1, w, ldw, M, nchunks, c, lane);
  }
  if (kMode >= 1) prefetch_l2(p.norm_weight, K);  // the prologue's constants, meanwhile
  ConvLane<T> cl;
  if (kConv) conv_lane_params<T, kG>(p, cl, a.q, nwarps, lane);
  pdl_wait();
  pdl_release();
  if (kConv) conv_lane_state<T>(p, cl);
  const StatParts parts{part_sum, part_sq};
  if (vec)
    load_inputs_vec<T, kMode>(p, xs, parts);
  else
    load_inputs<T, kMode>(p, xs, parts, mean, rstd);
  __syncthreads();
  float acc[kG][kMaxB];
#pragma unroll
  for (int g = 0; g < kG; ++g)
#pragma unroll
    for (int b = 0; b < kMaxB; ++b) acc[g][b] = 0.f;
  int done = 0;  // row groups stored by this warp
  if constexpr (kRing) {
    // unit u in stage t: used once its group arrived, then the stage takes the unit `stages` ahead
    int t = 0;
    for (Cursor u = a; u.q < groups; u = next(u), t = t + 1 == stages ? 0 : t + 1) {
      cp_async_wait(stages - 1);
      use_stage<T, kG>(acc, ring + t * kSlots * 32, xs, K, batch, M, nchunks, u, lane);
      if (u.u == units - 1) store_rows<T, kG, kConv>(acc, p, u.q, lane, cl, done++);
      issue_unit<T, kG>(ring + t * kSlots * 32, w, ldw, M, nchunks, groups, issued, lane);
      issued = next(issued);
    }
    cp_async_wait(0);  // nothing in flight at exit
  } else {
    // b0 holds unit a, b1 unit c = next(a); each buffer is refilled right after it is used
    while (a.q < groups) {
      use_unit<T, kG>(acc, b0, xs, K, batch, M, nchunks, a, lane);
      if (a.u == units - 1) store_rows<T, kG, kConv>(acc, p, a.q, lane, cl, done++);
      if (c.q >= groups) break;
      a = next(c);
      if (a.q < groups) load_unit<T, kG>(b0, w, ldw, M, nchunks, a, lane);
      use_unit<T, kG>(acc, b1, xs, K, batch, M, nchunks, c, lane);
      if (c.u == units - 1) store_rows<T, kG, kConv>(acc, p, c.q, lane, cl, done++);
      c = next(a);
      if (c.q < groups) load_unit<T, kG>(b1, w, ldw, M, nchunks, c, lane);
    }
  }
}

// Blocks of the kernel resident on the whole GPU at once (cached per kernel, smem and device).
template <typename Kernel>
int64_t resident(Kernel kernel, size_t smem) {
  struct Entry {
    const void* kernel;
    size_t smem;
    int dev;
    int64_t blocks;
  };
  thread_local std::vector<Entry> cache;
  int dev = 0;
  cudaGetDevice(&dev);
  const void* key = reinterpret_cast<const void*>(kernel);
  for (const Entry& e : cache)
    if (e.kernel == key && e.smem == smem && e.dev == dev) return e.blocks;
  int sms = 0, per_sm = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem);
  const int64_t n = int64_t(per_sm > 0 ? per_sm : 1) * (sms > 0 ? sms : 1);
  cache.push_back({key, smem, dev, n});
  return n;
}

// The vector prologue takes the inputs (SSM_GEMV_VEC=0: never; read per launch, so a benchmark can
// compare both forms in one process): 16-byte aligned rows contiguous along K, at most kVecChunks
// chunks a thread, norm groups a multiple of a chunk.
template <typename T>
bool vector_prologue(const NormGemvParams& p) {
  const char* env = std::getenv("SSM_GEMV_VEC");
  if (env != nullptr && env[0] == '0') return false;
  constexpr int64_t kN = Pack<T>::kN;
  const bool gate = p.mode == 1 || p.mode == 2, res = p.mode == 3 || p.mode == 4;
  const auto f32_vec = [](const TensorArg& t) { return !has(t) || (t.stride[0] == 1 && aligned(t.data, 16)); };
  return p.batch * p.in_features <= kVecChunks * kThreads * kN && rows_vectorizable<T>(p.x, 1) &&
         (!gate || (rows_vectorizable<T>(p.z, 1) && p.group_size % kN == 0)) &&
         (!res || ((!has(p.residual) || rows_vectorizable<float>(p.residual, 1)) &&
                   rows_vectorizable<float>(p.residual_out, 1))) &&
         (p.mode == 0 || f32_vec(p.norm_weight)) && (p.mode != 4 || f32_vec(p.norm_bias));
}

// SSM_GEMV_PREFETCH_OWN=1: the register buffers' first units pulled into L2 before their loads (a variant; read per
// launch, so a benchmark compares both in one process). Pulling the units after them (3 ahead) was slower (s9r1).
bool pull_own() {
  const char* env = std::getenv("SSM_GEMV_PREFETCH_OWN");
  return env != nullptr && env[0] == '1';
}

// The ring form by default (3 units a warp, as many blocks as fit: two an SM, one where the inputs are long) for
// the large GEMVs with a norm prologue and no conv epilogue: Mamba-2's in_proj and out_proj, every lm_head. Measured
// (H200, s10r1, one graph-replayed token): mamba2-1.3b 1522 -> 1445 us with the ring everywhere (out_proj's ring
// block leaves room for in_proj's, which starts its weights under out_proj: in_proj 15.9 -> 12.2 us on the path,
// out_proj 7.1 -> 10.1); with the ring on in_proj alone no gain (s10r1b: 1517 us); Mamba-1's in_proj with the conv
// epilogue and the plain GEMVs (x_proj, out_proj) were slower in it (mamba-1.4b 1511 -> 1593 us). SSM_GEMV_RING
// (read per launch, so a benchmark compares the forms in one process): 0 = the register form everywhere; S or S:N =
// the ring form everywhere, S units in flight a warp (2..5), at most N blocks an SM.
struct RingForm {
  int stages = 0, per_sm = 0;
};

constexpr int64_t kRingMinBytes = int64_t(8) << 20;

template <typename T, bool kConv>
RingForm default_ring(const NormGemvParams& p) {
  const bool large = p.out_features * p.in_features * int64_t(sizeof(T)) >= kRingMinBytes;
  return large && !kConv && p.mode != 0 ? RingForm{3, 0} : RingForm{};
}

template <typename T, bool kConv>
RingForm ring_form(const NormGemvParams& p) {
  const char* env = std::getenv("SSM_GEMV_RING");
  if (env == nullptr || env[0] == '\0') return default_ring<T, kConv>(p);
  RingForm f;
  if (env[0] < '2' || env[0] > '5') return f;
  f.stages = env[0] - '0';
  if (env[1] == ':' && env[2] >= '1' && env[2] <= '4') f.per_sm = env[2] - '0';
  return f;
}

template <typename T, int kMode, int kG, bool kConv, bool kRing>
void launch_form(const NormGemvParams& p, size_t smem, RingForm ring, cudaStream_t stream) {
  const auto kernel = norm_gemv_stream_kernel<T, kMode, kG, kConv, kRing>;
  if (kRing) {
    smem += size_t(kWarps) * ring.stages * kSlots * 32 * 16;
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    // every ring kernel asks for the same (largest) carveout, so one can start on an SM another still holds
    cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, int(cudaSharedmemCarveoutMaxShared));
  }
  // as many warps as leave every warp the same number of row groups (no tail of a few warps)
  int64_t slots = resident(kernel, smem);
  if (kRing && ring.per_sm > 0) {
    int dev = 0, sms = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    slots = std::min<int64_t>(slots, int64_t(ring.per_sm) * sms);
  }
  const int64_t groups = (p.out_features + kG - 1) / kG, full = slots * kWarps;
  int64_t per_warp = (groups + full - 1) / full;
  // the conv epilogue: a lane per (row, batch row) of the warp's groups
  if (kConv) per_warp = std::min<int64_t>(per_warp, 32 / (p.batch * kG));
  const int64_t warps = (groups + per_warp - 1) / per_warp;
  const int64_t blocks = (warps + kWarps - 1) / kWarps;
  pdl_launch(kernel, dim3(unsigned(blocks)), dim3(kThreads), smem, stream, p, vector_prologue<T>(p), pull_own(),
             ring.stages);
}

template <typename T, int kMode, int kG, bool kConv = false>
void launch_stream(const NormGemvParams& p, size_t smem, cudaStream_t stream) {
  const RingForm ring = ring_form<T, kConv>(p);
  if (ring.stages > 0)
    launch_form<T, kMode, kG, kConv, true>(p, smem, ring, stream);
  else
    launch_form<T, kMode, kG, kConv, false>(p, smem, ring, stream);
}

template <typename T, int kG>
void launch_stream_mode(const NormGemvParams& p, size_t smem, cudaStream_t stream) {
  switch (p.mode) {
    case 0: return launch_stream<T, 0, kG>(p, smem, stream);
    case 1: return launch_stream<T, 1, kG>(p, smem, stream);
    case 2: return launch_stream<T, 2, kG>(p, smem, stream);
    case 3: return p.conv_rows > 0 ? launch_stream<T, 3, kG, true>(p, smem, stream)
                                   : launch_stream<T, 3, kG>(p, smem, stream);
    default: return p.conv_rows > 0 ? launch_stream<T, 4, kG, true>(p, smem, stream)
                                      : launch_stream<T, 4, kG>(p, smem, stream);
  }
}

}  // namespace

void norm_gemv(const NormGemvParams& p, cudaStream_t stream) {
  const char* op = "norm_gemv";
  SSM_CHECK(p.batch >= 0 && p.batch <= kMaxB, op, "batch must be at most ", kMaxB, ", got ", p.batch);
  SSM_CHECK(p.mode >= 0 && p.mode <= 4, op, "unknown mode ", p.mode);
  SSM_CHECK(p.mode < 3 || p.mode > 4 || has(p.residual_out), op, "modes 3 and 4 need residual_out");
  SSM_CHECK(p.conv_rows == 0 || ((p.mode == 3 || p.mode == 4) && p.conv_rows <= p.out_features &&
                                 has(p.conv_state) && has(p.conv_weight) && has(p.conv_out) && p.width >= 1 &&
                                 p.width <= 4 && p.state_len <= 4 && p.state_len >= 1 &&
                                 p.state_len >= p.width - 1),
            op, "the conv epilogue (modes 3, 4) needs conv_state (length 1..4, >= width - 1), conv_weight "
            "(width <= 4), conv_out and conv_rows <= out_features");
  SSM_CHECK(p.in_features >= 1 && p.in_features * p.batch * 4 <= 48 * 1024, op, "batch x in_features ",
            p.batch * p.in_features, " over the shared-memory row buffer");
  SSM_CHECK(p.mode == 0 || p.mode >= 3 || (p.group_size >= 1 && p.in_features % p.group_size == 0 &&
                            p.batch * (p.in_features / p.group_size) <= kMaxSegments),
            op, "group_size must divide in_features into at most ", kMaxSegments, " groups per batch");
  if (p.batch == 0 || p.out_features == 0) return;
  SSM_DTYPE_SWITCH(p.dtype, T, op, [&] {
    constexpr int64_t kN = Pack<T>::kN;
    SSM_CHECK(p.in_features % kN == 0 && p.weight.stride[1] == 1 && p.weight.stride[0] % kN == 0 &&
                  aligned(p.weight.data, 16),
              op, "weight rows must be contiguous and 16-byte aligned, in_features a multiple of ", kN);
    const size_t smem = size_t(p.batch * p.in_features) * sizeof(float);
    SSM_CHECK(p.out_features < (int64_t(1) << 30) && p.weight.stride[0] < (int64_t(1) << 31), op,
              "out_features must be below 2^30");
    // two rows a unit when a row has at most half a unit's chunks
    SSM_BOOL_SWITCH(p.in_features / kN <= 32 * kSlots / 2, kTwo, [&] {
      launch_stream_mode<T, kTwo ? 2 : 1>(p, smem, stream);
    });
  });
  check_launch(op);
}

}  // namespace ssm::cuda
