// Depthwise causal conv, forward, on the GPU. One block per (row, tile of 1024 steps): the tile
// and its W-1 history are widened to float32 in shared memory (16-byte loads when the row is
// contiguous), each thread computes 8 outputs, and the tile goes back in 16-byte stores.
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

// xs[i] = input at step t0 - H + i for i < H + kTile (history or zeros before 0, zeros past L).
template <typename T, bool kVec>
__device__ void load_tile(float* xs, const ConvParams& p, const Row& r, int64_t t0, int H) {
  const T* x = ptr<T>(p.x) + r.b * p.x.stride[0] + r.d * p.x.stride[1];
  const int64_t L = p.seqlen, sx = p.x.stride[2];
  const int64_t t = t0 + threadIdx.x * kElems;
  if (kVec && t + kElems <= L) {
    load_floats<T, kElems>(xs + H + threadIdx.x * kElems, x + t);
  } else {
    for (int e = 0; e < kElems; ++e) xs[H + threadIdx.x * kElems + e] = t + e < L ? to_float(x[(t + e) * sx]) : 0.f;
  }
  const T* init = has(p.initial_states)
      ? ptr<T>(p.initial_states) + r.b * p.initial_states.stride[0] + r.d * p.initial_states.stride[1] : nullptr;
  for (int i = threadIdx.x; i < H; i += kThreads) {
    const int64_t s = t0 - H + i;
    xs[i] = s >= 0 ? to_float(x[s * sx]) : init ? to_float(init[(H + s) * p.initial_states.stride[2]]) : 0.f;
  }
}

// seq[i] = seq_idx at step t0 - H + i; history steps take token 0's id. Input j reaches output t
// only when their ids are equal.
__device__ void load_seq(int* seq, const ConvParams& p, const Row& r, int64_t t0, int H) {
  const int* si = ptr<int>(p.seq_idx) + r.b * p.seq_idx.stride[0];
  for (int i = threadIdx.x; i < H + kTile; i += kThreads) {
    const int64_t s = t0 - H + i;
    seq[i] = s < p.seqlen ? si[(s < 0 ? 0 : s) * p.seq_idx.stride[1]] : -1;
  }
}

// The last W-1 inputs of the row (zero where not in the last token's sequence).
template <typename T, bool kSeq>
__device__ void write_final_states(const ConvParams& p, const Row& r, int H) {
  const T* x = ptr<T>(p.x) + r.b * p.x.stride[0] + r.d * p.x.stride[1];
  const int64_t L = p.seqlen;
  for (int i = threadIdx.x; i < H; i += kThreads) {
    const int64_t j = L - H + i;
    float v = 0.f;
    if (j >= 0) v = to_float(x[j * p.x.stride[2]]);
    else if (has(p.initial_states))
      v = to_float(ptr<T>(p.initial_states)[r.b * p.initial_states.stride[0] + r.d * p.initial_states.stride[1] +
                                             (H + j) * p.initial_states.stride[2]]);
    if (kSeq && L > 0) {
      const int* si = ptr<int>(p.seq_idx) + r.b * p.seq_idx.stride[0];
      const int last = si[(L - 1) * p.seq_idx.stride[1]];
      if (si[(j < 0 ? 0 : j) * p.seq_idx.stride[1]] != last) v = 0.f;
    }
    ptr<T>(p.final_states)[r.b * p.final_states.stride[0] + r.d * p.final_states.stride[1] +
                           i * p.final_states.stride[2]] = from_float<T>(v);
  }
}

