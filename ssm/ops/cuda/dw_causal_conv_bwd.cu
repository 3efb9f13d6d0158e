// Depthwise causal conv, backward, on the GPU. One block per (row, tile of 1024 steps), like the
// forward: x over the tile and W-1 steps either side and dy over the tile and W-1 steps after it
// go to shared memory; the pre-activation is recomputed to form g = dy * silu'(pre); then
// dx[j] = sum_k w[k] g[j+W-1-k] (+ dfinal), and the block's share of dweight / dbias is reduced
// in the block and added with one atomic per tap (dweight and dbias are zeroed first).
#include "cuda/kernels.h"
#include "cuda/vec.cuh"

namespace ssm::cuda {
namespace {

constexpr int kThreads = 128, kElems = 8, kTile = kThreads * kElems, kMaxHalo = 63;

struct Row {
  int64_t b, d;
  // 32-bit division (batch * dim < 2^31 is checked): 64-bit division is slow
  __device__ Row(const ConvParams& p) : b(blockIdx.x / uint32_t(p.dim)), d(blockIdx.x % uint32_t(p.dim)) {}
};

template <typename T>
__device__ __forceinline__ const T* row_of(const TensorArg& t, const Row& r) {
  return ptr<T>(t) + r.b * t.stride[0] + r.d * t.stride[1];
}

// xs[i] = x at step t0 - H + i for i < kTile + 2H (history before 0, zeros past L).
template <typename T, bool kVec>
__device__ void load_x(float* xs, const ConvParams& p, const Row& r, int64_t t0, int H) {
  const T* x = row_of<T>(p.x, r);
  const int64_t L = p.seqlen, sx = p.x.stride[2];
  const int64_t t = t0 + threadIdx.x * kElems;
  if (kVec && t + kElems <= L) {
    load_floats<T, kElems>(xs + H + threadIdx.x * kElems, x + t);
  } else {
    for (int e = 0; e < kElems; ++e) xs[H + threadIdx.x * kElems + e] = t + e < L ? to_float(x[(t + e) * sx]) : 0.f;
  }
  const T* init = has(p.initial_states) ? row_of<T>(p.initial_states, r) : nullptr;
  for (int i = threadIdx.x; i < 2 * H; i += kThreads) {
    const int64_t s = i < H ? t0 - H + i : t0 + kTile + (i - H);
    const int slot = i < H ? i : H + kTile + (i - H);
    float v = 0.f;
    if (s >= 0 && s < L) v = to_float(x[s * sx]);
    else if (s < 0 && init) v = to_float(init[(H + s) * p.initial_states.stride[2]]);
    xs[slot] = v;
  }
}

// gs[i] = dy at step t0 + i for i < kTile + H (zeros past L).
template <typename T, bool kVec>
__device__ void load_dy(float* gs, const ConvBwdParams& q, const Row& r, int64_t t0, int H) {
  const T* dy = row_of<T>(q.dout, r);
  const int64_t L = q.fwd.seqlen, sy = q.dout.stride[2];
  const int64_t t = t0 + threadIdx.x * kElems;
  if (kVec && t + kElems <= L) {
    load_floats<T, kElems>(gs + threadIdx.x * kElems, dy + t);
  } else {
    for (int e = 0; e < kElems; ++e) gs[threadIdx.x * kElems + e] = t + e < L ? to_float(dy[(t + e) * sy]) : 0.f;
  }
  for (int i = threadIdx.x; i < H; i += kThreads) {
    const int64_t s = t0 + kTile + i;
    gs[kTile + i] = s < L ? to_float(dy[s * sy]) : 0.f;
  }
}

// Adds v (one value per thread) over the block into *dst.
__device__ void block_atomic_add(float* dst, float v, float* scratch) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    float s = 0.f;
    for (int i = 0; i < kThreads / 32; ++i) s += scratch[i];
    atomicAdd(dst, s);
  }
  __syncthreads();
}

