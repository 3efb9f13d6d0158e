// A 64 x 64 float32 accumulator tile of a 128-thread block (warp w owns rows 16w..16w+15),
// fed from shared memory: tensor cores (wmma 16x16x16, fp32 accumulate) for half / bfloat16,
// float32 FMA for float (tf32 would miss the float32 tolerance). A(i, k) is A[i * lda + k]
// when kARow, else A[i + k * lda]; B(k, j) is B[k * ldb + j] when kBRow, else B[k + j * ldb].
// Leading dims are multiples of 8 elements and tile pointers 32-byte aligned.
#pragma once
#include <mma.h>

#include "cuda/common.cuh"

namespace ssm::cuda::ssd {

template <typename T>
struct Tile {
  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> f[4];

  __device__ void zero() {
#pragma unroll
    for (int j = 0; j < 4; ++j) nvcuda::wmma::fill_fragment(f[j], 0.f);
  }

  // this += A (64 x K) · B (K x 64), K a multiple of 16
  template <bool kARow, bool kBRow>
  __device__ void mma(const T* A, int lda, const T* B, int ldb, int K) {
    namespace w = nvcuda::wmma;
    using LA = typename std::conditional<kARow, w::row_major, w::col_major>::type;
    using LB = typename std::conditional<kBRow, w::row_major, w::col_major>::type;
    const int r0 = (threadIdx.x >> 5) * 16;
    for (int k = 0; k < K; k += 16) {
      w::fragment<w::matrix_a, 16, 16, 16, T, LA> a;
      w::load_matrix_sync(a, kARow ? A + r0 * lda + k : A + r0 + k * lda, lda);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        w::fragment<w::matrix_b, 16, 16, 16, T, LB> b;
        w::load_matrix_sync(b, kBRow ? B + k * ldb + 16 * j : B + k + 16 * j * ldb, ldb);
        w::mma_sync(f[j], a, b, f[j]);
      }
    }
  }

  // S[i * lds + j] = this(i, j), row-major float
  __device__ void store(float* S, int lds) const {
    const int r0 = (threadIdx.x >> 5) * 16;
#pragma unroll
    for (int j = 0; j < 4; ++j)
      nvcuda::wmma::store_matrix_sync(S + r0 * lds + 16 * j, f[j], lds, nvcuda::wmma::mem_row_major);
  }
};

template <>
struct Tile<float> {
  float f[32];  // row 16w + lane / 2, columns (lane & 1) * 32 + j

  __device__ int row() const { return (threadIdx.x >> 5) * 16 + ((threadIdx.x & 31) >> 1); }
  __device__ int col() const { return (threadIdx.x & 1) * 32; }

  __device__ void zero() {
#pragma unroll
    for (int j = 0; j < 32; ++j) f[j] = 0.f;
  }

  template <bool kARow, bool kBRow>
  __device__ void mma(const float* A, int lda, const float* B, int ldb, int K) {
    const int r = row(), c = col();
    for (int k = 0; k < K; ++k) {
      const float a = kARow ? A[r * lda + k] : A[r + k * lda];
#pragma unroll
      for (int j = 0; j < 32; ++j) f[j] += a * (kBRow ? B[k * ldb + c + j] : B[k + (c + j) * ldb]);
    }
  }

  __device__ void store(float* S, int lds) const {
    const int r = row(), c = col();
#pragma unroll
    for (int j = 0; j < 32; ++j) S[r * lds + c + j] = f[j];
  }
};

}  // namespace ssm::cuda::ssd
