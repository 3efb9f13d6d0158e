// Residual add + LayerNorm / RMSNorm forward on the GPU: one block per row. The row sum s
// (x + residual) is kept in shared memory as float32 (and stored as residual_out), the mean
// and variance are two block reductions over it, and the output is written in one more pass:
// each input is read once and each output written once.
#include "cuda/norm_common.cuh"

namespace ssm::cuda {
namespace {

using namespace norm;

template <int P>
__global__ void __launch_bounds__(kThreads) layer_norm_fwd_kernel(LayerNormParams p) {
  extern __shared__ float s[];
  __shared__ float scratch[kThreads / 32];
  const int64_t row = blockIdx.x, N = p.cols;
  float sum = 0.f;
  for (int64_t c = int64_t(threadIdx.x) * P; c < N; c += int64_t(kThreads) * P) {
    float v[P], r[P];
    load<P>(v, p.x, p.dtype, row, c);
    if (has(p.residual)) {
      load<P>(r, p.residual, p.residual_dtype, row, c);
#pragma unroll
      for (int e = 0; e < P; ++e) v[e] += r[e];
    }
    if (has(p.residual_out)) store<P>(p.residual_out, p.residual_out_dtype, row, c, v);
#pragma unroll
    for (int e = 0; e < P; ++e) s[c + e] = v[e], sum += v[e];
  }
  const float mean = p.is_rms ? 0.f : block_sum(sum, scratch) / float(N);
  float sq = 0.f;
  for (int64_t c = int64_t(threadIdx.x) * P; c < N; c += int64_t(kThreads) * P)
#pragma unroll
    for (int e = 0; e < P; ++e) sq += (s[c + e] - mean) * (s[c + e] - mean);
  const float rstd = rsqrtf(block_sum(sq, scratch) / float(N) + p.eps);
  const float* w = ptr<float>(p.weight);
  const float* b = has(p.bias) ? ptr<float>(p.bias) : nullptr;
  for (int64_t c = int64_t(threadIdx.x) * P; c < N; c += int64_t(kThreads) * P) {
    float y[P];
#pragma unroll
    for (int e = 0; e < P; ++e) y[e] = (s[c + e] - mean) * rstd * w[c + e] + (b ? b[c + e] : 0.f);
    store<P>(p.out, p.dtype, row, c, y);
  }
}

}  // namespace

void layer_norm_fwd(const LayerNormParams& p, cudaStream_t stream) {
  const char* op = "layer_norm_fwd";
  const size_t smem = size_t(p.cols) * sizeof(float);
  SSM_CHECK(smem <= 200 * 1024, op, "the CUDA kernel takes rows of at most 51200 features, got ", p.cols);
  SSM_CHECK(p.rows < (int64_t(1) << 31), op, "too many rows: ", p.rows);
  if (p.rows == 0) return;
  const bool vec = p.cols % 8 == 0 && norm::packable(p.x, p.dtype) && norm::packable(p.residual, p.residual_dtype) &&
                   norm::packable(p.out, p.dtype) && norm::packable(p.residual_out, p.residual_out_dtype);
  SSM_BOOL_SWITCH(vec, kVec, [&] {
    auto kernel = layer_norm_fwd_kernel<kVec ? 8 : 1>;
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    kernel<<<unsigned(p.rows), norm::kThreads, smem, stream>>>(p);
  });
  check_launch(op);
}

}  // namespace ssm::cuda
