// Row helpers of the norm kernels: loads and stores of 8 consecutive features (one 16-byte
// access when the layout allows, else 1 element) in a dtype known at run time, raw 16-byte loads
// converted later, block and segment sums, and the grid size of the register kernels.
#pragma once
#include "cuda/kernels.h"
#include "cuda/vec.cuh"

#include <vector>

namespace ssm::cuda::norm {

constexpr int kThreads = 256;

// v[e] = t[row, col + e] for e < P (P = 8: contiguous, aligned; P = 1: any strides).
template <int P>
__device__ __forceinline__ void load(float* v, const TensorArg& t, DType dt, int64_t row, int64_t col) {
  const int64_t off = row * t.stride[0] + col * t.stride[1];
  switch (dt) {
    case DType::f32:
      if (P == 8) load_floats<float, 8>(v, ptr<float>(t) + off); else v[0] = ptr<float>(t)[off];
      break;
    case DType::f16:
      if (P == 8) load_floats<half_t, 8>(v, ptr<half_t>(t) + off); else v[0] = to_float(ptr<half_t>(t)[off]);
      break;
    case DType::bf16:
      if (P == 8) load_floats<bfloat16_t, 8>(v, ptr<bfloat16_t>(t) + off); else v[0] = to_float(ptr<bfloat16_t>(t)[off]);
      break;
  }
}

template <int P>
__device__ __forceinline__ void store(const TensorArg& t, DType dt, int64_t row, int64_t col, const float* v) {
  const int64_t off = row * t.stride[0] + col * t.stride[1];
  switch (dt) {
    case DType::f32:
      if (P == 8) store_floats<float, 8>(ptr<float>(t) + off, v); else ptr<float>(t)[off] = v[0];
      break;
    case DType::f16:
      if (P == 8) store_floats<half_t, 8>(ptr<half_t>(t) + off, v); else ptr<half_t>(t)[off] = from_float<half_t>(v[0]);
      break;
    case DType::bf16:
      if (P == 8) store_floats<bfloat16_t, 8>(ptr<bfloat16_t>(t) + off, v);
      else ptr<bfloat16_t>(t)[off] = from_float<bfloat16_t>(v[0]);
      break;
  }
}

// 8 features as loaded (32 bytes of float32, or 16 bytes of a 16-bit type in lo): loads issued
// as raw words and converted later, so that the loads of several tensors are all in flight
// before the first conversion waits for its data.
struct Raw8 {
  uint4 lo, hi;
};

// The raw 8 features t[row, col .. col + 7] of a packable tensor (read-only, cached load), or
// zeros when `live` is false.
__device__ __forceinline__ Raw8 load_raw(const TensorArg& t, DType dt, int64_t row, int64_t col, bool live) {
  Raw8 r = {make_uint4(0, 0, 0, 0), make_uint4(0, 0, 0, 0)};
  if (!live) return r;
  if (dt == DType::f32) {
    const uint4* q = reinterpret_cast<const uint4*>(ptr<float>(t) + row * t.stride[0] + col);
    r.lo = __ldg(q), r.hi = __ldg(q + 1);
  } else {
    r.lo = __ldg(reinterpret_cast<const uint4*>(ptr<uint16_t>(t) + row * t.stride[0] + col));
  }
  return r;
}

// v[e] = the float value of feature e of r.
__device__ __forceinline__ void to_floats(float* v, const Raw8& r, DType dt) {
  const uint32_t w[8] = {r.lo.x, r.lo.y, r.lo.z, r.lo.w, r.hi.x, r.hi.y, r.hi.z, r.hi.w};
  if (dt == DType::f32) {
#pragma unroll
    for (int e = 0; e < 8; ++e) v[e] = __uint_as_float(w[e]);
    return;
  }
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    // a bf16's bits are the top half of the float32 of the same value
    const uint32_t lo16 = w[e] & 0xffffu, hi16 = w[e] >> 16;
    if (dt == DType::bf16) {
      v[2 * e] = __uint_as_float(lo16 << 16), v[2 * e + 1] = __uint_as_float(hi16 << 16);
    } else {
      v[2 * e] = __half2float(__ushort_as_half((unsigned short)lo16));
      v[2 * e + 1] = __half2float(__ushort_as_half((unsigned short)hi16));
    }
  }
}

// True when t's rows can be read 8 features at a time from column `col0` in steps of `cols`.
inline bool packable(const TensorArg& t, DType dt) {
  const int64_t n = dt == DType::f32 ? 4 : 8;  // elements per 16 bytes
  return !t.data || (t.stride[1] == 1 && t.stride[0] % n == 0 && aligned(t.data, 16));
}