template <typename T, int kW, bool kSilu, bool kSeq, bool kVec>
__global__ void __launch_bounds__(kThreads) conv_bwd_kernel(ConvBwdParams q) {
  const ConvParams& p = q.fwd;
  __shared__ float xs[2 * kMaxHalo + kTile];
  __shared__ float gs[kMaxHalo + kTile];
  __shared__ float os[kTile];
  __shared__ float ws[kMaxHalo + 1];
  __shared__ float scratch[kThreads / 32];
  __shared__ int seq[kSeq ? 2 * kMaxHalo + kTile : 1];
  const int W = kW > 0 ? kW : int(p.width), H = W - 1;
  const Row r(p);
  const int64_t t0 = int64_t(blockIdx.y) * kTile, L = p.seqlen;
  for (int k = threadIdx.x; k < W; k += kThreads) ws[k] = ptr<float>(p.weight)[r.d * p.weight.stride[0] + k];
  load_x<T, kVec>(xs, p, r, t0, H);
  load_dy<T, kVec>(gs, q, r, t0, H);
  if (kSeq) {
    const int* si = ptr<int>(p.seq_idx) + r.b * p.seq_idx.stride[0];
    for (int i = threadIdx.x; i < kTile + 2 * H; i += kThreads) {
      const int64_t s = t0 - H + i;
      seq[i] = s < L ? si[(s < 0 ? 0 : s) * p.seq_idx.stride[1]] : -1;
    }
  }
  __syncthreads();
  // g at steps t0 + i (i < kTile + H): dy times the derivative of the activation
  const float bias = has(p.bias) ? ptr<float>(p.bias)[r.d * p.bias.stride[0]] : 0.f;
  if (kSilu) {
    for (int i = threadIdx.x; i < kTile + H; i += kThreads) {
      float pre = bias;
      for (int k = 0; k < W; ++k)
        if (!kSeq || seq[i + k] == seq[i + H]) pre += ws[k] * xs[i + k];
      const float s = sigmoid(pre);
      gs[i] *= s * (1.f + pre * (1.f - s));
    }
  }
  __syncthreads();
  // dx over the tile; the block's partial dweight (per tap) and dbias
  const bool final_grad = has(q.dfinal_states);
  const int last_seq = kSeq && L > 0 ? ptr<int>(p.seq_idx)[r.b * p.seq_idx.stride[0] + (L - 1) * p.seq_idx.stride[1]] : 0;
  float dw_part[kW > 0 ? kW : 1] = {};
  float db_part = 0.f;
  for (int e = 0; e < kElems; ++e) {
    const int i = e * kThreads + threadIdx.x;
    const int64_t j = t0 + i;
    float acc = 0.f;
    for (int k = 0; k < W; ++k)
      if (!kSeq || seq[H + i] == seq[2 * H + i - k]) acc += ws[k] * gs[i + H - k];
    if (final_grad && j < L && j >= L - H && (!kSeq || seq[H + i] == last_seq))
      acc += to_float(row_of<T>(q.dfinal_states, r)[(j - (L - H)) * q.dfinal_states.stride[2]]);
    os[i] = acc;
    if (kW > 0) {
#pragma unroll
      for (int k = 0; k < (kW > 0 ? kW : 1); ++k)
        if (!kSeq || seq[i + k] == seq[i + H]) dw_part[k] += gs[i] * xs[i + k];
    }
    db_part += gs[i];
  }
  __syncthreads();
  T* dx = ptr<T>(q.dx) + r.b * q.dx.stride[0] + r.d * q.dx.stride[1];
  const int64_t t = t0 + threadIdx.x * kElems;
  if (kVec && t + kElems <= L) {
    store_floats<T, kElems>(dx + t, os + threadIdx.x * kElems);
  } else {
    for (int e = 0; e < kElems && t + e < L; ++e) dx[(t + e) * q.dx.stride[2]] = from_float<T>(os[threadIdx.x * kElems + e]);
  }
  float* dweight = ptr<float>(q.dweight) + r.d * q.dweight.stride[0];
  for (int k = 0; k < W; ++k) {
    float v = 0.f;
    if (kW > 0) {
#pragma unroll
      for (int kk = 0; kk < (kW > 0 ? kW : 1); ++kk)
        if (kk == k) v = dw_part[kk];
    } else {
      for (int e = 0; e < kElems; ++e) {
        const int i = e * kThreads + threadIdx.x;
        if (!kSeq || seq[i + k] == seq[i + H]) v += gs[i] * xs[i + k];
      }
    }
    block_atomic_add(dweight + k * q.dweight.stride[1], v, scratch);
  }
  if (has(q.dbias)) block_atomic_add(ptr<float>(q.dbias) + r.d * q.dbias.stride[0], db_part, scratch);
  // gradient of the W-1 history inputs (steps -H .. -1) from the first outputs and from dfinal
  if (has(q.dinitial_states) && blockIdx.y == 0) {
    const int seq0 = kSeq ? seq[H] : 0;
    for (int i = threadIdx.x; i < H; i += kThreads) {
      float acc = 0.f;
      for (int64_t tt = 0; tt <= i && tt < L; ++tt)
        if (!kSeq || seq[H + tt] == seq0) acc += ws[i - tt] * gs[tt];
      if (final_grad && i >= L && (!kSeq || L == 0 || last_seq == seq0))
        acc += to_float(row_of<T>(q.dfinal_states, r)[(i - L) * q.dfinal_states.stride[2]]);
      ptr<T>(q.dinitial_states)[r.b * q.dinitial_states.stride[0] + r.d * q.dinitial_states.stride[1] +
                                i * q.dinitial_states.stride[2]] = from_float<T>(acc);
    }
  }
}

