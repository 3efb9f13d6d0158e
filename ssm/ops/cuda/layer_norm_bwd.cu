// LayerNorm / RMSNorm backward on the GPU from s (the normalized input),
//   ds = rstd * (g - mean(g) - xhat * mean(g * xhat)) (+ dresidual_out), g = dout * w,
// written to dx and dresidual; dweight / dbias as per-block partial column sums.
// Row kernel (rows of 8 * 1024 features at most, 16-byte packs): a block takes every gridDim.x-th
// row with 8 features per thread held in registers, two block reductions per row (one for RMSNorm),
// and its column sums in registers, written once to its own partial row (deterministic).
// Shared-memory kernel (any layout, kept as the fallback): the row in shared memory, column sums
// added with atomics into partial row 0.
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

constexpr int kRowThreads = 1024;

__global__ void __launch_bounds__(kRowThreads) layer_norm_bwd_row_kernel(LayerNormBwdParams p) {
  __shared__ float4 buf[2][32];
  const int64_t N = p.cols, c = int64_t(threadIdx.x) * 8;
  const bool active = c < N, bias = has(p.bias), dres = has(p.dresidual_out);
  const float inv_n = 1.f / float(N);
  float w[8], dw[8], db[8];
#pragma unroll
  for (int e = 0; e < 8; ++e) w[e] = 0.f, dw[e] = 0.f, db[e] = 0.f;
  if (active) load_floats<float, 8>(w, ptr<float>(p.weight) + c);
  int k = 0;  // reductions so far (buffer parity)
  for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
    const Raw8 rs = load_raw(p.s, p.dtype, row, c, active), rdy = load_raw(p.dout, p.dout_dtype, row, c, active);
    const Raw8 rdr = load_raw(p.dresidual_out, p.dres_dtype, row, c, active && dres);
    float s[8], dy[8], dr[8];
    to_floats(s, rs, p.dtype), to_floats(dy, rdy, p.dout_dtype), to_floats(dr, rdr, p.dres_dtype);
    float mean = 0.f;
    if (!p.is_rms) {
      float4 t = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
      for (int e = 0; e < 8; ++e) t.x += s[e];
      mean = block_sum4(t, buf[k++ & 1]).x * inv_n;
    }
    // (sum (s - mean)^2, sum g, sum g (s - mean)); inactive lanes hold s = dy = 0: they add nothing
    float4 t = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const float d = active ? s[e] - mean : 0.f, g = dy[e] * w[e];
      t.x += d * d, t.y += g, t.z += g * d;
    }
    t = block_sum4(t, buf[k++ & 1]);
    const float rstd = rsqrtf(t.x * inv_n + p.eps);
    const float mg = p.is_rms ? 0.f : t.y * inv_n, mgx = rstd * t.z * inv_n;
    if (!active) continue;
    float ds[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const float xh = (s[e] - mean) * rstd;
      ds[e] = rstd * (dy[e] * w[e] - mg - xh * mgx) + dr[e];
      dw[e] += dy[e] * xh, db[e] += dy[e];
    }
    store<8>(p.dx, p.dx_dtype, row, c, ds);
    if (has(p.dresidual)) store<8>(p.dresidual, p.dresidual_dtype, row, c, ds);
  }
  if (!active) return;
  store_partial(p.dweight_parts, p.parts, blockIdx.x, c, dw);
  if (bias) store_partial(p.dbias_parts, p.parts, blockIdx.x, c, db);
}

// Switch: false sends every call to the shared-memory kernel.
constexpr bool kUseRowKernel = true;

bool row_kernel_fits(const LayerNormBwdParams& p) {
  const bool vec = p.cols % 8 == 0 && norm::packable(p.s, p.dtype) && norm::packable(p.dout, p.dout_dtype) &&
                   norm::packable(p.dresidual_out, p.dres_dtype) && norm::packable(p.dx, p.dx_dtype) &&
                   norm::packable(p.dresidual, p.dresidual_dtype) && aligned(p.weight.data, 16) &&
                   norm::packable(p.dweight_parts, DType::f32) && norm::packable(p.dbias_parts, DType::f32);
  return kUseRowKernel && vec && p.cols <= 8 * kRowThreads && p.parts >= 1;
}

}  // namespace

void layer_norm_bwd(const LayerNormBwdParams& p, cudaStream_t stream) {
  const char* op = "layer_norm_bwd";
  const size_t smem = 4 * size_t(p.cols) * sizeof(float);
  if (row_kernel_fits(p)) {
    const int threads = int((p.cols / 8 + 31) / 32 * 32);
    const int64_t blocks = norm::resident_blocks(layer_norm_bwd_row_kernel, threads, p.parts);
    layer_norm_bwd_row_kernel<<<unsigned(blocks), threads, 0, stream>>>(p);
    return check_launch(op);
  }
  SSM_CHECK(smem <= 200 * 1024, op, "the CUDA kernel takes rows of at most 12800 features, got ", p.cols);
  norm::zero_rows<<<ceil_div(p.parts * p.cols, 256), 256, 0, stream>>>(p.dweight_parts, p.dbias_parts, p.parts,
                                                                          p.cols);
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
