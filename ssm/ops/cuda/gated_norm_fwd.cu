// Gated RMSNorm / LayerNorm forward (Mamba-2) on the GPU: one block per (row, group of
// features). norm_before_gate: y = (norm(x) * w + b) * silu(z); otherwise
// y = norm(x * silu(z)) * w + b. The normalized input lives in shared memory as float32.
#include "cuda/norm_common.cuh"

namespace ssm::cuda {
namespace {

using namespace norm;

template <int P>
__global__ void __launch_bounds__(kThreads) gated_norm_fwd_kernel(GatedNormParams p) {
  extern __shared__ float s[];
  __shared__ float scratch[kThreads / 32];
  const int64_t ngroups = p.cols / p.group, row = blockIdx.x / ngroups, c0 = (blockIdx.x % ngroups) * p.group;
  const int64_t G = p.group;
  const bool gate = has(p.z), pre_gate = gate && !p.norm_before_gate;
  float sum = 0.f;
  for (int64_t c = int64_t(threadIdx.x) * P; c < G; c += int64_t(blockDim.x) * P) {
    float v[P], z[P];
    load<P>(v, p.x, p.dtype, row, c0 + c);
    if (pre_gate) {
      load<P>(z, p.z, p.z_dtype, row, c0 + c);
#pragma unroll
      for (int e = 0; e < P; ++e) v[e] *= silu(z[e]);
    }
#pragma unroll
    for (int e = 0; e < P; ++e) s[c + e] = v[e], sum += v[e];
  }
  const float mean = p.is_rms ? 0.f : block_sum(sum, scratch) / float(G);
  float sq = 0.f;
  for (int64_t c = int64_t(threadIdx.x) * P; c < G; c += int64_t(blockDim.x) * P)
#pragma unroll
    for (int e = 0; e < P; ++e) sq += (s[c + e] - mean) * (s[c + e] - mean);
  const float rstd = rsqrtf(block_sum(sq, scratch) / float(G) + p.eps);
  const float* w = ptr<float>(p.weight) + c0;
  const float* b = has(p.bias) ? ptr<float>(p.bias) + c0 : nullptr;
  for (int64_t c = int64_t(threadIdx.x) * P; c < G; c += int64_t(blockDim.x) * P) {
    float y[P], z[P];
    if (gate && !pre_gate) load<P>(z, p.z, p.z_dtype, row, c0 + c);
#pragma unroll
    for (int e = 0; e < P; ++e) {
      y[e] = (s[c + e] - mean) * rstd * w[c + e] + (b ? b[c + e] : 0.f);
      if (gate && !pre_gate) y[e] *= silu(z[e]);
    }
    store<P>(p.out, p.dtype, row, c0 + c, y);
  }
}

}  // namespace

void gated_norm_fwd(const GatedNormParams& p, cudaStream_t stream) {
  const char* op = "gated_norm_fwd";
  SSM_CHECK(p.group >= 1 && p.cols % p.group == 0, op, "group size ", p.group, " must divide ", p.cols);
  const size_t smem = size_t(p.group) * sizeof(float);
  SSM_CHECK(smem <= 200 * 1024, op, "the CUDA kernel takes groups of at most 51200 features, got ", p.group);
  const int64_t blocks = p.rows * (p.cols / p.group);
  SSM_CHECK(blocks < (int64_t(1) << 31), op, "too many rows: ", p.rows);
  if (blocks == 0) return;
  const bool vec = p.group % 8 == 0 && norm::packable(p.x, p.dtype) && norm::packable(p.z, p.z_dtype) &&
                   norm::packable(p.out, p.dtype);
  SSM_BOOL_SWITCH(vec, kVec, [&] {
    auto kernel = gated_norm_fwd_kernel<kVec ? 8 : 1>;
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    kernel<<<unsigned(blocks), norm::threads_for(p.group, kVec), smem, stream>>>(p);
  });
  check_launch(op);
}

}  // namespace ssm::cuda
