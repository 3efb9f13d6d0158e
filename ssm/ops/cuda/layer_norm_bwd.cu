// LayerNorm / RMSNorm backward on the GPU from s (the normalized input). A block takes every
// gridDim.x-th row: s and dout of the row go to shared memory, the statistics are recomputed,
// ds = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dout * w (+ dresidual_out) is
// written to dx and dresidual; dweight / dbias accumulate per column in shared memory over the
// block's rows and are added once per block into the (zeroed) partial row.
#include "cuda/norm_common.cuh"

namespace ssm::cuda {
namespace {

using namespace norm;

template <int P>
__global__ void __launch_bounds__(kThreads) layer_norm_bwd_kernel(LayerNormBwdParams p) {
  extern __shared__ float smem[];
  __shared__ float scratch[kThreads / 32];
  const int64_t N = p.cols;
  float* s = smem;
  float* dy = s + N;
  float* dw = dy + N;
  float* db = dw + N;
  const float* w = ptr<float>(p.weight);
  const bool bias = has(p.bias);
  for (int64_t c = threadIdx.x; c < N; c += kThreads) dw[c] = 0.f, db[c] = 0.f;
  for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
    float sum = 0.f;
    for (int64_t c = int64_t(threadIdx.x) * P; c < N; c += int64_t(kThreads) * P) {
      load<P>(s + c, p.s, p.dtype, row, c);
      load<P>(dy + c, p.dout, p.dout_dtype, row, c);
#pragma unroll
      for (int e = 0; e < P; ++e) sum += s[c + e];
    }
    const float mean = p.is_rms ? 0.f : block_sum(sum, scratch) / float(N);
    float sq = 0.f;
    for (int64_t c = int64_t(threadIdx.x) * P; c < N; c += int64_t(kThreads) * P)
#pragma unroll
      for (int e = 0; e < P; ++e) sq += (s[c + e] - mean) * (s[c + e] - mean);
    const float rstd = rsqrtf(block_sum(sq, scratch) / float(N) + p.eps);
    float sg = 0.f, sgx = 0.f;
    for (int64_t c = int64_t(threadIdx.x) * P; c < N; c += int64_t(kThreads) * P)
#pragma unroll
      for (int e = 0; e < P; ++e) {
        const float xh = (s[c + e] - mean) * rstd, g = dy[c + e] * w[c + e];
        sg += g, sgx += g * xh;
        dw[c + e] += dy[c + e] * xh;
        if (bias) db[c + e] += dy[c + e];
      }
    const float mg = p.is_rms ? 0.f : block_sum(sg, scratch) / float(N);
    const float mgx = block_sum(sgx, scratch) / float(N);
    for (int64_t c = int64_t(threadIdx.x) * P; c < N; c += int64_t(kThreads) * P) {
      float ds[P], dr[P];
      if (has(p.dresidual_out)) load<P>(dr, p.dresidual_out, p.dres_dtype, row, c);
#pragma unroll
      for (int e = 0; e < P; ++e) {
        const float xh = (s[c + e] - mean) * rstd;
        ds[e] = rstd * (dy[c + e] * w[c + e] - mg - xh * mgx) + (has(p.dresidual_out) ? dr[e] : 0.f);
      }
      store<P>(p.dx, p.dx_dtype, row, c, ds);
      if (has(p.dresidual)) store<P>(p.dresidual, p.dresidual_dtype, row, c, ds);
    }
    __syncthreads();
  }
  for (int64_t c = threadIdx.x; c < N; c += kThreads) {
    atomicAdd(ptr<float>(p.dweight_parts) + c * p.dweight_parts.stride[1], dw[c]);
    if (bias) atomicAdd(ptr<float>(p.dbias_parts) + c * p.dbias_parts.stride[1], db[c]);
  }
}

}  // namespace

void layer_norm_bwd(const LayerNormBwdParams& p, cudaStream_t stream) {
  const char* op = "layer_norm_bwd";
  const size_t smem = 4 * size_t(p.cols) * sizeof(float);
  SSM_CHECK(smem <= 200 * 1024, op, "the CUDA kernel takes rows of at most 12800 features, got ", p.cols);
  norm::zero_rows<<<ceil_div(p.cols, 256), 256, 0, stream>>>(p.dweight_parts, p.dbias_parts, 1, p.cols);
  if (p.rows > 0) {
    int sms = 0, dev = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    const int64_t blocks = p.rows < 16 * int64_t(sms) ? p.rows : 16 * int64_t(sms);  // rows in flight
    const bool vec = p.cols % 8 == 0 && norm::packable(p.s, p.dtype) && norm::packable(p.dout, p.dout_dtype) &&
                     norm::packable(p.dresidual_out, p.dres_dtype) && norm::packable(p.dx, p.dx_dtype) &&
                     norm::packable(p.dresidual, p.dresidual_dtype);
    SSM_BOOL_SWITCH(vec, kVec, [&] {
      auto kernel = layer_norm_bwd_kernel<kVec ? 8 : 1>;
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
      kernel<<<unsigned(blocks), norm::kThreads, smem, stream>>>(p);
    });
  }
  check_launch(op);
}

}  // namespace ssm::cuda