__global__ void zero_dweight_kernel(ConvBwdParams q) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, W = q.fwd.width;
  if (i >= q.fwd.dim * W) return;
  const int64_t d = i / W, k = i % W;
  ptr<float>(q.dweight)[d * q.dweight.stride[0] + k * q.dweight.stride[1]] = 0.f;
  if (k == 0 && has(q.dbias)) ptr<float>(q.dbias)[d * q.dbias.stride[0]] = 0.f;
}

// Widths 2-4: each thread owns 16 consecutive positions; x (with W-1 inputs either side) and dy
// (with W-1 after) sit in registers, the halos coming from the neighbouring lanes by shuffles
// (the warp's edge lanes read them), so x and dy are each read from memory once.
constexpr int kRegElems = 16, kRegTile = kThreads * kRegElems;

template <typename T, int kW, bool kSilu, bool kSeq, bool kVec>
__global__ void __launch_bounds__(kThreads, kSeq || sizeof(T) == 4 ? 1 : 8) conv_bwd_reg_kernel(ConvBwdParams q) {
  constexpr int H = kW - 1, E = kRegElems;
  const ConvParams& p = q.fwd;
  const Row r(p);
  const int64_t L = p.seqlen, j0 = int64_t(blockIdx.y) * kRegTile + threadIdx.x * E;
  const int lane = threadIdx.x % 32;
  const T* x = row_of<T>(p.x, r);
  const T* dyp = row_of<T>(q.dout, r);
  const int64_t sx = p.x.stride[2], sy = q.dout.stride[2];
  // xv[i] = x at j0 - H + i (i < E + 2H); gv[i] = dy, then g, at j0 + i (i < E + H)
  float xv[E + 2 * H], gv[E + H];
  // warp-edge halos as one 16-byte pack each, loaded with the lane's own rows (not a round trip later)
  constexpr int kP = Pack<T>::kN;
  const bool left_vec = kVec && lane == 0 && j0 >= kP && j0 <= L, right_vec = kVec && lane == 31 && j0 + E + kP <= L;
  Pack<T> xl, xr, gr;
  if (left_vec) xl.load(x + j0 - kP);
  if (right_vec) xr.load(x + j0 + E), gr.load(dyp + j0 + E);
  if (kVec && j0 + E <= L) {
    load_floats<T, 8>(xv + H, x + j0);
    load_floats<T, 8>(xv + H + 8, x + j0 + 8);
    load_floats<T, 8>(gv, dyp + j0);
    load_floats<T, 8>(gv + 8, dyp + j0 + 8);
  } else {
#pragma unroll
    for (int e = 0; e < E; ++e) {
      xv[H + e] = j0 + e < L ? to_float(x[(j0 + e) * sx]) : 0.f;
      gv[e] = j0 + e < L ? to_float(dyp[(j0 + e) * sy]) : 0.f;
    }
  }
#pragma unroll
  for (int k = 0; k < H; ++k) {
    xv[k] = __shfl_up_sync(0xffffffffu, xv[E + k], 1);
    xv[H + E + k] = __shfl_down_sync(0xffffffffu, xv[H + k], 1);
    gv[E + k] = __shfl_down_sync(0xffffffffu, gv[k], 1);
  }
  if (lane == 0) {
    if (left_vec) {
#pragma unroll
      for (int k = 0; k < H; ++k) xv[k] = to_float(xl.e[kP - H + k]);
    } else {
      const T* init = has(p.initial_states) ? row_of<T>(p.initial_states, r) : nullptr;
#pragma unroll
      for (int k = 0; k < H; ++k) {
        const int64_t s = j0 - H + k;
        xv[k] = s >= 0 && s < L ? to_float(x[s * sx]) : (s < 0 && init) ? to_float(init[(H + s) * p.initial_states.stride[2]]) : 0.f;
      }
    }
  }
  if (lane == 31) {
    if (right_vec) {
#pragma unroll
      for (int k = 0; k < H; ++k) xv[H + E + k] = to_float(xr.e[k]), gv[E + k] = to_float(gr.e[k]);
    } else {
#pragma unroll
      for (int k = 0; k < H; ++k) {
        const int64_t s = j0 + E + k;
        xv[H + E + k] = s < L ? to_float(x[s * sx]) : 0.f;
        gv[E + k] = s < L ? to_float(dyp[s * sy]) : 0.f;
      }
    }
  }
  // sq[i] = seq id at j0 - H + i (history: token 0's; past L: -1)
  int sq[kSeq ? E + 2 * H : 1];
  if (kSeq) {
    const int* si = ptr<int>(p.seq_idx) + r.b * p.seq_idx.stride[0];
#pragma unroll
    for (int i = 0; i < E + 2 * H; ++i) {
      const int64_t s = j0 - H + i;
      sq[i] = s < L ? si[(s < 0 ? 0 : s) * p.seq_idx.stride[1]] : -1;
    }
  }
  float w[kW];
#pragma unroll
  for (int k = 0; k < kW; ++k) w[k] = ptr<float>(p.weight)[r.d * p.weight.stride[0] + k];
  const float bias = has(p.bias) ? ptr<float>(p.bias)[r.d * p.bias.stride[0]] : 0.f;
  // g = dy * silu'(pre) at positions j0 .. j0 + E + H - 1
  if (kSilu) {
#pragma unroll
    for (int i = 0; i < E + H; ++i) {
      float pre = bias;
#pragma unroll
      for (int k = 0; k < kW; ++k)
        if (!kSeq || sq[i + k] == sq[i + H]) pre += w[k] * xv[i + k];
      const float sg = sigmoid(pre);
      gv[i] *= sg * (1.f + pre * (1.f - sg));
    }
  }
  const int last_seq = kSeq && L > 0 ? ptr<int>(p.seq_idx)[r.b * p.seq_idx.stride[0] + (L - 1) * p.seq_idx.stride[1]] : 0;
  float dx[E], dw[kW] = {}, db = 0.f;
#pragma unroll
  for (int i = 0; i < E; ++i) {
    float acc = 0.f;
#pragma unroll
    for (int k = 0; k < kW; ++k)
      if (!kSeq || sq[H + i] == sq[2 * H + i - k]) acc += w[k] * gv[i + H - k];
    dx[i] = acc;
#pragma unroll
    for (int k = 0; k < kW; ++k)
      if (!kSeq || sq[i + k] == sq[i + H]) dw[k] += gv[i] * xv[i + k];
    db += gv[i];
  }
  // the final-state gradient reaches the last W-1 steps only: one test per thread
  if (has(q.dfinal_states) && j0 + E > L - H) {
#pragma unroll
    for (int i = 0; i < E; ++i) {
      const int64_t j = j0 + i;
      if (j < L && j >= L - H && (!kSeq || sq[H + i] == last_seq))
        dx[i] += to_float(row_of<T>(q.dfinal_states, r)[(j - (L - H)) * q.dfinal_states.stride[2]]);
    }
  }
  T* dxp = ptr<T>(q.dx) + r.b * q.dx.stride[0] + r.d * q.dx.stride[1];
  if (kVec && j0 + E <= L) {
    store_floats<T, 8>(dxp + j0, dx);
    store_floats<T, 8>(dxp + j0 + 8, dx + 8);
  } else {
#pragma unroll
    for (int i = 0; i < E; ++i)
      if (j0 + i < L) dxp[(j0 + i) * q.dx.stride[2]] = from_float<T>(dx[i]);
  }
  // gradient of the W-1 history inputs: from the first outputs (thread 0 of tile 0) and dfinal
  if (has(q.dinitial_states) && j0 == 0) {
    const int seq0 = kSeq ? sq[H] : 0;
#pragma unroll
    for (int i = 0; i < H; ++i) {
      float acc = 0.f;
#pragma unroll
      for (int tt = 0; tt <= i; ++tt)
        if (tt < L && (!kSeq || sq[H + tt] == seq0)) acc += w[i - tt] * gv[tt];
      if (has(q.dfinal_states) && i >= L && (!kSeq || L == 0 || last_seq == seq0))
        acc += to_float(row_of<T>(q.dfinal_states, r)[(i - L) * q.dfinal_states.stride[2]]);
      ptr<T>(q.dinitial_states)[r.b * q.dinitial_states.stride[0] + r.d * q.dinitial_states.stride[1] +
                                i * q.dinitial_states.stride[2]] = from_float<T>(acc);
    }
  }
  // dweight (kW taps) and dbias over the block: warp sums, one barrier, one atomic per tap
  float part[kW + 1];
#pragma unroll
  for (int k = 0; k < kW; ++k) part[k] = dw[k];
  part[kW] = db;
#pragma unroll
  for (int k = 0; k <= kW; ++k)
#pragma unroll
    for (int off = 16; off > 0; off /= 2) part[k] += __shfl_xor_sync(0xffffffffu, part[k], off);
  __shared__ float sums[kW + 1][kThreads / 32];
  if (lane == 0)
#pragma unroll
    for (int k = 0; k <= kW; ++k) sums[k][threadIdx.x / 32] = part[k];
  __syncthreads();
  if (threadIdx.x <= kW && (threadIdx.x < kW || has(q.dbias))) {
    float v = 0.f;
#pragma unroll
    for (int w = 0; w < kThreads / 32; ++w) v += sums[threadIdx.x][w];
    atomicAdd(threadIdx.x < kW ? ptr<float>(q.dweight) + r.d * q.dweight.stride[0] + threadIdx.x * q.dweight.stride[1]
                               : ptr<float>(q.dbias) + r.d * q.dbias.stride[0], v);
  }
}

