// The SSD backward's last sums in one launch (replacing seven torch reductions and casts): per head,
// dA, dD and ddt_bias from the backward kernels' float32 partials; per token, dB / dC as the sum of a
// group's head-set partials, written in the input dtype. Fixed summation order: deterministic.
#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace ssm::cuda {

namespace {

constexpr int kReduceThreads = 256;

// The block's sum of v (every thread gets it), in a fixed order. Block-wide (syncs).
__device__ float reduce_block_sum(float v, float* red) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  float t = 0.f;
  for (int i = 0; i < kReduceThreads / 32; ++i) t += red[i];
  __syncthreads();
  return t;
}

// Head h: dA[h] = Σ_{b, part} dA_part[b H + h, part]; dD[h, :] = Σ_r dD_part[r, h, :];
// ddt_bias[h] = Σ_{b, l} ddt[b, l, h].
__device__ void reduce_head(const SsdBwdReduceParams& p, int h, float* red) {
  const TensorArg& ap = p.dA_part;
  const int64_t na = p.batch * p.dA_parts;
  float a = 0.f;
  for (int64_t e = threadIdx.x; e < na; e += kReduceThreads)
    a += ptr<float>(ap)[(e / p.dA_parts * p.nheads + h) * ap.stride[0] + e % p.dA_parts * ap.stride[1]];
  a = reduce_block_sum(a, red);
  if (threadIdx.x == 0) ptr<float>(p.dA)[h * p.dA.stride[0]] = a;
  if (has(p.dD)) {
    const TensorArg& dp = p.dD_part;
    for (int pp = threadIdx.x; pp < p.headdim; pp += kReduceThreads) {
      float d = 0.f;
      for (int64_t r = 0; r < p.dD_rows; ++r) d += ptr<float>(dp)[r * dp.stride[0] + h * dp.stride[1] + pp * dp.stride[2]];
      ptr<float>(p.dD)[h * p.dD.stride[0] + pp * p.dD.stride[1]] = d;
    }
  }
  if (has(p.ddt_bias)) {
    const TensorArg& g = p.ddt;
    const int64_t nt = p.batch * p.seqlen;
    float s = 0.f;
    for (int64_t e = threadIdx.x; e < nt; e += kReduceThreads)
      s += ptr<float>(g)[e / p.seqlen * g.stride[0] + e % p.seqlen * g.stride[1] + h * g.stride[2]];
    s = reduce_block_sum(s, red);
    if (threadIdx.x == 0) ptr<float>(p.ddt_bias)[h * p.ddt_bias.stride[0]] = s;
  }
}

// Token row (b, l): out[b, l, g, n] = Σ over group g's head sets of part[b, l, set, n], as T.
template <typename T>
__device__ void reduce_sets(const TensorArg& part, const TensorArg& out, const SsdBwdReduceParams& p, int64_t row) {
  const int64_t b = row / p.seqlen, l = row % p.seqlen, per = p.sets / p.ngroups;
  const float* src = ptr<float>(part) + b * part.stride[0] + l * part.stride[1];
  T* dst = ptr<T>(out) + b * out.stride[0] + l * out.stride[1];
  for (int64_t e = threadIdx.x; e < p.ngroups * p.dstate; e += kReduceThreads) {
    const int64_t g = e / p.dstate, n = e % p.dstate;
    float s = 0.f;
    for (int64_t k = g * per; k < (g + 1) * per; ++k) s += src[k * part.stride[2] + n * part.stride[3]];
    dst[g * out.stride[2] + n * out.stride[3]] = from_float<T>(s);
  }
}

// Blocks 0..H-1: the per-head sums; then one block per token row (b, l) for dB and dC.
template <typename T>
__global__ void __launch_bounds__(kReduceThreads) bwd_reduce_kernel(SsdBwdReduceParams p) {
  __shared__ float red[kReduceThreads / 32];
  if (blockIdx.x < p.nheads) {
    reduce_head(p, int(blockIdx.x), red);
    return;
  }
  const int64_t row = int64_t(blockIdx.x) - p.nheads;
  reduce_sets<T>(p.dB_sets, p.dB, p, row);
  reduce_sets<T>(p.dC_sets, p.dC, p, row);
}

}  // namespace

void ssd_chunk_scan_bwd_reduce(const SsdBwdReduceParams& p, cudaStream_t stream) {
  const char* op = "ssd_chunk_scan_bwd_reduce";
  SSM_CHECK(p.ngroups >= 1 && p.sets >= p.ngroups && p.sets % p.ngroups == 0, op,
            "sets must be a positive multiple of ngroups, got sets=", p.sets, " ngroups=", p.ngroups);
  SSM_CHECK(has(p.dD) == has(p.dD_part), op, "dD and dD_part come together");
  const int64_t blocks = p.nheads + p.batch * p.seqlen;
  SSM_CHECK(blocks < (int64_t(1) << 31), op, "too many token rows: ", p.batch * p.seqlen);
  if (p.nheads == 0) return;
  SSM_DTYPE_SWITCH(p.dtype, T, op, [&] {
    bwd_reduce_kernel<T><<<unsigned(blocks), kReduceThreads, 0, stream>>>(p);
  });
  check_launch(op);
}

}  // namespace ssm::cuda
