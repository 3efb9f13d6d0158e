// Hopper warpgroup MMA (wgmma, sm_90a) for the SSD kernels: a 128-thread block is one warpgroup.
// D (64 x 64, float32) += A (64 x 16, registers) B (16 x 64, shared memory by descriptor). A's per-warp
// fragment is mma.sync m16n8k16's (warp w: rows 16w..16w+15) and D's registers are the acc[8][4] of
// ssd_mma.cuh (acc[j][u]: rows g (u < 2) / g + 8, columns 8j + 2c + u % 2), so the mma.sync kernels'
// fragments carry over. B tiles are 64 rows of 128 bytes (64 elements) with the 128-byte swizzle: the
// 16-byte chunk ch of row r sits at chunk ch ^ (r % 8), the tile 1024-byte aligned.
#pragma once
#include <cstdint>

#include "cuda/ssd_common.cuh"
#include "cuda/ssd_mma.cuh"

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define SSM_WGMMA 1  // this device pass has wgmma (sm_90a)
#endif

namespace ssm::cuda::ssd {

// Offset in elements of (row r, column col) of a swizzled 64 x 64 tile of 2-byte elements.
__host__ __device__ __forceinline__ int sw_off(int r, int col) {
  return r * 64 + (((col >> 3) ^ (r & 7)) << 3) + (col & 7);
}

// The sm_90a kernels exist in this build (cuda.cmake defines SSM_CUDA_SM90A) and the current device has compute
// capability 9.0 (read once per device).
inline bool wgmma_device() {
#ifdef SSM_CUDA_SM90A
  static int cc[16] = {0};
  int dev = 0;
  cudaGetDevice(&dev);
  if (dev < 0 || dev >= 16) return false;
  if (cc[dev] == 0) {
    int major = 0, minor = 0;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
    cc[dev] = 10 * major + minor;
  }
  return cc[dev] == 90;
#else
  return false;
#endif
}

// dst[sw_off(r, col)] = src[r * rs + col * cs] for r < rows and col < cols, else 0, by element (out of line).
template <typename T>
__device__ __noinline__ void issue_sw_cold(T* dst, const T* src, int64_t rs, int64_t cs, int rows, int cols) {
  for (int e = threadIdx.x; e < kTile * kTile; e += kThreads) {
    const int r = e / kTile, col = e % kTile;
    dst[sw_off(r, col)] = r < rows && col < cols ? src[r * rs + col * cs] : from_float<T>(0.f);
  }
}

// The same by 16-byte asynchronous copies where the rows allow (4 per thread: chunk t % 8 of rows t / 8 + 16 k); the
// caller commits, waits, fences (fence_async_smem) and syncs.
template <typename T>
__device__ __forceinline__ void issue_sw(T* dst, const T* src, int64_t rs, int64_t cs, int rows, int cols) {
  static_assert(sizeof(T) == 2, "64 elements of 2 bytes per 128-byte row");
  const bool vec = cs == 1 && rs % 8 == 0 && cols % 8 == 0 && (reinterpret_cast<uintptr_t>(src) & 15) == 0;
  if (!vec) {
    issue_sw_cold<T>(dst, src, rs, cs, rows, cols);
    return;
  }
  const int r = int(threadIdx.x) >> 3, ch = int(threadIdx.x) & 7;
  const bool col_ok = ch * 8 < cols;
  const T* s = src + r * rs + ch * 8;
  T* d = dst + sw_off(r, ch * 8);  // rows r + 16 k keep r % 8, so the swizzled chunk
#pragma unroll
  for (int k = 0; k < kTile / 16; ++k) {
    const bool ok = col_ok && r + 16 * k < rows;
    cp_async16(d + 16 * k * kTile, ok ? s : src, ok);
    s += 16 * rs;
  }
}

// The wgmma kernels (chunk output, chunk state) replace the mma.sync ones: wgmma_device(), and SSM_SSD_WGMMA not 0
// (=0: the other architectures' mma.sync kernels on this card too, so that their tests run here).
inline bool wgmma_enabled() { return wgmma_device() && ssd_switch("SSM_SSD_WGMMA", true); }

// Shared-memory descriptor of a swizzled tile at byte address a (128-byte swizzle; both byte offsets
// 1024, the distance of 8-row groups, which is the one a 64-wide tile uses for either major order).
// sw_desc(a + k) = sw_desc(a) + k / 16: the address field (bits 0-13; shared addresses < 256 KB) does not carry.
__device__ __forceinline__ uint64_t sw_desc(unsigned a) {
  constexpr uint64_t kOff = 1024 >> 4;
  return uint64_t((a & 0x3ffff) >> 4) | (kOff << 16) | (kOff << 32) | (uint64_t(1) << 62);
}

__device__ __forceinline__ void wgmma_fence() {
#ifdef SSM_WGMMA
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void wgmma_commit() {
#ifdef SSM_WGMMA
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}

template <int kPending>
__device__ __forceinline__ void wgmma_wait() {
#ifdef SSM_WGMMA
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
#endif
}

// Shared memory written by ordinary stores or cp.async, made visible to wgmma's reads (each writer, before
// the barrier).
__device__ __forceinline__ void fence_async_smem() {
#ifdef SSM_WGMMA
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

// Keeps the compiler from moving accumulator reads / writes across the asynchronous product.
__device__ __forceinline__ void fence_acc(float (&d)[8][4]) {
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int u = 0; u < 4; ++u) asm volatile("" : "+f"(d[j][u])::"memory");
}

// The same for A fragments: computed before the wgmma_fence that precedes their products (else ptxas injects
// one more warpgroup arrive per product).
__device__ __forceinline__ void fence_a(unsigned (&a)[4]) {
#pragma unroll
  for (int u = 0; u < 4; ++u) asm volatile("" : "+r"(a[u])::"memory");
}

#define SSM_WGMMA_D                                                                                                   \
  "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]),             \
      "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]),         \
      "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]),         \
      "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]),         \
      "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
