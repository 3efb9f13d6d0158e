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

}  // namespace

void dw_causal_conv_update(const ConvUpdateParams& p, cudaStream_t stream) {
  const char* op = "dw_causal_conv_update";
  SSM_CHECK(p.width >= 1 && p.width <= 64, op, "width must be in [1, 64], got ", p.width);  // as on the CPU
  SSM_CHECK(p.width >= 1 && p.state_len >= p.width - 1, op, "conv_state length ", p.state_len,
            " must be at least width - 1 = ", p.width - 1);
  if (p.batch * p.dim == 0) return;
  SSM_DTYPE_SWITCH(p.dtype, T, op, [&] {
    pdl_launch(conv_update_kernel<T>, dim3(ceil_div(p.batch * p.dim, kThreads)), dim3(kThreads), 0, stream, p);
  });
  check_launch(op);
}

}  // namespace ssm::cuda