// Sum of v over the block (every thread gets it; blockDim.x a multiple of 32, at most kThreads).
// scratch: kThreads / 32 floats.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
  if (blockDim.x == 32) return v;
  __syncthreads();
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  float s = 0.f;
  for (int i = 0; i < int(blockDim.x / 32); ++i) s += scratch[i];
  return s;
}

// Sums of up to 4 values over the block, every thread gets them (blockDim.x a multiple of 32).
// buf: 32 float4 of shared memory; two consecutive calls must use different buffers (a call
// rewrites its buffer after only one barrier).
__device__ __forceinline__ float4 block_sum4(float4 v, float4* buf) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) {
    v.x += __shfl_xor_sync(0xffffffffu, v.x, off), v.y += __shfl_xor_sync(0xffffffffu, v.y, off);
    v.z += __shfl_xor_sync(0xffffffffu, v.z, off), v.w += __shfl_xor_sync(0xffffffffu, v.w, off);
  }
  if (blockDim.x == 32) return v;
  if (threadIdx.x % 32 == 0) buf[threadIdx.x / 32] = v;
  __syncthreads();
  float4 s = make_float4(0.f, 0.f, 0.f, 0.f);
  for (int i = 0; i < int(blockDim.x / 32); ++i) {
    const float4 b = buf[i];
    s.x += b.x, s.y += b.y, s.z += b.z, s.w += b.w;
  }
  return s;
}

// Sums of up to 4 values over the `warps` warps of one segment (threadIdx.y) of the block, every
// thread of the segment gets them. buf: this segment's `warps` float4 of shared memory, used as in
// block_sum4 (all segments of the block call it together).
__device__ __forceinline__ float4 segment_sum4(float4 v, float4* buf, int warps) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) {
    v.x += __shfl_xor_sync(0xffffffffu, v.x, off), v.y += __shfl_xor_sync(0xffffffffu, v.y, off);
    v.z += __shfl_xor_sync(0xffffffffu, v.z, off), v.w += __shfl_xor_sync(0xffffffffu, v.w, off);
  }
  if (warps == 1) return v;
  if (threadIdx.x % 32 == 0) buf[threadIdx.x / 32] = v;
  __syncthreads();
  float4 s = make_float4(0.f, 0.f, 0.f, 0.f);
  for (int i = 0; i < warps; ++i) {
    const float4 b = buf[i];
    s.x += b.x, s.y += b.y, s.z += b.z, s.w += b.w;
  }
  return s;
}

// Writes a block's partial column sums v (8 columns from col) into row `part` of parts, and
// zeroes the rows part + k * gridDim.x < rows_total that no block computes.
__device__ __forceinline__ void store_partial(const TensorArg& parts, int64_t rows_total, int64_t part,
                                              int64_t col, const float* v) {
  store<8>(parts, DType::f32, part, col, v);
  const float zero[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  for (int64_t r = part + gridDim.x; r < rows_total; r += gridDim.x) store<8>(parts, DType::f32, r, col, zero);
}

// Blocks of `threads` that fill the GPU once (occupancy x SMs), at most `parts`; the queries are
// cached per (kernel, block size, device) and thread.
template <typename Kernel>
int64_t resident_blocks(Kernel kernel, int threads, int64_t parts) {
  struct Entry {
    const void* kernel;
    int threads, dev;
    int64_t blocks;
  };
  thread_local std::vector<Entry> cache;
  int dev = 0;
  cudaGetDevice(&dev);
  const void* key = reinterpret_cast<const void*>(kernel);
  int64_t n = 0;
  for (const Entry& e : cache)
    if (e.kernel == key && e.threads == threads && e.dev == dev) n = e.blocks;
  if (n == 0) {
    int sms = 0, per_sm = 0;
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, 0);
    n = int64_t(per_sm > 0 ? per_sm : 1) * (sms > 0 ? sms : 1);
    cache.push_back({key, threads, dev, n});
  }
  return n < parts ? n : parts;
}

// Threads for a block over `n` features read 8 (or 1) at a time: enough for one pass, a multiple
// of 32, at most kThreads.
inline int threads_for(int64_t n, bool packed) {
  const int64_t per = packed ? (n + 7) / 8 : n;
  const int64_t t = (per + 31) / 32 * 32;
  return int(t < kThreads ? t : kThreads);
}

__device__ __forceinline__ float dsilu(float z) {
  const float s = sigmoid(z);
  return s * (1.f + z * (1.f - s));
}

// Zeroes the (parts, N) partial-gradient rows before the blocks add into them.
static __global__ void zero_rows(TensorArg a, TensorArg b, int64_t parts, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= parts * n) return;
  ptr<float>(a)[(i / n) * a.stride[0] + (i % n) * a.stride[1]] = 0.f;
  if (has(b)) ptr<float>(b)[(i / n) * b.stride[0] + (i % n) * b.stride[1]] = 0.f;
}

}  // namespace ssm::cuda::norm