#define SSM_WGMMA_ASM(TY, TRANS)                                                                                     \
  "{\n.reg .pred acc;\nsetp.ne.b32 acc, %37, 0;\n"                                                                \
  "wgmma.mma_async.sync.aligned.m64n64k16.f32." TY "." TY " "                                                        \
  "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,"  \
  "%30,%31}, {%32,%33,%34,%35}, %36, acc, 1, 1, " TRANS ";\n}\n"

// d += a B, B (16 x 64) by descriptor: kTrans, B stored [k][n] (n contiguous: an X tile [token][p]); else
// [n][k] (k contiguous: an H_in half tile [p][n]). Issued only; wgmma_commit / wgmma_wait complete it.
template <typename T, bool kTrans>
__device__ __forceinline__ void wgmma_64x64(float (&d)[8][4], const unsigned (&a)[4], uint64_t desc) {
#ifdef SSM_WGMMA
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    if constexpr (kTrans)
      asm volatile(SSM_WGMMA_ASM("bf16", "1") : SSM_WGMMA_D : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1));
    else
      asm volatile(SSM_WGMMA_ASM("bf16", "0") : SSM_WGMMA_D : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1));
  } else {
    if constexpr (kTrans)
      asm volatile(SSM_WGMMA_ASM("f16", "1") : SSM_WGMMA_D : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1));
    else
      asm volatile(SSM_WGMMA_ASM("f16", "0") : SSM_WGMMA_D : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1));
  }
#endif
}

#define SSM_WGMMA_SS(TY)                                                                                             \
  "{\n.reg .pred acc;\nsetp.ne.b32 acc, %34, 0;\n"                                                                \
  "wgmma.mma_async.sync.aligned.m64n64k16.f32." TY "." TY " "                                                        \
  "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,"  \
  "%30,%31}, %32, %33, acc, 1, 1, 0, 0;\n}\n"

// d = A B (+ d where kAccumulate), A (64 x 16) and B (16 x 64) both by descriptor, both stored with k contiguous
// (A [row][k], B [n][k]). Issued only.
template <typename T, bool kAccumulate>
__device__ __forceinline__ void wgmma_64x64_ss(float (&d)[8][4], uint64_t desc_a, uint64_t desc_b) {
#ifdef SSM_WGMMA
  if constexpr (std::is_same<T, __nv_bfloat16>::value)
    asm volatile(SSM_WGMMA_SS("bf16") : SSM_WGMMA_D : "l"(desc_a), "l"(desc_b), "r"(int(kAccumulate)));
  else
    asm volatile(SSM_WGMMA_SS("f16") : SSM_WGMMA_D : "l"(desc_a), "l"(desc_b), "r"(int(kAccumulate)));
#endif
}
#undef SSM_WGMMA_SS
#undef SSM_WGMMA_ASM
#undef SSM_WGMMA_D

}  // namespace ssm::cuda::ssd
