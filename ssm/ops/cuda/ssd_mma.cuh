// Warp-level tensor-core helpers of the SSD kernels (sm_80+): mma.sync m16n8k16 with float32
// accumulators, fragments loaded from shared memory with ldmatrix. Fragment layouts (g = lane / 4,
// c = lane % 4): A (16 x 16) a0 (g, 2c..2c+1), a1 (g+8, 2c..), a2 (g, 2c+8..), a3 (g+8, 2c+8..);
// B (16 x 8) b0 (2c..2c+1, g), b1 (2c+8.., g); C (16 x 8) c0 c1 (g, 2c..2c+1), c2 c3 (g+8, 2c..).
#pragma once
#include <cstdlib>
#include <cstring>

#include "cuda/common.cuh"

namespace ssm::cuda::ssd {

__device__ __forceinline__ unsigned smem_addr(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// Four 8x8 matrices; lane l gives the row address of matrix l / 8.
__device__ __forceinline__ void ldsm_x4(unsigned (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_addr(p)));
}

__device__ __forceinline__ void ldsm_x4_trans(unsigned (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_addr(p)));
}

// A fragment of rows r0..r0+15, columns k0..k0+15 of a row-major [row][k] tile.
template <typename T>
__device__ __forceinline__ void load_a(unsigned (&a)[4], const T* s, int ld, int r0, int k0) {
  const int l = threadIdx.x & 31;
  ldsm_x4(a, s + (r0 + (l & 15)) * ld + k0 + (l >> 4) * 8);
}

// The same from a tile stored [k][row] (the transpose of the operand).
template <typename T>
__device__ __forceinline__ void load_a_kr(unsigned (&a)[4], const T* s, int ld, int r0, int k0) {
  const int l = threadIdx.x & 31;
  ldsm_x4_trans(a, s + (k0 + (l >> 4) * 8 + (l & 7)) * ld + r0 + ((l >> 3) & 1) * 8);
}

// B fragments of two n-tiles (n0..n0+7, n0+8..n0+15), k0..k0+15, from a tile stored [n][k]:
// b[0], b[1] for the first n-tile, b[2], b[3] for the second.
template <typename T>
__device__ __forceinline__ void load_b_nk(unsigned (&b)[4], const T* s, int ld, int n0, int k0) {
  const int l = threadIdx.x & 31;
  ldsm_x4(b, s + (n0 + (l >> 4) * 8 + (l & 7)) * ld + k0 + ((l >> 3) & 1) * 8);
}

// The same from a tile stored [k][n].
template <typename T>
__device__ __forceinline__ void load_b_kn(unsigned (&b)[4], const T* s, int ld, int n0, int k0) {
  const int l = threadIdx.x & 31;
  ldsm_x4_trans(b, s + (k0 + ((l >> 3) & 1) * 8 + (l & 7)) * ld + n0 + (l >> 4) * 8);
}

// d += a · b, one m16n8k16 product with float32 accumulators.
template <typename T>
__device__ __forceinline__ void mma16816(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1);

template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float (&d)[4], const unsigned (&a)[4], unsigned b0,
                                                        unsigned b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <>
__device__ __forceinline__ void mma16816<__half>(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats as a packed pair of T (lo in the low half).
template <typename T>
__device__ __forceinline__ unsigned pack2(float lo, float hi) {
  const T l = from_float<T>(lo), h = from_float<T>(hi);
  const unsigned short ul = *reinterpret_cast<const unsigned short*>(&l);
  const unsigned short uh = *reinterpret_cast<const unsigned short*>(&h);
  return unsigned(ul) | (unsigned(uh) << 16);
}

// A packed pair of T scaled by (lo, hi).
template <typename T>
__device__ __forceinline__ unsigned scale2(unsigned v, float lo, float hi) {
  const unsigned short ul = static_cast<unsigned short>(v & 0xffffu), uh = static_cast<unsigned short>(v >> 16);
  return pack2<T>(to_float(*reinterpret_cast<const T*>(&ul)) * lo, to_float(*reinterpret_cast<const T*>(&uh)) * hi);
}

// A session-4 SSD forward switch: the environment variable `name` (0 = off), read at each launch so
// that one process can time the variants; `dflt` when unset.
inline bool ssd_switch(const char* name, bool dflt) {
  const char* v = std::getenv(name);
  return v == nullptr ? dflt : std::strcmp(v, "0") != 0;
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int kPending>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending)); }

}  // namespace ssm::cuda::ssd