template <typename T>
void launch(const ConvBwdParams& q, cudaStream_t stream) {
  const ConvParams& p = q.fwd;
  zero_dweight_kernel<<<ceil_div(p.dim * p.width, 256), 256, 0, stream>>>(q);
  if (p.batch == 0) return;
  const bool vec = rows_vectorizable<T>(p.x, 2) && rows_vectorizable<T>(q.dout, 2) && rows_vectorizable<T>(q.dx, 2);
  const unsigned rows = unsigned(p.batch * p.dim), seq_len = unsigned(p.seqlen > 0 ? p.seqlen : 1);
  SSM_WIDTH_SWITCH(int(p.width), KW, [&] {
    SSM_BOOL_SWITCH(p.silu, kSilu, [&] {
      SSM_BOOL_SWITCH(has(p.seq_idx), kSeq, [&] {
        SSM_BOOL_SWITCH(vec, kVec, [&] {
          if constexpr (KW > 0) {
            conv_bwd_reg_kernel<T, KW, kSilu, kSeq, kVec>
                <<<dim3(rows, ceil_div(seq_len, kRegTile)), kThreads, 0, stream>>>(q);
          } else {
            conv_bwd_kernel<T, KW, kSilu, kSeq, kVec><<<dim3(rows, ceil_div(seq_len, kTile)), kThreads, 0, stream>>>(q);
          }
        });
      });
    });
  });
}

}  // namespace

void dw_causal_conv_bwd(const ConvBwdParams& q, cudaStream_t stream) {
  const char* op = "dw_causal_conv_bwd";
  const ConvParams& p = q.fwd;
  SSM_CHECK(p.width >= 1 && p.width <= kMaxHalo + 1, op, "width must be in [1, 64], got ", p.width);
  SSM_CHECK(p.batch * p.dim < (int64_t(1) << 31), op, "batch * dim must be below 2^31");
  SSM_CHECK(p.seqlen <= int64_t(kTile) * 65535, op, "seqlen too long: ", p.seqlen);
  if (p.dim == 0) return;
  SSM_DTYPE_SWITCH(p.dtype, T, op, [&] { launch<T>(q, stream); });
  check_launch(op);
}

}  // namespace ssm::cuda