template <typename T, int kW, bool kSilu, bool kSeq, bool kVec>
__global__ void __launch_bounds__(kThreads) conv_fwd_kernel(ConvParams p) {
  __shared__ float xs[kMaxHalo + kTile];
  __shared__ float ys[kTile];
  __shared__ float ws[kMaxHalo + 1];
  __shared__ int seq[kSeq ? kMaxHalo + kTile : 1];
  const int W = kW > 0 ? kW : int(p.width), H = W - 1;
  const Row r(p);
  const int64_t t0 = int64_t(blockIdx.y) * kTile, L = p.seqlen;
  for (int k = threadIdx.x; k < W; k += kThreads) ws[k] = ptr<float>(p.weight)[r.d * p.weight.stride[0] + k];
  load_tile<T, kVec>(xs, p, r, t0, H);
  if (kSeq) load_seq(seq, p, r, t0, H);
  __syncthreads();
  const float bias = has(p.bias) ? ptr<float>(p.bias)[r.d * p.bias.stride[0]] : 0.f;
#pragma unroll
  for (int e = 0; e < kElems; ++e) {
    const int i = e * kThreads + threadIdx.x;
    float acc = bias + ws[H] * xs[i + H];
#pragma unroll
    for (int k = 0; k < (kW > 0 ? kW : W) - 1; ++k)
      if (!kSeq || seq[i + k] == seq[i + H]) acc += ws[k] * xs[i + k];
    ys[i] = kSilu ? silu(acc) : acc;
  }
  __syncthreads();
  T* out = ptr<T>(p.out) + r.b * p.out.stride[0] + r.d * p.out.stride[1];
  const int64_t t = t0 + threadIdx.x * kElems;
  if (kVec && t + kElems <= L) {
    store_floats<T, kElems>(out + t, ys + threadIdx.x * kElems);
  } else {
    for (int e = 0; e < kElems && t + e < L; ++e) out[(t + e) * p.out.stride[2]] = from_float<T>(ys[threadIdx.x * kElems + e]);
  }
  if (has(p.final_states) && blockIdx.y == 0) write_final_states<T, kSeq>(p, r, H);
}

// Widths 2-4: each thread keeps 16 consecutive inputs in registers (two 16-byte loads) and takes
// the W-1 inputs before them from the previous lane by shuffles (lane 0 reads them), so every
// input is read from memory once and many loads are in flight. seq ids travel the same way.
constexpr int kRegElems = 16, kRegTile = kThreads * kRegElems;

