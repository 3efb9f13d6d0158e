// Shared pieces of the channels-last depthwise causal conv (x, y, dy, dx as (B, D, L) views with
// stride 1 along D, mamba_ssm's xBC slice of zxbcdt): a thread owns N consecutive channels of one
// batch row over S steps, a block is 32 such threads along D by kSub along L.
#pragma once
#include <type_traits>

#include "cuda/kernels.h"
#include "cuda/vec.cuh"

namespace ssm::cuda::conv_cl {

constexpr int kSub = 4, kLanes = 32;

// Where a thread works: batch b, channels c0 .. c0 + n - 1 (n <= N), steps t0 .. t0 + S - 1.
template <int N, int S>
struct Slot {
  int64_t b, c0, t0;
  int n;
  __device__ explicit Slot(int64_t dim)
      : b(blockIdx.z), c0((int64_t(blockIdx.x) * kLanes + threadIdx.x) * N),
        t0((int64_t(blockIdx.y) * kSub + threadIdx.y) * S),
        n(c0 < dim ? int(dim - c0 < N ? dim - c0 : N) : 0) {}
};

// v[i] = src[i] (channel i of a row, stride 1), zero for i >= n; whole words (16, 8 or 4 bytes)
// when vec (the view's base and strides allow it: a run-time flag, to halve the instantiations).
template <typename T, int N>
__device__ __forceinline__ void load_row(float (&v)[N], const T* src, int n, bool vec) {
  constexpr int kBytes = N * int(sizeof(T));
  using Word = std::conditional_t<kBytes % 16 == 0, uint4, std::conditional_t<kBytes % 8 == 0, uint2, uint32_t>>;
  if (vec && n == N) {
    Word raw[kBytes / sizeof(Word)];
#pragma unroll
    for (int j = 0; j < int(kBytes / sizeof(Word)); ++j) raw[j] = reinterpret_cast<const Word*>(src)[j];
    const T* e = reinterpret_cast<const T*>(raw);
#pragma unroll
    for (int i = 0; i < N; ++i) v[i] = to_float(e[i]);
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) v[i] = i < n ? to_float(src[i]) : 0.f;
  }
}

__device__ __forceinline__ uint32_t bits_of(float v) { return __float_as_uint(v); }
__device__ __forceinline__ uint32_t bits_of(__half v) { return __half_as_ushort(v); }
__device__ __forceinline__ uint32_t bits_of(__nv_bfloat16 v) { return __bfloat16_as_ushort(v); }

// u[j] = the j-th 32-bit word of v's N elements in T (two per word for 2-byte types).
template <typename T, int N>
__device__ __forceinline__ void pack_words(uint32_t (&u)[N * sizeof(T) / 4], const float (&v)[N]) {
#pragma unroll
  for (int j = 0; j < int(N * sizeof(T) / 4); ++j) {
    if constexpr (sizeof(T) == 4) u[j] = bits_of(v[j]);
    else u[j] = bits_of(from_float<T>(v[2 * j])) | bits_of(from_float<T>(v[2 * j + 1])) << 16;
  }
}

template <typename T, int N>
__device__ __forceinline__ void store_row(T* dst, const float (&v)[N], int n, bool vec) {
  constexpr int kWords = N * int(sizeof(T)) / 4;
  if (vec && n == N) {  // 16- or 8-byte stores of packed words
    uint32_t u[kWords];
    pack_words<T, N>(u, v);
    // inline PTX: left to itself the compiler splits these into 4-byte stores
    if constexpr (kWords % 4 == 0) {
#pragma unroll
      for (int j = 0; j < kWords; j += 4)
        asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(dst + j * 4 / sizeof(T)), "r"(u[j]),
                     "r"(u[j + 1]), "r"(u[j + 2]), "r"(u[j + 3]) : "memory");
    } else if constexpr (kWords % 2 == 0) {
#pragma unroll
      for (int j = 0; j < kWords; j += 2)
        asm volatile("st.global.v2.b32 [%0], {%1, %2};" ::"l"(dst + j * 4 / sizeof(T)), "r"(u[j]), "r"(u[j + 1])
                     : "memory");
    } else {
#pragma unroll
      for (int j = 0; j < kWords; ++j) reinterpret_cast<uint32_t*>(dst)[j] = u[j];
    }
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i)
      if (i < n) dst[i] = from_float<T>(v[i]);
  }
}

// N channels of one row kept raw (half the registers of floats in bf16/f16) until used: loaded
// as whole words when kFull (vec and n == N, fixed per thread, so the loop has no branches),
// element by element (zeros past n) otherwise.
template <typename T, int N>
struct RawRow {
  static constexpr int kBytes = N * int(sizeof(T));
  using Word = std::conditional_t<kBytes % 16 == 0, uint4, std::conditional_t<kBytes % 8 == 0, uint2, uint32_t>>;
  Word w[kBytes / sizeof(Word)];

