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

// Σ_{i = i0, i0 + step, .. < n} f(i) with eight partial sums, so that eight loads are in flight at once (a single
// running sum waits on each load in turn: 256 rows of dD took ~55 us), combined in a fixed order.
template <typename F>
__device__ float strided_sum(int64_t i0, int64_t n, int64_t step, F f) {
  float s[8] = {};
  int64_t i = i0;
  for (; i + 7 * step < n; i += 8 * step) {
#pragma unroll
    for (int u = 0; u < 8; ++u) s[u] += f(i + u * step);
  }
  for (; i < n; i += step) s[0] += f(i);
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

// Head h: dA[h] = Σ_{b, part} dA_part[b H + h, part]; dD[h, :] = Σ_r dD_part[r, h, :] (the block's threads split
// the rows in 256 / P groups); ddt_bias[h] = Σ_{b, l} ddt[b, l, h].
__device__ void reduce_head(const SsdBwdReduceParams& p, int h, float* red) {
  const TensorArg &ap = p.dA_part, &g = p.ddt;
  float a = 0.f, s = 0.f;
  for (int64_t b = 0; b < p.batch; ++b) {
    const float* row = ptr<float>(ap) + (b * p.nheads + h) * ap.stride[0];
    a += strided_sum(threadIdx.x, p.dA_parts, kReduceThreads, [&](int64_t c) { return row[c * ap.stride[1]]; });
    if (has(p.ddt_bias)) {
      const float* col = ptr<float>(g) + b * g.stride[0] + h * g.stride[2];
      s += strided_sum(threadIdx.x, p.seqlen, kReduceThreads, [&](int64_t l) { return col[l * g.stride[1]]; });
    }
  }
  a = reduce_block_sum(a, red);
  if (threadIdx.x == 0) ptr<float>(p.dA)[h * p.dA.stride[0]] = a;
  if (has(p.ddt_bias)) {
    s = reduce_block_sum(s, red);
    if (threadIdx.x == 0) ptr<float>(p.ddt_bias)[h * p.ddt_bias.stride[0]] = s;
  }
  if (!has(p.dD)) return;
  __shared__ float part[kReduceThreads];
  const TensorArg& dp = p.dD_part;
  const int P = int(p.headdim), groups = kReduceThreads / P, grp = int(threadIdx.x) / P, pp = int(threadIdx.x) % P;
  if (grp < groups) {
    const float* col = ptr<float>(dp) + h * dp.stride[1] + pp * dp.stride[2];
    part[threadIdx.x] = strided_sum(grp, p.dD_rows, groups, [&](int64_t r) { return col[r * dp.stride[0]]; });
  }
  __syncthreads();
  if (threadIdx.x < P) {
    float d = 0.f;
    for (int k = 0; k < groups; ++k) d += part[k * P + threadIdx.x];
    ptr<float>(p.dD)[h * p.dD.stride[0] + threadIdx.x * p.dD.stride[1]] = d;
  }
}

// Token row (b, l): out[b, l, g, n] = Σ over group g's head sets of part[b, l, set, n], as T.
template <typename T>
__device__ void reduce_sets(const TensorArg& part, const TensorArg& out, const SsdBwdReduceParams& p, int64_t row) {
  const int64_t b = row / p.seqlen, l = row % p.seqlen;
  const int per = int(p.sets / p.ngroups), N = int(p.dstate);
  const float* src = ptr<float>(part) + b * part.stride[0] + l * part.stride[1];
  T* dst = ptr<T>(out) + b * out.stride[0] + l * out.stride[1];
  for (int e = threadIdx.x; e < int(p.ngroups) * N; e += kReduceThreads) {
    const int g = e / N, n = e % N;
    float s = 0.f;
    for (int k = g * per; k < (g + 1) * per; ++k) s += src[k * part.stride[2] + n * part.stride[3]];
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
  SSM_CHECK(p.headdim >= 1 && p.headdim <= kReduceThreads, op, "headdim must be in [1, 256], got ", p.headdim);
  SSM_CHECK(p.ngroups * p.dstate < (int64_t(1) << 31), op, "too many B / C columns: ", p.ngroups * p.dstate);
  const int64_t blocks = p.nheads + p.batch * p.seqlen;
  SSM_CHECK(blocks < (int64_t(1) << 31), op, "too many token rows: ", p.batch * p.seqlen);
  if (p.nheads == 0) return;
  SSM_DTYPE_SWITCH(p.dtype, T, op, [&] {
    bwd_reduce_kernel<T><<<unsigned(blocks), kReduceThreads, 0, stream>>>(p);
  });
  check_launch(op);
}

}  // namespace ssm::cuda
