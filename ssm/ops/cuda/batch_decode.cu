// Batch decode (batch > 4): the conv update of one token on state rows of four entries, in two forms.
// - channels-last (Mamba-2's cache, unit stride along D): a thread per (channel, batch row blockIdx.y),
//   32-bit channel offsets, the three kept entries loaded before any store.
// - with x_proj (Mamba-1, nout > 0): a cluster of kCl blocks per kRows batch rows, block `rank` owning the
//   channel chunk [rank * D / kCl, ...): it updates those channels' states (disjoint, so no race), keeps the
//   rounded conv outputs in shared memory, sums its chunk's share of x_proj for its rows, and after a
//   cluster barrier each block adds the kCl partials of its outputs in rank order (deterministic) through
//   distributed shared memory. Both launched with PDL (pdl.cuh).
#include <cooperative_groups.h>

#include "cuda/kernels.h"
#include "cuda/pdl.cuh"
#include "cuda/vec.cuh"

namespace ssm::cuda {
namespace {

namespace cg = cooperative_groups;

constexpr int kThreads = 128;
constexpr int kCl = 8, kRows = 4, kXThreads = 512, kMaxChunk = 1024, kMaxOut = 256;

template <typename T, int KW>
__device__ __forceinline__ float conv_dot(const BatchConvParams& p, int64_t d, const float* s, float xv) {
  const float* wp = ptr<float>(p.weight) + d * p.weight.stride[0];
  float acc = has(p.bias) ? ptr<float>(p.bias)[d * p.bias.stride[0]] : 0.f;
#pragma unroll
  for (int k = 0; k < KW - 1; ++k) acc += wp[k * p.weight.stride[1]] * s[4 - (KW - 1) + k];
  acc += wp[(KW - 1) * p.weight.stride[1]] * xv;
  return p.silu ? silu(acc) : acc;
}

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
  ptr<T>(p.out)[b * p.out.stride[0] + d * p.out.stride[1]] = from_float<T>(conv_dot<T, KW>(p, d, s, to_float(xv)));
  st[0] = s1, st[ss] = s2, st[2 * ss] = s3, st[3 * ss] = xv;
}

template <typename T>
struct alignas(4 * sizeof(T)) Row4 {
  T e[4];
};

// The conv updates of this block's kRows x chunk (row, channel) items into xs (the rounded outputs; zeros past the
// batch), on state rows of four contiguous entries: every item's loads issued before any store (the stores
// would otherwise keep the next item's loads behind them: one memory round trip per item).
template <typename T, int KW>
__device__ __forceinline__ void conv_rows4(const BatchConvParams& p, int64_t row0, int chunk, int c0,
                                           float (*xs)[kMaxChunk]) {
  constexpr int kItems = kRows * kMaxChunk / kXThreads;
  Row4<T> s[kItems];
  T xv[kItems];
  float w[kItems][KW], bias[kItems];
  int64_t b[kItems];
  int r[kItems], c[kItems];
#pragma unroll
  for (int k = 0; k < kItems; ++k) {
    const int i = threadIdx.x + k * kXThreads;
    r[k] = i / chunk, c[k] = i - r[k] * chunk, b[k] = row0 + r[k];
    if (r[k] >= kRows || b[k] >= p.batch) continue;
    const int64_t d = c0 + c[k];
    s[k] = *reinterpret_cast<const Row4<T>*>(ptr<T>(p.conv_state) + b[k] * p.conv_state.stride[0] + d * p.conv_state.stride[1]);
    xv[k] = ptr<T>(p.x)[b[k] * p.x.stride[0] + d * p.x.stride[1]];
#pragma unroll
    for (int q = 0; q < KW; ++q) w[k][q] = ptr<float>(p.weight)[d * p.weight.stride[0] + q * p.weight.stride[1]];
    bias[k] = has(p.bias) ? ptr<float>(p.bias)[d * p.bias.stride[0]] : 0.f;
  }
#pragma unroll
  for (int k = 0; k < kItems; ++k) {
    if (r[k] >= kRows) continue;
    if (b[k] >= p.batch) {
      xs[r[k]][c[k]] = 0.f;
      continue;
    }
    const int64_t d = c0 + c[k];
    float acc = bias[k];
#pragma unroll
    for (int q = 0; q < KW - 1; ++q) acc += w[k][q] * to_float(s[k].e[4 - (KW - 1) + q]);
    acc += w[k][KW - 1] * to_float(xv[k]);
    const T o = from_float<T>(p.silu ? silu(acc) : acc);
    ptr<T>(p.out)[b[k] * p.out.stride[0] + d * p.out.stride[1]] = o;
    *reinterpret_cast<Row4<T>*>(ptr<T>(p.conv_state) + b[k] * p.conv_state.stride[0] + d * p.conv_state.stride[1]) =
        Row4<T>{{s[k].e[1], s[k].e[2], s[k].e[3], xv[k]}};
    xs[r[k]][c[k]] = to_float(o);
  }
}

// dst[0..8) = float(src[0..8)), src 16-byte aligned.
template <typename T>
__device__ __forceinline__ void load8(float* dst, const T* src) {
  load_floats<T, 8>(dst, src);
}

template <typename T, int KW>
__global__ void __launch_bounds__(kXThreads) batch_conv_xproj_kernel(BatchConvParams p) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900  // clusters: sm_90 and later (batch_conv_fits checks the device)
  __shared__ __align__(16) float xs[kRows][kMaxChunk];
  __shared__ float part[kRows][kMaxOut];
  cg::cluster_group cluster = cg::this_cluster();
  const int rank = int(cluster.block_rank());
  const int chunk = int(p.dim / kCl), c0 = rank * chunk, nout = int(p.nout);
  const int64_t row0 = int64_t(blockIdx.y) * kRows;
  pdl_wait();
  pdl_release();
  conv_rows4<T, KW>(p, row0, chunk, c0, xs);  // this block's channels
  __syncthreads();
  // partial x_proj: lane = jj + 4 kg; a warp takes 4 outputs at a time, kg strides the chunk's 8-vectors
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, jj = lane % 4, kg = lane / 4, nvec = chunk / 8;
  for (int g = warp; g * 4 < nout; g += kXThreads / 32) {
    const int j = g * 4 + jj;
    const bool valid = j < nout;
    const T* wrow = ptr<T>(p.xproj) + int64_t(valid ? j : 0) * p.xproj.stride[0] + c0;
    float acc[kRows] = {};
#pragma unroll 8
    for (int v = kg; v < nvec; v += 8) {
      float w[8];
      load8<T>(w, wrow + v * 8);
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const float4 a = *reinterpret_cast<const float4*>(&xs[r][v * 8]);
        const float4 c = *reinterpret_cast<const float4*>(&xs[r][v * 8 + 4]);
        acc[r] += w[0] * a.x + w[1] * a.y + w[2] * a.z + w[3] * a.w + w[4] * c.x + w[5] * c.y + w[6] * c.z + w[7] * c.w;
      }
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int m = 4; m < 32; m *= 2) acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], m);
    if (kg == 0 && valid)
