// Device helpers of the SSD kernels: Δ processing, the sequence id of a token, and the per-chunk
// token data (Δ, in-chunk cumsum of Δ·A, run numbers) that every SSD kernel rebuilds in shared
// memory instead of reading it back from device memory.
#pragma once
#include "cuda/ssd_chunk_scan.cuh"

namespace ssm::cuda::ssd {

__host__ __device__ inline int64_t align128(int64_t bytes) { return (bytes + 127) / 128 * 128; }

// Δ = clamp(softplus?(dt + dt_bias), dt_lo, dt_hi)
__device__ __forceinline__ float delta(const SsdParams& p, int64_t b, int64_t t, int h) {
  float v = ptr<float>(p.dt)[b * p.dt.stride[0] + t * p.dt.stride[1] + h * p.dt.stride[2]];
  if (has(p.dt_bias)) v += ptr<float>(p.dt_bias)[h * p.dt_bias.stride[0]];
  if (p.dt_softplus) v = softplus(v);
  return fminf(fmaxf(v, p.dt_lo), p.dt_hi);
}

// The sequence of token t: its cu_seqlens index (the s with cu[s] <= t < cu[s + 1]), its seq_idx
// value, or 0.
__device__ __forceinline__ int seg_of(const SsdParams& p, int64_t b, int64_t t) {
  if (has(p.cu_seqlens)) {
    const int* cu = ptr<int>(p.cu_seqlens);
    const int64_t st = p.cu_seqlens.stride[0];
    int lo = 0, hi = static_cast<int>(p.nseq) - 1;
    while (lo < hi) {
      const int mid = (lo + hi + 1) / 2;
      if (cu[mid * st] <= t) lo = mid; else hi = mid - 1;
    }
    return lo;
  }
  if (has(p.seq_idx)) return ptr<int>(p.seq_idx)[b * p.seq_idx.stride[0] + t * p.seq_idx.stride[1]];
  return 0;
}

// Element (i0, i1, i2, i3) of a 4-d strided tensor.
template <typename T>
__device__ __forceinline__ float at4(const TensorArg& a, int64_t i0, int64_t i1, int64_t i2, int64_t i3) {
  return to_float(ptr<T>(a)[i0 * a.stride[0] + i1 * a.stride[1] + i2 * a.stride[2] + i3 * a.stride[3]]);
}

// A chunk's tokens, in shared memory; entries past the chunk's last valid token have Δ = 0.
struct ChunkTokens {
  float dt[kMaxChunk];   // Δ (1 with inject_unit): the weight of x_t B_t^T in the state
  float cs[kMaxChunk];   // inclusive cumsum of Δ·A within the chunk
  int run[kMaxChunk];    // run number (0 = the run of the chunk's first token); a run is a
                         // stretch of one sequence
  int seg[kMaxChunk];    // sequence id (seg_of)
  int runstart[kMaxChunk];  // first token of each run
  float ftot[kThreads / 32];
  int itot[kThreads / 32];
  int continues;         // the first token continues the sequence of the token before the chunk
};

// In-place inclusive prefix sum of v[0, 256) by the block's 128 threads (2 entries each).
template <typename V>
__device__ void block_scan(V* v, V* warp_tot) {
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const V a = v[2 * tid], ab = a + v[2 * tid + 1];
  V s = ab;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const V n = __shfl_up_sync(0xffffffffu, s, o);
    if (lane >= o) s += n;
  }
  if (lane == 31) warp_tot[warp] = s;
  __syncthreads();
  V off = 0;
  for (int i = 0; i < warp; ++i) off += warp_tot[i];
  const V excl = s - ab + off;
  v[2 * tid] = excl + a;
  v[2 * tid + 1] = excl + ab;
  __syncthreads();
}

// Fills `s` for the chunk of row b, head h, starting at token c0 (Q tokens). Block-wide (syncs).
__device__ inline void load_chunk(const SsdParams& p, int64_t b, int h, int64_t c0, int Q, ChunkTokens& s) {
  const float A = ptr<float>(p.A)[h * p.A.stride[0]];
#pragma unroll  // both tokens' loads in flight together
  for (int i = threadIdx.x; i < kMaxChunk; i += kThreads) {
    const int64_t t = c0 + i;
    const bool valid = i < Q && t < p.seqlen;
    const float d = valid ? delta(p, b, t, h) : 0.f;
    const int sg = valid ? seg_of(p, b, t) : 0;
    s.dt[i] = p.inject_unit ? (valid ? 1.f : 0.f) : d;  // the injection's weight
    s.cs[i] = d * A;
    s.seg[i] = sg;
    s.run[i] = valid && i > 0 && sg != seg_of(p, b, t - 1) ? 1 : 0;
  }
  if (threadIdx.x == 0)
    s.continues = c0 > 0 && c0 < p.seqlen && seg_of(p, b, c0) == seg_of(p, b, c0 - 1);
  __syncthreads();
  block_scan(s.cs, s.ftot);
  block_scan(s.run, s.itot);
  for (int i = threadIdx.x; i < Q && c0 + i < p.seqlen; i += kThreads)
    if (i == 0 || s.run[i] != s.run[i - 1]) s.runstart[s.run[i]] = i;
  __syncthreads();
}