  template <bool kFull>
  __device__ __forceinline__ void load(const T* src, int n) {
    if (kFull) {
#pragma unroll
      for (int j = 0; j < int(kBytes / sizeof(Word)); ++j) w[j] = reinterpret_cast<const Word*>(src)[j];
    } else {
      T* e = reinterpret_cast<T*>(w);
#pragma unroll
      for (int i = 0; i < N; ++i) e[i] = i < n ? src[i] : from_float<T>(0.f);
    }
  }
  __device__ __forceinline__ void zero() {
    T* e = reinterpret_cast<T*>(w);
#pragma unroll
    for (int i = 0; i < N; ++i) e[i] = from_float<T>(0.f);
  }
  __device__ __forceinline__ float operator[](int i) const { return to_float(reinterpret_cast<const T*>(w)[i]); }
};

// w[k][i] = weight[c0 + i, k], bias[i] (zero past the last channel). wvec: weight (D, W) and bias
// contiguous and 16-byte aligned, so a full thread's kW * N taps (and N biases) are whole float4s
// (a quarter of the load instructions and L1 wavefronts of scalar loads).
template <int kW, int N, int S>
__device__ __forceinline__ void load_params(float (&w)[kW][N], float (&bias)[N], const ConvParams& p,
                                            const Slot<N, S>& s, bool wvec) {
  if (wvec && s.n == N) {
    float tap[kW * N];
    const float4* src = reinterpret_cast<const float4*>(ptr<float>(p.weight) + s.c0 * kW);
#pragma unroll
    for (int j = 0; j < kW * N / 4; ++j) {
      const float4 v = src[j];
      tap[4 * j] = v.x, tap[4 * j + 1] = v.y, tap[4 * j + 2] = v.z, tap[4 * j + 3] = v.w;
    }
#pragma unroll
    for (int i = 0; i < N; ++i)
#pragma unroll
      for (int k = 0; k < kW; ++k) w[k][i] = tap[i * kW + k];
    const float4* bsrc = reinterpret_cast<const float4*>(ptr<float>(p.bias) + s.c0);
#pragma unroll
    for (int j = 0; j < N / 4; ++j) {
      const float4 v = has(p.bias) ? bsrc[j] : make_float4(0.f, 0.f, 0.f, 0.f);
      bias[4 * j] = v.x, bias[4 * j + 1] = v.y, bias[4 * j + 2] = v.z, bias[4 * j + 3] = v.w;
    }
    return;
  }
#pragma unroll
  for (int i = 0; i < N; ++i) {
    const float* wr = ptr<float>(p.weight) + (s.c0 + i) * p.weight.stride[0];
#pragma unroll
    for (int k = 0; k < kW; ++k) w[k][i] = i < s.n ? wr[k] : 0.f;
    bias[i] = i < s.n && has(p.bias) ? ptr<float>(p.bias)[(s.c0 + i) * p.bias.stride[0]] : 0.f;
  }
}

// Host: the wvec flag of load_params.
inline bool params_vectorizable(const ConvParams& p) {
  return p.weight.stride[0] == p.width && p.weight.stride[1] == 1 && aligned(p.weight.data, 16) &&
         (!has(p.bias) || (p.bias.stride[0] == 1 && aligned(p.bias.data, 16)));
}

// Input row at step t of the thread's channels: x for 0 <= t < L, initial_states for t < 0
// (zeros without them), zeros past L.
template <typename T, int N, int S>
__device__ __forceinline__ void input_row(float (&v)[N], const ConvParams& p, const Slot<N, S>& s, int64_t t,
                                          bool vec) {
  if (t >= 0 && t < p.seqlen) {
    load_row<T, N>(v, ptr<T>(p.x) + s.b * p.x.stride[0] + t * p.x.stride[2] + s.c0, s.n, vec);
  } else {
    const TensorArg& is = p.initial_states;
    const int64_t j = p.width - 1 + t;  // slot of step t in the (W-1) history
#pragma unroll
    for (int i = 0; i < N; ++i)
      v[i] = t < 0 && has(is) && i < s.n
                 ? to_float(ptr<T>(is)[s.b * is.stride[0] + (s.c0 + i) * is.stride[1] + j * is.stride[2]]) : 0.f;
  }
}

// seq id at step t (history steps take token 0's, steps past L -1).
__device__ __forceinline__ int seq_at(const ConvParams& p, int64_t b, int64_t t) {
  if (t >= p.seqlen) return -1;
  return ptr<int>(p.seq_idx)[b * p.seq_idx.stride[0] + (t < 0 ? 0 : t) * p.seq_idx.stride[1]];
}

// True when a (B, D, L) view's rows start on 16-byte boundaries (c0 is a multiple of N, so each
// thread's N channels then lie in whole words).
template <typename T>
bool words_ok(const TensorArg& t) {
  constexpr int64_t n = 16 / sizeof(T);
  return aligned(t.data, 16) && t.stride[0] % n == 0 && t.stride[2] % n == 0;
}

template <int N, int S>
dim3 grid_of(const ConvParams& p) {
  return dim3(ceil_div(p.dim, kLanes * N), ceil_div(p.seqlen, kSub * S), unsigned(p.batch));
}

}  // namespace ssm::cuda::conv_cl
