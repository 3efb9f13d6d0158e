// issue_tile (ssd_common.cuh) with the address arithmetic out of the copy loop, for the forward kernels: where
// the rows allow 16-byte copies, each thread keeps one column chunk and steps its source pointer by a fixed
// number of rows (session 7: ncu counted ~34 instructions per cp.async in issue_tile's loop, which recomputes
// the 64-bit source address per copy, ~30% of the chunk output's instructions), else issue_tile itself.
#pragma once
#include "cuda/ssd_common.cuh"

namespace ssm::cuda::ssd {

// issue_tile out of line: a hot kernel's strided / element fallback copies kept out of its loops' instruction
// footprint (session 9: ~1.3k of the staged chunk output's key-loop SASS instructions were issue_tile's).
template <typename T>
__device__ __noinline__ void issue_tile_cold(T* dst, int ld, int width, const T* src, int64_t rs, int64_t cs, int rows,
                                             int cols) {
  issue_tile<T>(dst, ld, width, src, rs, cs, rows, cols);
}

// dst[i * ld + j] = src[i * rs + j * cs] for i < rows and j < cols, else 0, for 64 rows and kW columns (kW
// elements a multiple of 16 bytes dividing kThreads 16-byte chunks); the caller commits / waits / syncs.
// kHot (a hot loop's copies, the tiled chunk output's): the fallback out of line (issue_tile_cold) and the copy loop
// unrolled (its addresses may then be hoisted by the caller's loop; register-tight callers keep it rolled).
template <typename T, int kW, bool kHot = false>
__device__ __forceinline__ void issue_rows(T* dst, int ld, const T* src, int64_t rs, int64_t cs, int rows, int cols) {
  constexpr int kV = 16 / sizeof(T), kPer = kW / kV, kStep = kThreads / kPer;
  static_assert(kW % kV == 0 && kThreads % kPer == 0, "whole 16-byte chunks, whole rows per step");
  const bool vec = cs == 1 && rs % kV == 0 && cols % kV == 0 && (reinterpret_cast<uintptr_t>(src) & 15) == 0;
  if (!vec) {
    if (kHot)
      issue_tile_cold<T>(dst, ld, kW, src, rs, cs, rows, cols);
    else
      issue_tile<T>(dst, ld, kW, src, rs, cs, rows, cols);
    return;
  }
  const int r = int(threadIdx.x) / kPer, ch = int(threadIdx.x) % kPer;
  const bool col_ok = ch * kV < cols;
  const T* s = src + r * rs + ch * kV;
  T* d = dst + r * ld + ch * kV;
  if constexpr (kHot) {
#pragma unroll
    for (int k = 0; k < kTile / kStep; ++k) {
      const bool ok = col_ok && r + k * kStep < rows;
      cp_async16(d + k * kStep * ld, ok ? s : src, ok);
      s += kStep * rs;
    }
  } else {
#pragma unroll 1  // (unrolled, the copies' addresses stay live across the caller's loops: spills)
    for (int k = 0; k < kTile / kStep; ++k) {
      const bool ok = col_ok && r + k * kStep < rows;
      cp_async16(d + k * kStep * ld, ok ? s : src, ok);
      s += kStep * rs;
    }
  }
}

// The same for a tile `width` (Np) elements wide: issue_rows where width is 64 or 128, else issue_tile.
template <typename T, bool kHot = false>
__device__ __forceinline__ void issue_rows_n(T* dst, int ld, int width, const T* src, int64_t rs, int64_t cs, int rows,
                                             int cols) {
  if (width == 2 * kTile)
    issue_rows<T, 2 * kTile, kHot>(dst, ld, src, rs, cs, rows, cols);
  else if (width == kTile)
    issue_rows<T, kTile, kHot>(dst, ld, src, rs, cs, rows, cols);
  else if (kHot)
    issue_tile_cold<T>(dst, ld, width, src, rs, cs, rows, cols);
  else
    issue_tile<T>(dst, ld, width, src, rs, cs, rows, cols);
}

}  // namespace ssm::cuda::ssd