// cs just before token i of the chunk (0 before the first)
__device__ __forceinline__ float cs_before(const ChunkTokens& s, int i) { return i > 0 ? s.cs[i - 1] : 0.f; }

// 16-byte global -> shared copy that bypasses registers; zero-fills when !pred.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool pred) {
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(pred ? 16 : 0));
}

// issue_tile's case of tokens contiguous in memory (rs == 1, e.g. the channels-first conv output
// of the fused Mamba-2 path): 16-byte loads of 8 tokens of one column, scattered into the rows.
// Lane pairs read two neighbouring token groups (a full 32-byte sector) of 16 consecutive columns,
// so that the scattered 2-byte stores hit distinct banks.
template <typename T>
__device__ void tile_by_tokens(T* dst, int ld, int width, const T* src, int64_t cs, int rows, int cols) {
  constexpr int kV = 16 / sizeof(T), kGroups = kTile / kV;
  for (int e = threadIdx.x; e < width * kGroups; e += kThreads) {
    const int j = (e >> 1) % width, i = (e / (2 * width) * 2 + (e & 1)) * kV;
    T v[kV];
    if (j < cols && i + kV <= rows) {
      *reinterpret_cast<uint4*>(v) = __ldg(reinterpret_cast<const uint4*>(src + j * cs + i));
    } else {
#pragma unroll
      for (int u = 0; u < kV; ++u) v[u] = j < cols && i + u < rows ? src[j * cs + i + u] : from_float<T>(0.f);
    }
#pragma unroll
    for (int u = 0; u < kV; ++u) dst[(i + u) * ld + j] = v[u];
  }
}

// dst[i * ld + j] = src[i * rs + j * cs] for i < rows and j < cols, else 0, for 64 rows and `width`
// columns (a multiple of 16 bytes). Issues 16-byte asynchronous copies when the rows allow it (the
// caller commits / waits), else 16-byte loads along tokens when those are contiguous, else element
// loads; the caller syncs the block before reading dst.
template <typename T>
__device__ void issue_tile(T* dst, int ld, int width, const T* src, int64_t rs, int64_t cs, int rows, int cols) {
  constexpr int kV = 16 / sizeof(T);
  const bool vec = cs == 1 && rs % kV == 0 && cols % kV == 0 && (reinterpret_cast<uintptr_t>(src) & 15) == 0;
  if (vec) {
    // element e = threadIdx.x + k kThreads is (i, j / kV) = (e / per_row, e % per_row): one division,
    // then the step by kThreads in place
    const int per_row = width / kV, di = kThreads / per_row, dj = kThreads % per_row;
    int i = int(threadIdx.x) / per_row, j = int(threadIdx.x) % per_row;
    while (i < kTile) {
      const bool ok = i < rows && j * kV < cols;
      cp_async16(dst + i * ld + j * kV, ok ? src + i * rs + j * kV : src, ok);
      i += di, j += dj;
      if (j >= per_row) j -= per_row, ++i;
    }
    return;
  }
  if (rs == 1 && cs % kV == 0 && (reinterpret_cast<uintptr_t>(src) & 15) == 0) {
    tile_by_tokens(dst, ld, width, src, cs, rows, cols);
    return;
  }
  const bool by_token = rs == 1;  // consecutive threads read consecutive tokens
  for (int e = threadIdx.x; e < kTile * width; e += kThreads) {
    const int i = by_token ? e % kTile : e / width, j = by_token ? e / kTile : e % width;
    dst[i * ld + j] = i < rows && j < cols ? src[i * rs + j * cs] : from_float<T>(0.f);
  }
}

// issue_tile, then waits for every asynchronous copy of the thread.
template <typename T>
__device__ void load_tile(T* dst, int ld, int width, const T* src, int64_t rs, int64_t cs, int rows, int cols) {
  issue_tile(dst, ld, width, src, rs, cs, rows, cols);
  asm volatile("cp.async.wait_all;\n" ::);
}

// Sets the kernel's dynamic shared-memory limit and launches it on `grid` (nothing when empty).
template <typename Kernel>
void launch(Kernel kernel, dim3 grid, size_t smem, cudaStream_t stream, const SsdParams& p, const Layout& w) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;
  if (smem > 48 * 1024) cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  kernel<<<grid, kThreads, smem, stream>>>(p, w);
}

}  // namespace ssm::cuda::ssd
