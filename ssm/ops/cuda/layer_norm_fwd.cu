// Residual add + LayerNorm / RMSNorm forward on the GPU; each input is read once and each
// output written once. Row kernel (rows of 8 * 1024 features at most, 16-byte packs): a block
// takes rows r and r + gridDim.x at a time (r stepping by 2 * gridDim.x), 8 features per thread
// in registers (s = x + residual, stored as residual_out), the mean and variance of both rows by
// two block reductions (one for RMSNorm). Shared-memory kernel (any layout, the fallback): one
// block per row, s in shared memory as float32.
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

constexpr int kRowThreads = 1024;

// Two rows per pass: twice the loads in flight per thread.
__global__ void __launch_bounds__(kRowThreads) layer_norm_fwd_row_kernel(LayerNormParams p) {
  __shared__ float4 buf[2][32];
  const int64_t N = p.cols, c = int64_t(threadIdx.x) * 8;
  const bool active = c < N, bias = has(p.bias), residual = has(p.residual), store_res = has(p.residual_out);
  const float inv_n = 1.f / float(N);
  int k = 0;  // reductions so far (buffer parity)
  for (int64_t row = blockIdx.x; row < p.rows; row += 2 * int64_t(gridDim.x)) {
    const int64_t rows[2] = {row, row + gridDim.x};
    const bool live[2] = {active, active && rows[1] < p.rows};
    Raw8 rx[2], rr[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      rx[i] = load_raw(p.x, p.dtype, rows[i], c, live[i]);
      rr[i] = load_raw(p.residual, p.residual_dtype, rows[i], c, live[i] && residual);
    }
    float v[2][8];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      float r[8];
      to_floats(v[i], rx[i], p.dtype), to_floats(r, rr[i], p.residual_dtype);
#pragma unroll
      for (int e = 0; e < 8; ++e) v[i][e] += r[e];
    }
#pragma unroll
    for (int i = 0; i < 2; ++i)
      if (store_res && live[i]) store<8>(p.residual_out, p.residual_out_dtype, rows[i], c, v[i]);
    float4 t = make_float4(0.f, 0.f, 0.f, 0.f);
    if (!p.is_rms) {
#pragma unroll
      for (int e = 0; e < 8; ++e) t.x += v[0][e], t.y += v[1][e];
      t = block_sum4(t, buf[k++ & 1]);
    }
    const float mean[2] = {p.is_rms ? 0.f : t.x * inv_n, p.is_rms ? 0.f : t.y * inv_n};
    t = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const float d0 = live[0] ? v[0][e] - mean[0] : 0.f, d1 = live[1] ? v[1][e] - mean[1] : 0.f;
      t.x += d0 * d0, t.y += d1 * d1;
    }
    t = block_sum4(t, buf[k++ & 1]);
    const float rstd[2] = {rsqrtf(t.x * inv_n + p.eps), rsqrtf(t.y * inv_n + p.eps)};
    if (!active) continue;
    float w[8], b[8];
    load_floats<float, 8>(w, ptr<float>(p.weight) + c);
#pragma unroll
    for (int e = 0; e < 8; ++e) b[e] = 0.f;
    if (bias) load_floats<float, 8>(b, ptr<float>(p.bias) + c);
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      if (!live[i]) continue;
#pragma unroll
      for (int e = 0; e < 8; ++e) v[i][e] = (v[i][e] - mean[i]) * rstd[i] * w[e] + b[e];
      store<8>(p.out, p.dtype, rows[i], c, v[i]);
    }
  }
}

// Switch: false sends every call to the shared-memory kernel.
constexpr bool kUseRowKernel = true;

bool row_kernel_fits(const LayerNormParams& p) {
  const bool vec = p.cols % 8 == 0 && norm::packable(p.x, p.dtype) && norm::packable(p.residual, p.residual_dtype) &&
                   norm::packable(p.out, p.dtype) && norm::packable(p.residual_out, p.residual_out_dtype) &&
                   aligned(p.weight.data, 16) && (!has(p.bias) || aligned(p.bias.data, 16));
  return kUseRowKernel && vec && p.cols <= 8 * kRowThreads;
}

}  // namespace

void layer_norm_fwd(const LayerNormParams& p, cudaStream_t stream) {
  const char* op = "layer_norm_fwd";
  const size_t smem = size_t(p.cols) * sizeof(float);
  SSM_CHECK(smem <= 200 * 1024, op, "the CUDA kernel takes rows of at most 51200 features, got ", p.cols);
  SSM_CHECK(p.rows < (int64_t(1) << 31), op, "too many rows: ", p.rows);
  if (p.rows == 0) return;
  if (row_kernel_fits(p)) {
    const int threads = int((p.cols / 8 + 31) / 32 * 32);
    const int64_t blocks = norm::resident_blocks(layer_norm_fwd_row_kernel, threads, p.rows);
    layer_norm_fwd_row_kernel<<<unsigned(blocks), threads, 0, stream>>>(p);
    return check_launch(op);
  }
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