template <typename T, int kW, bool kSilu, bool kSeq, bool kVec>
__global__ void __launch_bounds__(kThreads) conv_fwd_reg_kernel(ConvParams p) {
  constexpr int H = kW - 1, E = kRegElems;
  const Row r(p);
  const int64_t L = p.seqlen, t0 = int64_t(blockIdx.y) * kRegTile + threadIdx.x * E, sx = p.x.stride[2];
  const T* x = ptr<T>(p.x) + r.b * p.x.stride[0] + r.d * p.x.stride[1];
  const int lane = threadIdx.x % 32;
  float v[H + E];
  // lane 0's history as one 16-byte pack, loaded with the lane's own inputs (not a round trip later)
  constexpr int kP = Pack<T>::kN;
  const bool left_vec = kVec && lane == 0 && t0 >= kP && t0 <= L;
  Pack<T> xl;
  if (left_vec) xl.load(x + t0 - kP);
  if (kVec && t0 + E <= L) {
    load_floats<T, 8>(v + H, x + t0);
    load_floats<T, 8>(v + H + 8, x + t0 + 8);
  } else {
#pragma unroll
    for (int e = 0; e < E; ++e) v[H + e] = t0 + e < L ? to_float(x[(t0 + e) * sx]) : 0.f;
  }
#pragma unroll
  for (int k = 0; k < H; ++k) v[k] = __shfl_up_sync(0xffffffffu, v[E + k], 1);
  if (left_vec) {
#pragma unroll
    for (int k = 0; k < H; ++k) v[k] = to_float(xl.e[kP - H + k]);
  } else if (lane == 0) {
    const T* init = has(p.initial_states)
        ? ptr<T>(p.initial_states) + r.b * p.initial_states.stride[0] + r.d * p.initial_states.stride[1] : nullptr;
#pragma unroll
    for (int k = 0; k < H; ++k) {
      const int64_t s = t0 - H + k;  // lanes past the end (t0 > L) read nothing: their outputs are dropped
      v[k] = s >= L ? 0.f : s >= 0 ? to_float(x[s * sx]) : init ? to_float(init[(H + s) * p.initial_states.stride[2]]) : 0.f;
    }
  }
  int sq[kSeq ? H + E : 1];
  if (kSeq) {
    const int* si = ptr<int>(p.seq_idx) + r.b * p.seq_idx.stride[0];
    const int64_t ss = p.seq_idx.stride[1];
#pragma unroll
    for (int e = 0; e < E; ++e) sq[H + e] = t0 + e < L ? si[(t0 + e) * ss] : -1;
#pragma unroll
    for (int k = 0; k < H; ++k) sq[k] = __shfl_up_sync(0xffffffffu, sq[E + k], 1);
    if (lane == 0)
#pragma unroll
      for (int k = 0; k < H; ++k) {
        const int64_t s = t0 - H + k;
        sq[k] = s >= L ? -1 : si[(s < 0 ? 0 : s) * ss];
      }
  }
  float w[kW];
#pragma unroll
  for (int k = 0; k < kW; ++k) w[k] = ptr<float>(p.weight)[r.d * p.weight.stride[0] + k];
  const float bias = has(p.bias) ? ptr<float>(p.bias)[r.d * p.bias.stride[0]] : 0.f;
  float y[E];
#pragma unroll
  for (int e = 0; e < E; ++e) {
    float acc = bias;
#pragma unroll
    for (int k = 0; k < kW; ++k)
      if (!kSeq || k == H || sq[e + k] == sq[e + H]) acc += w[k] * v[e + k];
    y[e] = kSilu ? silu(acc) : acc;
  }
  T* out = ptr<T>(p.out) + r.b * p.out.stride[0] + r.d * p.out.stride[1];
  if (kVec && t0 + E <= L) {
    store_floats<T, 8>(out + t0, y);
    store_floats<T, 8>(out + t0 + 8, y + 8);
  } else {
#pragma unroll
    for (int e = 0; e < E; ++e)
      if (t0 + e < L) out[(t0 + e) * p.out.stride[2]] = from_float<T>(y[e]);
  }
  if (has(p.final_states) && blockIdx.y == 0) write_final_states<T, kSeq>(p, r, H);
}

template <typename T>
void launch(const ConvParams& p, cudaStream_t stream) {
  const bool vec = rows_vectorizable<T>(p.x, 2) && rows_vectorizable<T>(p.out, 2);
  const unsigned rows = unsigned(p.batch * p.dim), seq_len = unsigned(p.seqlen > 0 ? p.seqlen : 1);
  SSM_WIDTH_SWITCH(int(p.width), KW, [&] {
    SSM_BOOL_SWITCH(p.silu, kSilu, [&] {
      SSM_BOOL_SWITCH(has(p.seq_idx), kSeq, [&] {
        SSM_BOOL_SWITCH(vec, kVec, [&] {
          if constexpr (KW > 0) {
            conv_fwd_reg_kernel<T, KW, kSilu, kSeq, kVec>
                <<<dim3(rows, ceil_div(seq_len, kRegTile)), kThreads, 0, stream>>>(p);
          } else {
            conv_fwd_kernel<T, KW, kSilu, kSeq, kVec><<<dim3(rows, ceil_div(seq_len, kTile)), kThreads, 0, stream>>>(p);
          }
        });
      });
    });
  });
}

}  // namespace

void dw_causal_conv_fwd(const ConvParams& p, cudaStream_t stream) {
  const char* op = "dw_causal_conv_fwd";
  SSM_CHECK(p.width >= 1 && p.width <= kMaxHalo + 1, op, "width must be in [1, 64], got ", p.width);
  SSM_CHECK(p.batch * p.dim < (int64_t(1) << 31), op, "batch * dim must be below 2^31");
  SSM_CHECK(p.seqlen <= int64_t(kTile) * 65535, op, "seqlen too long: ", p.seqlen);
  if (p.batch * p.dim == 0) return;
  SSM_DTYPE_SWITCH(p.dtype, T, op, [&] { launch<T>(p, stream); });
  check_launch(op);
}

}  // namespace ssm::cuda
