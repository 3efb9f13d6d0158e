// Register-fragment pieces of the SSD chunk output for half / bfloat16 (kernels in
// ssd_chunk_output_lean.cuh and ssd_chunk_output_staged.cuh; the backward uses mma_sx and load_cb):
// C B^T of a chunk once per group (chunk_cb_kernel), S X_k with S's accumulators repacked as A
// fragments (no shared-memory round trip), and the general decay mask exp(cs_t - cs_s) Δ_s on s <= t
// in the same run.
#pragma once
#include <type_traits>

#include "cuda/ssd_chunk_output.cuh"
#include "cuda/ssd_chunk_state_mma.cuh"

namespace ssm::cuda::ssd {

// acc (16 x 64 per warp) += A (rows r0.., K = Np, stored [row][k]) · Bt^T (Bt stored [n][k], 64 rows);
// n-tile pairs jp > jp_max are skipped.
template <typename T>
__device__ __forceinline__ void mma_rows_nk(float (&acc)[8][4], const T* A, const T* Bt, int ld, int r0, int Np,
                                            int jp_max) {
  for (int k0 = 0; k0 < Np; k0 += 16) {
    unsigned a[4];
    load_a(a, A, ld, r0, k0);
#pragma unroll
    for (int jp = 0; jp < 4; ++jp) {
      if (jp > jp_max) continue;
      unsigned bb[4];
      load_b_nk(bb, Bt, ld, jp * 16, k0);
      mma16816<T>(acc[2 * jp], a, bb[0], bb[1]);
      mma16816<T>(acc[2 * jp + 1], a, bb[2], bb[3]);
    }
  }
}

// acc += S (16 x 64 key columns, accumulators) · X (stored [s][p], ld kLd); key steps kk > kk_max skipped.
template <typename T>
__device__ __forceinline__ void mma_sx(float (&acc)[8][4], const float (&s)[8][4], const T* X, int kk_max) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    if (kk > kk_max) continue;
    const unsigned a[4] = {pack2<T>(s[2 * kk][0], s[2 * kk][1]), pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                           pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                           pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
    for (int jp = 0; jp < 4; ++jp) {
      unsigned bb[4];
      load_b_kn(bb, X, kLd, jp * 16, kk * 16);
      mma16816<T>(acc[2 * jp], a, bb[0], bb[1]);
      mma16816<T>(acc[2 * jp + 1], a, bb[2], bb[3]);
    }
  }
}

// s(t, s') *= exp(cs_t - cs_s') Δ_s' where s' <= t in the same run and t is valid, else 0.
// rows: the thread's two query tokens (chunk indices) t[0], t[1]; s0: the key tile's first token.
__device__ __forceinline__ void decay_mask(float (&s)[8][4], const ChunkTokens& tok, const int (&t)[2], int s0,
                                           int rows_left) {
  const int c4 = threadIdx.x & 3;
  float cs_t[2];
  int run_t[2];
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    cs_t[hf] = tok.cs[t[hf]];
    run_t[hf] = t[hf] < rows_left ? tok.run[t[hf]] : -1;
  }
#pragma unroll
  for (int j = 0; j < 8; ++j) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int sj = s0 + j * 8 + 2 * c4 + e;
      const float cs_s = tok.cs[sj], dt_s = tok.dt[sj];
      const int run_s = tok.run[sj];
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const bool keep = sj <= t[hf] && run_s == run_t[hf];
        s[j][2 * hf + e] = keep ? s[j][2 * hf + e] * __expf(cs_t[hf] - cs_s) * dt_s : 0.f;
      }
    }
  }
}

// Two floats stored as a pair of Cb (float or bfloat16) at dst.
__device__ __forceinline__ void store2(float* dst, float a, float b) {
  *reinterpret_cast<float2*>(dst) = make_float2(a, b);
}
__device__ __forceinline__ void store2(__nv_bfloat16* dst, float a, float b) {
  *reinterpret_cast<__nv_bfloat162*>(dst) = __floats2bfloat162_rn(a, b);
}

// Tiled C B^T (chunk_cb_kernel<T, float, true>, read by the tiled staged output): element (r, col = 8 j + 2 c + e) of
// a 64 x 64 tile at r 64 + 4 q + 2 (j % 2) + e, q = 4 c + (j / 2 ^ 2 (c / 2) ^ r % 2): the 16 floats of row r that
// lane quad c of an accumulator fragment holds are 4 contiguous 16-byte chunks (4 LDS.128 per row instead of 8
// LDS.64), and the 8 lanes of a quarter warp hit 8 distinct 16-byte bank groups.
__host__ __device__ __forceinline__ int cb_quad_chunk(int r, int c, int k) {
  return 4 * c + (k ^ ((c >> 1) << 1) ^ (r & 1));
}

