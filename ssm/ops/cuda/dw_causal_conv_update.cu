// Depthwise causal conv decode update on the GPU: one thread per (batch row, channel), channels
// adjacent so a channels-last conv_state (Mamba-2) is read coalesced. The W-1 inputs before the
// new tokens come from the state (its tail, or a ring at cache_seqlens); every output is computed
// before the state row is rewritten in place. Launched with PDL (pdl.cuh): a decode step's blocks
// start while the previous kernel (in_proj) ends.
#include "cuda/kernels.h"
#include "cuda/pdl.cuh"
#include "cuda/vec.cuh"

namespace ssm::cuda {
namespace {

constexpr int kThreads = 128;

template <typename T>
__device__ __forceinline__ T& state_at(const ConvUpdateParams& p, int64_t srow, int64_t d, int64_t s) {
  return ptr<T>(p.conv_state)[srow * p.conv_state.stride[0] + d * p.conv_state.stride[1] + s * p.conv_state.stride[2]];
}

// Input j relative to the first new token: x for j >= 0, the state's history for -(W-1) <= j < 0.
template <typename T>
__device__ __forceinline__ float input_at(const ConvUpdateParams& p, const T* x, int64_t srow, int64_t d, int64_t ring,
                                          int64_t j) {
  if (j >= 0) return to_float(x[j * p.x.stride[2]]);
  const int64_t S = p.state_len;
  const int64_t s = ring >= 0 ? ((ring + j) % S + S) % S : S + j;
  return to_float(state_at<T>(p, srow, d, s));
}

template <typename T>
__global__ void __launch_bounds__(kThreads) conv_update_kernel(ConvUpdateParams p) {
  pdl_wait();  // everything below may depend on the previous kernel
  pdl_release();
  const int64_t gid = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (gid >= p.batch * p.dim) return;
  const int64_t b = gid / p.dim, d = gid % p.dim, L = p.seqlen, W = p.width, S = p.state_len;
  const int64_t srow = has(p.conv_state_indices) ? ptr<int>(p.conv_state_indices)[b * p.conv_state_indices.stride[0]] : b;
  T* out = ptr<T>(p.out) + b * p.out.stride[0] + d * p.out.stride[1];
  if (srow < 0) {
    for (int64_t t = 0; t < L; ++t) out[t * p.out.stride[2]] = from_float<T>(0.f);
    return;
  }
  const T* x = ptr<T>(p.x) + b * p.x.stride[0] + d * p.x.stride[1];
  const int64_t ring = has(p.cache_seqlens) ? ptr<int>(p.cache_seqlens)[b * p.cache_seqlens.stride[0]] : -1;
  const float* w = ptr<float>(p.weight) + d * p.weight.stride[0];
  const float bias = has(p.bias) ? ptr<float>(p.bias)[d * p.bias.stride[0]] : 0.f;
  for (int64_t t = 0; t < L; ++t) {
    float acc = bias;
    for (int64_t k = 0; k < W; ++k) acc += w[k * p.weight.stride[1]] * input_at<T>(p, x, srow, d, ring, t - (W - 1) + k);
    out[t * p.out.stride[2]] = from_float<T>(p.silu ? silu(acc) : acc);
  }
  if (ring >= 0) {
    for (int64_t t = 0; t < L; ++t) state_at<T>(p, srow, d, (ring + t) % S) = x[t * p.x.stride[2]];
  } else {
    // shift left by L (ascending, so each entry is read before it is overwritten), then append x
    for (int64_t s = 0; s < S; ++s)
      state_at<T>(p, srow, d, s) = s + L < S ? state_at<T>(p, srow, d, s + L) : x[(s + L - S) * p.x.stride[2]];
  }
}

// One token on rows of exactly four contiguous state entries (Mamba-1's cache: S = d_conv = 4), no ring: a
// thread per (channel, batch row blockIdx.y), its state row read and written as one 8- or 16-byte word, the
// weights as one float4, every load issued before any math (the general kernel above: 64-bit index division,
// per-entry loads serialized behind its stores).
template <typename T>
struct alignas(4 * sizeof(T)) Row4 {
  T e[4];
};

template <typename T, int KW>
__global__ void __launch_bounds__(kThreads) conv_update_row4_kernel(ConvUpdateParams p) {
  pdl_wait();
  pdl_release();
  const uint32_t d = blockIdx.x * kThreads + threadIdx.x;
  const int64_t b = blockIdx.y;  // signed: the ternary below keeps a padding index (-1) negative
  if (d >= uint32_t(p.dim)) return;
  const int64_t srow = has(p.conv_state_indices) ? ptr<int>(p.conv_state_indices)[b * p.conv_state_indices.stride[0]] : b;
  T& out = ptr<T>(p.out)[b * p.out.stride[0] + d * p.out.stride[1]];
  if (srow < 0) {
    out = from_float<T>(0.f);
    return;
  }
  Row4<T>* row = reinterpret_cast<Row4<T>*>(ptr<T>(p.conv_state) + srow * p.conv_state.stride[0] + d * p.conv_state.stride[1]);
  Row4<T> s = *row;
  const T xv = ptr<T>(p.x)[b * p.x.stride[0] + d * p.x.stride[1]];
  const float* wp = ptr<float>(p.weight) + d * p.weight.stride[0];
  float w[KW];
#pragma unroll
  for (int k = 0; k < KW; ++k) w[k] = wp[k * p.weight.stride[1]];
  float acc = has(p.bias) ? ptr<float>(p.bias)[d * p.bias.stride[0]] : 0.f;
  // inputs: the state's last KW - 1 entries, then x
#pragma unroll
  for (int k = 0; k < KW - 1; ++k) acc += w[k] * to_float(s.e[4 - (KW - 1) + k]);
  acc += w[KW - 1] * to_float(xv);
  out = from_float<T>(p.silu ? silu(acc) : acc);
  *row = Row4<T>{{s.e[1], s.e[2], s.e[3], xv}};
}

// The row4 kernel takes this call: one token, no ring, state rows of four contiguous entries aligned as one
// word, W <= 4, 32-bit channel and 16-bit batch grid (H200, session 6: b64 conv update 3.4 us a call at 1.4b
// vs 7.5 on the general kernel, mamba-130m decode b64 0.776 vs 0.822 ms a step).
bool use_row4(const ConvUpdateParams& p, int64_t elem) {
  const TensorArg& s = p.conv_state;
  return p.seqlen == 1 && !has(p.cache_seqlens) && p.state_len == 4 && p.width >= 2 && p.width <= 4 &&
         s.stride[2] == 1 && s.stride[0] % 4 == 0 && s.stride[1] % 4 == 0 && aligned(s.data, 4 * elem) &&
         p.batch <= 65535 && p.dim < (int64_t(1) << 31);
}

}  // namespace

void dw_causal_conv_update(const ConvUpdateParams& p, cudaStream_t stream) {
  const char* op = "dw_causal_conv_update";
  SSM_CHECK(p.width >= 1 && p.width <= 64, op, "width must be in [1, 64], got ", p.width);  // as on the CPU
  SSM_CHECK(p.width >= 1 && p.state_len >= p.width - 1, op, "conv_state length ", p.state_len,
            " must be at least width - 1 = ", p.width - 1);
  if (p.batch * p.dim == 0) return;
  SSM_DTYPE_SWITCH(p.dtype, T, op, [&] {
    if (use_row4(p, sizeof(T))) {
      const dim3 grid(unsigned(ceil_div(p.dim, kThreads)), unsigned(p.batch));
      auto kernel = p.width == 2 ? conv_update_row4_kernel<T, 2>
                  : p.width == 3 ? conv_update_row4_kernel<T, 3> : conv_update_row4_kernel<T, 4>;
      return pdl_launch(kernel, grid, dim3(kThreads), 0, stream, p);
    }
    pdl_launch(conv_update_kernel<T>, dim3(ceil_div(p.batch * p.dim, kThreads)), dim3(kThreads), 0, stream, p);
  });
  check_launch(op);
}

}  // namespace ssm::cuda