#pragma unroll
      for (int r = 0; r < kRows; ++r) part[r][j] = acc[r];
  }
  cluster.sync();
  // this block's outputs: [rank * per, (rank + 1) * per), the partials added in rank order
  const int per = (nout + kCl - 1) / kCl;
  for (int i = threadIdx.x; i < kRows * per; i += kXThreads) {
    const int r = i / per, j = rank * per + i % per;
    const int64_t b = row0 + r;
    if (j >= nout || b >= p.batch) continue;
    float sum = 0.f;
    for (int q = 0; q < kCl; ++q) sum += *cluster.map_shared_rank(&part[r][j], q);
    ptr<T>(p.xdbl)[b * p.xdbl.stride[0] + j * p.xdbl.stride[1]] = from_float<T>(sum);
  }
  cluster.sync();  // no block leaves while another reads its partials
#endif
}

template <typename T>
void launch_xproj(const BatchConvParams& p, cudaStream_t stream) {
  auto kernel = p.width == 2 ? batch_conv_xproj_kernel<T, 2>
              : p.width == 3 ? batch_conv_xproj_kernel<T, 3> : batch_conv_xproj_kernel<T, 4>;
  cudaLaunchAttribute attr[2];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = kCl, attr[0].val.clusterDim.y = 1, attr[0].val.clusterDim.z = 1;
  attr[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[1].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(kCl, ceil_div(p.batch, kRows)), cfg.blockDim = dim3(kXThreads), cfg.dynamicSmemBytes = 0;
  cfg.stream = stream, cfg.attrs = attr, cfg.numAttrs = pdl_enabled() ? 2 : 1;
  cudaLaunchKernelEx(&cfg, kernel, p);
}

}  // namespace

bool batch_conv_fits(const BatchConvParams& p, int elem) {
  const TensorArg& s = p.conv_state;
  if (p.width < 2 || p.width > 4 || p.batch < 1 || p.dim < 1 || p.dim >= (int64_t(1) << 31)) return false;
  if (p.nout == 0) return s.stride[1] == 1 && p.batch <= 65535;
  int dev = 0, major = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess || major < 9)
    return false;
  return s.stride[2] == 1 && s.stride[0] % 4 == 0 && s.stride[1] % 4 == 0 && aligned(s.data, 4 * elem) &&
         p.dim % (kCl * 8) == 0 && p.dim / kCl <= kMaxChunk && p.nout <= kMaxOut && p.xproj.stride[1] == 1 &&
         p.xproj.stride[0] % 8 == 0 && aligned(p.xproj.data, 16) && p.batch <= int64_t(65535) * kRows;
}

void batch_conv(const BatchConvParams& p, cudaStream_t stream) {
  const char* op = "batch_conv";
  SSM_CHECK(p.nout >= 0 && (p.nout == 0 || (has(p.xproj) && has(p.xdbl))), op, "x_proj needs xproj and xdbl");
  SSM_DTYPE_SWITCH(p.dtype, T, op, [&] {
    SSM_CHECK(batch_conv_fits(p, sizeof(T)), op, "arguments outside the kernel's layouts");
    if (p.nout > 0) return launch_xproj<T>(p, stream);
    const dim3 grid(ceil_div(p.dim, kThreads), unsigned(p.batch));
    auto kernel = p.width == 2 ? batch_conv_cl_kernel<T, 2>
                : p.width == 3 ? batch_conv_cl_kernel<T, 3> : batch_conv_cl_kernel<T, 4>;
    pdl_launch(kernel, grid, dim3(kThreads), 0, stream, p);
  });
  check_launch(op);
}

}  // namespace ssm::cuda