// C B^T of one 64 x 64 tile (query tile qt, key tile kt <= qt) of a chunk for one group, in Cb (float32,
// or bfloat16 for bfloat16 inputs): cb[((b nc + c) G + g) Q^2 + t Q + s] for chunk-local t, s, counted
// in Cb elements from the region's start; shared by the group's heads. kTiled (float32): tile (qt, kt) is the
// 4096 floats at ((b nc + c) G + g) Q^2 + (qt nq + kt) 4096 in cb_quad_chunk's order (the image of the tiled staged
// kernel's shared tile: one linear 16 KB copy), stored as 16-byte quads.
template <typename T, typename Cb = float, bool kTiled = false>
__global__ void __launch_bounds__(kThreads) chunk_cb_kernel(SsdParams p, Layout w) {
  static_assert(!kTiled || sizeof(Cb) == 4, "tiled C B^T is float32");
  extern __shared__ __align__(128) unsigned char smem[];
  const int N = int(p.dstate), Q = int(p.chunk), Np = round16(N), ldn = Np + 8, nq = Q / kTile;
  T* cs = reinterpret_cast<T*>(smem);
  T* bs = reinterpret_cast<T*>(smem + align128(kTile * ldn * sizeof(T)));
  const int qt = blockIdx.x % nq, kt = blockIdx.x / nq % nq, g = blockIdx.y;
  const int64_t c = blockIdx.x / (nq * nq), b = blockIdx.z, c0 = c * Q;
  if (kt > qt || c0 + qt * kTile >= p.seqlen) return;
  const int rows_left = int(min(int64_t(Q), p.seqlen - c0));
  const T* C = ptr<T>(p.C) + b * p.C.stride[0] + g * p.C.stride[2] + (c0 + qt * kTile) * p.C.stride[1];
  const T* B = ptr<T>(p.B) + b * p.B.stride[0] + g * p.B.stride[2] + (c0 + kt * kTile) * p.B.stride[1];
  issue_tile<T>(cs, ldn, Np, C, p.C.stride[1], p.C.stride[3], rows_left - qt * kTile, N);
  issue_tile<T>(bs, ldn, Np, B, p.B.stride[1], p.B.stride[3], rows_left - kt * kTile, N);
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
  const int r0 = int(threadIdx.x >> 5) * 16, g8 = int(threadIdx.x & 31) >> 2, c2 = 2 * int(threadIdx.x & 3);
  float acc[8][4] = {};
  mma_rows_nk<T>(acc, cs, bs, ldn, r0, Np, 3);
  Cb* out = reinterpret_cast<Cb*>(ptr<float>(p.workspace) + w.cb) +
            ((b * w.nchunks + c) * p.ngroups + g) * int64_t(Q) * Q +
            (kTiled ? int64_t(qt * nq + kt) * kTile * kTile : int64_t(qt * kTile) * Q + kt * kTile);
  if constexpr (kTiled) {  // staged in shared memory, then stored as whole lines (the quads of a warp's store
                           // instruction are half sectors: 4x the kernel's time in round 1)
    __syncthreads();       // every warp is done with the C and B tiles
    float* st = reinterpret_cast<float*>(smem);
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int r = r0 + g8 + 8 * hf;
#pragma unroll
      for (int k = 0; k < 4; ++k)  // n-tiles 2k, 2k + 1 of the row: one quad
        *reinterpret_cast<float4*>(st + r * kTile + 4 * cb_quad_chunk(r, c2 / 2, k)) =
            make_float4(acc[2 * k][2 * hf], acc[2 * k][2 * hf + 1], acc[2 * k + 1][2 * hf], acc[2 * k + 1][2 * hf + 1]);
    }
    __syncthreads();
#pragma unroll
    for (int e = threadIdx.x; e < kTile * kTile / 4; e += kThreads)
      reinterpret_cast<float4*>(out)[e] = reinterpret_cast<const float4*>(st)[e];
  } else {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf)
#pragma unroll
      for (int j = 0; j < 8; ++j)
        store2(out + (r0 + g8 + 8 * hf) * Q + 8 * j + c2, acc[j][2 * hf], acc[j][2 * hf + 1]);
  }
}

// s = the precomputed C B^T of the thread's rows t[0], t[1] and key tile s0 (n-tile pairs > jp_max zero).
__device__ __forceinline__ void load_cb(float (&s)[8][4], const float* cb, int Q, const int (&t)[2], int s0,
                                        int jp_max) {
  const int c2 = 2 * int(threadIdx.x & 3);
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const float2 v = j / 2 <= jp_max ? *reinterpret_cast<const float2*>(cb + t[hf] * Q + s0 + 8 * j + c2)
                                       : make_float2(0.f, 0.f);
      s[j][2 * hf] = v.x;
      s[j][2 * hf + 1] = v.y;
    }
}

}  // namespace ssm::cuda::ssd
