// Batch decode (batch > 8 in Mamba-2's decode step): the conv update of one token on Mamba-2's channels-last conv
// cache (B, D, 4) (unit stride along D): a thread per (channel, batch row blockIdx.y), 32-bit channel offsets, the
// three kept entries and x loaded before any store (the general conv update kernel: 64-bit index division, each
// state entry's load behind the previous entry's store; H200, mamba2-130m b64: 2.3 us a call instead of 4.55).
// Also a narrow projection of a decode batch (Mamba-1's x_proj: 64 x 1536 -> 80): a block per (4 rows, 8 outputs), a
// warp an output with its lanes along K (16-byte loads of the weight row and of the 4 input rows, all of a step's
// loads in flight), the 4 sums reduced by shuffles: no split-K, deterministic. Launched with PDL (pdl.cuh).
#include "cuda/kernels.h"
#include "cuda/pdl.cuh"
#include "cuda/vec.cuh"

namespace ssm::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kLinRows = 4, kLinOuts = 8;

template <typename T, int KW>
__global__ void __launch_bounds__(kThreads) batch_conv_cl_kernel(BatchConvParams p) {
  pdl_wait();
  pdl_release();
  const uint32_t d = blockIdx.x * kThreads + threadIdx.x;
  if (d >= uint32_t(p.dim)) return;
  const int64_t b = blockIdx.y;
  T* st = ptr<T>(p.conv_state) + b * p.conv_state.stride[0] + d;
  const int64_t ss = p.conv_state.stride[2];
  const T s1 = st[ss], s2 = st[2 * ss], s3 = st[3 * ss];
  const T xv = ptr<T>(p.x)[b * p.x.stride[0] + d * p.x.stride[1]];
  const float s[4] = {0.f, to_float(s1), to_float(s2), to_float(s3)};
  const float* wp = ptr<float>(p.weight) + d * p.weight.stride[0];
  float acc = has(p.bias) ? ptr<float>(p.bias)[d * p.bias.stride[0]] : 0.f;
#pragma unroll
  for (int k = 0; k < KW - 1; ++k) acc += wp[k * p.weight.stride[1]] * s[4 - (KW - 1) + k];
  acc += wp[(KW - 1) * p.weight.stride[1]] * to_float(xv);
  ptr<T>(p.out)[b * p.out.stride[0] + d * p.out.stride[1]] = from_float<T>(p.silu ? silu(acc) : acc);
  st[0] = s1, st[ss] = s2, st[2 * ss] = s3, st[3 * ss] = xv;
}

template <typename T>
__global__ void __launch_bounds__(kLinOuts * 32) batch_linear_narrow_kernel(BatchLinearParams p) {
  pdl_wait();
  pdl_release();
  const int lane = threadIdx.x % 32, j = blockIdx.x * kLinOuts + threadIdx.x / 32;
  const int64_t row0 = int64_t(blockIdx.y) * kLinRows;
  if (j >= p.nout) return;
  const T* w = ptr<T>(p.weight) + int64_t(j) * p.weight.stride[0];
  const T* x[kLinRows];
#pragma unroll
  for (int r = 0; r < kLinRows; ++r)  // rows past the batch read the last row (their sums are dropped)
    x[r] = ptr<T>(p.x) + (row0 + r < p.batch ? row0 + r : p.batch - 1) * p.x.stride[0];
  float acc[kLinRows] = {};
#pragma unroll 4
  for (int k = lane * 8; k < p.K; k += 32 * 8) {
    float wv[8], xv[kLinRows][8];
    load_floats<T, 8>(wv, w + k);
#pragma unroll
    for (int r = 0; r < kLinRows; ++r) load_floats<T, 8>(xv[r], x[r] + k);
#pragma unroll
    for (int r = 0; r < kLinRows; ++r)
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[r] += wv[e] * xv[r][e];
  }
#pragma unroll
  for (int r = 0; r < kLinRows; ++r)
#pragma unroll
    for (int m = 16; m > 0; m /= 2) acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], m);
  if (lane == 0)
#pragma unroll
    for (int r = 0; r < kLinRows; ++r)
      if (row0 + r < p.batch) ptr<T>(p.out)[(row0 + r) * p.out.stride[0] + j * p.out.stride[1]] = from_float<T>(acc[r]);
}

}  // namespace

bool batch_linear_narrow_fits(const BatchLinearParams& p, int elem) {
  const int per = 16 / elem;
  return p.batch >= 1 && p.batch <= int64_t(65535) * kLinRows && p.nout >= 1 && p.K >= 1 && p.K % 8 == 0 &&
         p.K < (int64_t(1) << 30) && p.nout < (int64_t(1) << 30) && p.x.stride[1] == 1 && p.x.stride[0] % per == 0 &&
         aligned(p.x.data, 16) && p.weight.stride[1] == 1 && p.weight.stride[0] % per == 0 &&
         aligned(p.weight.data, 16);
}

void batch_linear_narrow(const BatchLinearParams& p, cudaStream_t stream) {
  const char* op = "batch_linear_narrow";
  SSM_DTYPE_SWITCH(p.dtype, T, op, [&] {
    SSM_CHECK(batch_linear_narrow_fits(p, sizeof(T)), op, "arguments outside the kernel's layout");
    const dim3 grid(ceil_div(p.nout, kLinOuts), ceil_div(p.batch, kLinRows));
    pdl_launch(batch_linear_narrow_kernel<T>, grid, dim3(kLinOuts * 32), 0, stream, p);
  });
  check_launch(op);
}

bool batch_conv_fits(const BatchConvParams& p) {
  return p.width >= 2 && p.width <= 4 && p.batch >= 1 && p.batch <= 65535 && p.dim >= 1 &&
         p.dim < (int64_t(1) << 31) && p.conv_state.stride[1] == 1;
}

void batch_conv(const BatchConvParams& p, cudaStream_t stream) {
  const char* op = "batch_conv";
  SSM_CHECK(batch_conv_fits(p), op, "arguments outside the kernel's layout");
  SSM_DTYPE_SWITCH(p.dtype, T, op, [&] {
    const dim3 grid(ceil_div(p.dim, kThreads), unsigned(p.batch));
    auto kernel = p.width == 2 ? batch_conv_cl_kernel<T, 2>
                : p.width == 3 ? batch_conv_cl_kernel<T, 3> : batch_conv_cl_kernel<T, 4>;
    pdl_launch(kernel, grid, dim3(kThreads), 0, stream, p);
  });
  check_launch(op);
}

}  // namespace ssm::cuda
