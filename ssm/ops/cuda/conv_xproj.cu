// Mamba-1's decode conv update + x_proj for a batch past 4 in one kernel (was the conv update kernel, then the narrow
// projection kernel): a block owns 4 batch rows and does everything for them, so no block waits for another. Phase 1:
// the conv update of the 4 rows' C channels, 8 channels a thread (16-byte loads of the 8 channels' 4 state entries,
// the 3 kept ones and the new input before any store), x_conv to global memory (the state step reads it) and to
// shared memory. Phase 2: x_proj's R outputs for the 4 rows from shared memory, a warp an output with its lanes along
// C (16-byte loads of the weight row, read from L2 by each of the B / 4 blocks), shuffle sums: no split-K,
// deterministic. Launched with PDL (pdl.cuh).
#include "cuda/kernels.h"
#include "cuda/pdl.cuh"
#include "cuda/vec.cuh"

namespace ssm::cuda {
namespace {

constexpr int kRows = 4, kWarps = 16, kThreads = kWarps * 32;

template <typename T>
__device__ __forceinline__ void conv8(const ConvXprojParams& p, int64_t b, int ch0, T* sx) {
  Pack<T> xv, y, st[4];
  xv.load(ptr<T>(p.x) + b * p.x.stride[0] + ch0);
  T* sp = ptr<T>(p.conv_state) + b * p.conv_state.stride[0] + int64_t(ch0) * 4;
#pragma unroll
  for (int k = 0; k < 4; ++k) st[k].load(sp + k * 8);  // channels 2k, 2k + 1: 4 entries each
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const float4 w = *reinterpret_cast<const float4*>(ptr<float>(p.conv_weight) + int64_t(ch0 + i) * 4);
    const T* s = st[i / 2].e + (i % 2) * 4;
    float acc = has(p.conv_bias) ? ptr<float>(p.conv_bias)[ch0 + i] : 0.f;
    acc += w.x * to_float(s[1]) + w.y * to_float(s[2]) + w.z * to_float(s[3]) + w.w * to_float(xv.e[i]);
    y.e[i] = from_float<T>(p.silu ? silu(acc) : acc);
  }
  y.store(ptr<T>(p.x_conv) + b * p.x_conv.stride[0] + ch0);
  y.store(sx + ch0);
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    Pack<T> n;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      n.e[h * 4] = st[k].e[h * 4 + 1], n.e[h * 4 + 1] = st[k].e[h * 4 + 2], n.e[h * 4 + 2] = st[k].e[h * 4 + 3];
      n.e[h * 4 + 3] = xv.e[2 * k + h];
    }
    n.store(sp + k * 8);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) conv_xproj_kernel(ConvXprojParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  T* sx = reinterpret_cast<T*>(smem);  // [kRows][C] the rows' conv outputs
  const int C = int(p.dim), groups = C / 8, lane = threadIdx.x % 32;
  const int64_t row0 = int64_t(blockIdx.x) * kRows;
  pdl_wait();  // x and the conv state come from the previous kernels
  pdl_release();
  for (int i = threadIdx.x; i < kRows * groups; i += kThreads) {
    const int r = i / groups, ch0 = (i - r * groups) * 8;
    if (row0 + r < p.batch) {
      conv8<T>(p, row0 + r, ch0, sx + r * C);
    } else {
      Pack<T> z;
#pragma unroll
      for (int e = 0; e < 8; ++e) z.e[e] = from_float<T>(0.f);
      z.store(sx + r * C + ch0);
    }
  }
  __syncthreads();
  for (int j = threadIdx.x / 32; j < p.nout; j += kWarps) {
    const T* w = ptr<T>(p.weight) + int64_t(j) * p.weight.stride[0];
    float acc[kRows] = {};
#pragma unroll 4
    for (int k = lane * 8; k < C; k += 32 * 8) {
      float wv[8], xv[8];
      load_floats<T, 8>(wv, w + k);
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        load_floats<T, 8>(xv, sx + r * C + k);
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[r] += wv[e] * xv[e];
      }
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int m = 16; m > 0; m /= 2) acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], m);
    if (lane < kRows && row0 + lane < p.batch) {
      float v = acc[0];
#pragma unroll
      for (int r = 1; r < kRows; ++r) v = lane == r ? acc[r] : v;
      ptr<T>(p.out)[(row0 + lane) * p.out.stride[0] + int64_t(j) * p.out.stride[1]] = from_float<T>(v);
    }
  }
}

bool rows16(const TensorArg& t, int elem) {
  return t.stride[1] == 1 && (t.stride[0] * elem) % 16 == 0 && aligned(t.data, 16);
}

}  // namespace

bool conv_xproj_fits(const ConvXprojParams& p, int elem) {
  const TensorArg &st = p.conv_state, &cw = p.conv_weight, &cb = p.conv_bias;
  return p.batch >= 1 && p.batch <= int64_t(65535) * kRows && p.dim >= 8 && p.dim % 8 == 0 &&
         p.dim * kRows * elem <= 48 * 1024 && p.nout >= 1 && p.nout < (int64_t(1) << 30) && rows16(p.x, elem) &&
         rows16(p.x_conv, elem) && rows16(p.weight, elem) && st.stride[2] == 1 && st.stride[1] == 4 &&
         (st.stride[0] * elem) % 16 == 0 && aligned(st.data, 16) && cw.stride[0] == 4 && cw.stride[1] == 1 &&
         aligned(cw.data, 16) && (!has(cb) || cb.stride[0] == 1);
}

void conv_xproj(const ConvXprojParams& p, cudaStream_t stream) {
  const char* op = "conv_xproj";
  SSM_CHECK(p.dtype == DType::bf16 || p.dtype == DType::f16, op, "16-bit dtypes only");
  SSM_CHECK(conv_xproj_fits(p, 2), op, "arguments outside the kernel's layout");
  const size_t smem = size_t(kRows) * size_t(p.dim) * 2;
  auto kernel = p.dtype == DType::bf16 ? conv_xproj_kernel<__nv_bfloat16> : conv_xproj_kernel<__half>;
  pdl_launch(kernel, dim3(ceil_div(p.batch, kRows)), dim3(kThreads), smem, stream, p);
  check_launch(op);
}

}  // namespace ssm::cuda
