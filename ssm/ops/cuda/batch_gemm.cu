// A decode batch's projection on tensor cores (M = the batch, <= 64 rows a block), optionally with the width-4 conv
// update of some output columns in its epilogue (Mamba-1's in_proj + conv update: one kernel instead of two).
// A block owns 64 rows x 32 outputs with the whole K in shared memory (K <= 1152; past it K goes in chunks of 256
// through a ring of 3 stages): its weight rows go global -> shared by cp.async BEFORE pdl_wait (weights: no kernel
// writes them, so they load while the previous kernel ends), the 64 input rows after it. Each of the 8 warps sums
// every 8th k-step of 16 over the full 64 x 32 tile (16 independent mma.sync a step, fragments by ldmatrix from
// rows padded by 16 bytes: conflict-free); the 8 partial tiles are added in warp order through shared memory
// (deterministic), rounded to the dtype and stored as 16-byte packs; the conv update of a column reads the rounded
// value, as the composition F.linear -> conv update does; its state, weights and bias are loaded right after
// pdl_wait, while the inputs travel. Optionally (the whole K in shared memory) the input rows are a prenorm block's
// hidden states, normalized in shared memory first (the residual add + LayerNorm / RMSNorm kernel before in_proj
// folded in: each block normalizes all its rows, stores 1/grid of residual_out).
#include "cuda/kernels.h"
#include "cuda/pdl.cuh"
#include "cuda/ssd_mma.cuh"
#include "cuda/vec.cuh"

namespace ssm::cuda {
namespace {

constexpr int kRows = 64, kCols = 32, kWarps = 8, kThreads = kWarps * 32;
constexpr int kMaxK = 1152;               // the whole K in shared memory up to here
constexpr int kChunk = 256, kRing = 3;    // past it: K in chunks of 256 through a ring of 3 (K a multiple of 256)
constexpr int kNormGroups = (kMaxK + 255) / 256;  // a lane's groups of 8 features in the norm prologue
constexpr int kRedLd = kCols + 8;  // float row stride of a warp's partial tile: conflict-free float2 stores

__device__ __forceinline__ void cp16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(ssd::smem_addr(dst)), "l"(src),
               "r"(valid ? 16 : 0) : "memory");
}

// rows x K elements from global rows (stride gs) into shared rows of ld elements; rows past `valid` are zeros.
template <typename T>
__device__ __forceinline__ void load_rows(T* s, int ld, const T* g, int64_t gs, int rows, int valid, int K) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int r = warp; r < rows; r += kWarps) {
    const T* src = g + (r < valid ? r : 0) * gs;
    for (int c = lane * 8; c < K; c += 32 * 8) cp16(s + r * ld + c, src + c, r < valid);
  }
}

// Channels ch0..ch0+7 of row b's conv update: the 3 kept state entries, the weights and bias, loaded after pdl_wait
// while the inputs travel. Cache (B, C, 4) with unit stride along the 4 entries (Mamba-1: the 8 channels' 32 entries
// contiguous) or channels-last (Mamba-2: entry j of the 8 channels contiguous); 16-byte loads either way.
template <typename T>
struct ConvIn {
  T s[8][3];
  float w[8][4], bias[8];

  __device__ __forceinline__ void load(const BatchGemmParams& p, int64_t b, int ch0) {
    const T* st = ptr<T>(p.conv_state) + b * p.conv_state.stride[0] + int64_t(ch0) * p.conv_state.stride[1];
    if (p.conv_state.stride[2] == 1) {
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        Pack<T> pk;
        pk.load(st + k * 8);
#pragma unroll
        for (int j = 0; j < 3; ++j) s[2 * k][j] = pk.e[j + 1], s[2 * k + 1][j] = pk.e[4 + j + 1];
      }
    } else {
#pragma unroll
      for (int j = 0; j < 3; ++j) {
        Pack<T> pk;
        pk.load(st + (j + 1) * p.conv_state.stride[2]);
#pragma unroll
        for (int i = 0; i < 8; ++i) s[i][j] = pk.e[i];
      }
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const float4 v = *reinterpret_cast<const float4*>(ptr<float>(p.conv_weight) + int64_t(ch0 + i) * 4);
      w[i][0] = v.x, w[i][1] = v.y, w[i][2] = v.z, w[i][3] = v.w;
      bias[i] = 0.f;
    }
    if (has(p.conv_bias)) {
      const float4 lo = *reinterpret_cast<const float4*>(ptr<float>(p.conv_bias) + ch0);
      const float4 hi = *reinterpret_cast<const float4*>(ptr<float>(p.conv_bias) + ch0 + 4);
      bias[0] = lo.x, bias[1] = lo.y, bias[2] = lo.z, bias[3] = lo.w;
      bias[4] = hi.x, bias[5] = hi.y, bias[6] = hi.z, bias[7] = hi.w;
    }
  }

  // x_conv of the 8 channels from their new inputs xv (rounded out values); the window shifted in place.
  __device__ __forceinline__ void update(const BatchGemmParams& p, int64_t b, int ch0, const Pack<T>& xv) const {
    Pack<T> y;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      float acc = bias[i];
#pragma unroll
      for (int j = 0; j < 3; ++j) acc += w[i][j] * to_float(s[i][j]);
      acc += w[i][3] * to_float(xv.e[i]);
      y.e[i] = from_float<T>(p.silu ? silu(acc) : acc);
    }
    y.store(ptr<T>(p.x_conv) + b * p.x_conv.stride[0] + ch0);
    T* st = ptr<T>(p.conv_state) + b * p.conv_state.stride[0] + int64_t(ch0) * p.conv_state.stride[1];
    if (p.conv_state.stride[2] == 1) {
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        Pack<T> pk;
#pragma unroll
        for (int j = 0; j < 3; ++j) pk.e[j] = s[2 * k][j], pk.e[4 + j] = s[2 * k + 1][j];
        pk.e[3] = xv.e[2 * k], pk.e[7] = xv.e[2 * k + 1];
        pk.store(st + k * 8);
      }
    } else {
#pragma unroll
      for (int j = 0; j < 3; ++j) {
        Pack<T> pk;
#pragma unroll
        for (int i = 0; i < 8; ++i) pk.e[i] = s[i][j];
        pk.store(st + j * p.conv_state.stride[2]);
      }
      xv.store(st + 3 * p.conv_state.stride[2]);
    }
  }
};

// Each warp's float32 partial of the 64 x 32 tile over its k-steps.
template <typename T>
__device__ __forceinline__ void tile_partial(float (&acc)[4][4][4], const T* s_x, const T* s_w, int ld, int K) {
  for (int ks = threadIdx.x / 32; ks < K / 16; ks += kWarps) {
    unsigned a[4][4], b[2][4];
#pragma unroll
    for (int j = 0; j < 2; ++j) ssd::load_b_nk(b[j], s_w, ld, j * 16, ks * 16);
#pragma unroll
    for (int m = 0; m < 4; ++m) ssd::load_a(a[m], s_x, ld, m * 16, ks * 16);
#pragma unroll
    for (int m = 0; m < 4; ++m)
#pragma unroll
      for (int n = 0; n < 4; ++n) ssd::mma16816<T>(acc[m][n], a[m], b[n / 2][(n % 2) * 2], b[n / 2][(n % 2) * 2 + 1]);
  }
}

// The block's input rows (a prenorm block's hidden states, in shared memory) replaced by norm(x + residual) rounded to
// T, as the norm kernel before a projection would give them; the block stores its share of residual_out's columns.
// A warp a row, two rows at a time (their residual loads in flight together); lane groups of 8 features at
// k = lane * 8 + 256 g; the sums by shuffles; the variance from the centred values (two passes over registers).
template <typename T>
__device__ __forceinline__ void norm_rows(const BatchGemmParams& p, T* s_x, int ld, int K, int64_t row0, int rows) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int per = int((K / 8 + gridDim.x - 1) / gridDim.x) * 8, c0 = int(blockIdx.x) * per, c1 = c0 + per;
  const float inv_k = 1.f / float(K);
  for (int r0 = warp; r0 < rows; r0 += 2 * kWarps) {
    float v[2][kNormGroups][8], sum[2] = {0.f, 0.f}, sq[2] = {0.f, 0.f}, mean[2], rstd[2];
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int g = 0; g < kNormGroups; ++g) {
        const int r = r0 + h * kWarps, k = lane * 8 + g * 256;
        if (r >= rows || k >= K) continue;
        load_floats<T, 8>(v[h][g], s_x + r * ld + k);
        if (has(p.residual)) {
          const float* rp = ptr<float>(p.residual) + (row0 + r) * p.residual.stride[0] + k;
          const float4 a = *reinterpret_cast<const float4*>(rp), b = *reinterpret_cast<const float4*>(rp + 4);
          v[h][g][0] += a.x, v[h][g][1] += a.y, v[h][g][2] += a.z, v[h][g][3] += a.w;
          v[h][g][4] += b.x, v[h][g][5] += b.y, v[h][g][6] += b.z, v[h][g][7] += b.w;
        }
#pragma unroll
        for (int e = 0; e < 8; ++e) sum[h] += v[h][g][e];
      }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
#pragma unroll
      for (int m = 16; m > 0; m /= 2) sum[h] += __shfl_xor_sync(0xffffffffu, sum[h], m);
      mean[h] = p.is_rms ? 0.f : sum[h] * inv_k;
#pragma unroll
      for (int g = 0; g < kNormGroups; ++g)
        if (lane * 8 + g * 256 < K)
#pragma unroll
          for (int e = 0; e < 8; ++e) sq[h] += (v[h][g][e] - mean[h]) * (v[h][g][e] - mean[h]);
#pragma unroll
      for (int m = 16; m > 0; m /= 2) sq[h] += __shfl_xor_sync(0xffffffffu, sq[h], m);
      rstd[h] = rsqrtf(sq[h] * inv_k + p.eps);
    }
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int g = 0; g < kNormGroups; ++g) {
        const int r = r0 + h * kWarps, k = lane * 8 + g * 256;
        if (r >= rows || k >= K) continue;
        if (k >= c0 && k < c1) {
          float* ro = ptr<float>(p.residual_out) + (row0 + r) * p.residual_out.stride[0] + k;
          *reinterpret_cast<float4*>(ro) = make_float4(v[h][g][0], v[h][g][1], v[h][g][2], v[h][g][3]);
          *reinterpret_cast<float4*>(ro + 4) = make_float4(v[h][g][4], v[h][g][5], v[h][g][6], v[h][g][7]);
        }
        const float4 w0 = *reinterpret_cast<const float4*>(ptr<float>(p.norm_weight) + k);
        const float4 w1 = *reinterpret_cast<const float4*>(ptr<float>(p.norm_weight) + k + 4);
        const float w[8] = {w0.x, w0.y, w0.z, w0.w, w1.x, w1.y, w1.z, w1.w};
        float bb[8] = {};
        if (has(p.norm_bias)) {
          const float4 b0 = *reinterpret_cast<const float4*>(ptr<float>(p.norm_bias) + k);
          const float4 b1 = *reinterpret_cast<const float4*>(ptr<float>(p.norm_bias) + k + 4);
          bb[0] = b0.x, bb[1] = b0.y, bb[2] = b0.z, bb[3] = b0.w;
          bb[4] = b1.x, bb[5] = b1.y, bb[6] = b1.z, bb[7] = b1.w;
        }
        float y[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) y[e] = (v[h][g][e] - mean[h]) * rstd[h] * w[e] + bb[e];
        store_floats<T, 8>(s_x + r * ld + k, y);
      }
  }
}

// The block's weight rows (before pdl_wait) or input rows of chunk `i` (kc wide) into stage `st` of the ring.
template <typename T>
struct Ring {
  T* base;
  int ld, kc;
  __device__ __forceinline__ T* w(int st) const { return base + st * (kRows + kCols) * ld; }
  __device__ __forceinline__ T* x(int st) const { return w(st) + kCols * ld; }
};

// One 64 x 32 tile of out over K in chunks of kc (a ring of kStages chunks; kStages 1: the whole K at once).
template <typename T, bool kConv, int kStages, bool kNorm>
__global__ void __launch_bounds__(kThreads, 1) batch_gemm_kernel(BatchGemmParams p) {
  static_assert(!kNorm || kStages == 1, "the norm prologue needs the whole rows in shared memory");
  extern __shared__ __align__(16) unsigned char smem[];
  const int K = int(p.K), kc = kStages == 1 ? K : kChunk, nch = K / kc, n0 = blockIdx.x * kCols;
  const Ring<T> ring{reinterpret_cast<T*>(smem), kc + 8, kc};
  const int64_t row0 = int64_t(blockIdx.y) * kRows, nout = p.nout;
  const int wrows = int(nout - n0 < kCols ? nout - n0 : kCols);
  const int xrows = int(p.batch - row0 < kRows ? p.batch - row0 : kRows);
  const T* wg = ptr<T>(p.weight) + n0 * p.weight.stride[0];
  const T* xg = ptr<T>(p.x) + row0 * p.x.stride[0];
#pragma unroll
  for (int i = 0; i < kStages; ++i) {  // groups W0 .. W(S-1), then X0 .. X(S-1)
    if (i < nch) load_rows(ring.w(i), ring.ld, wg + i * kc, p.weight.stride[0], kCols, wrows, kc);
    ssd::cp_async_commit();
  }
  pdl_wait();  // x (and the conv state) may come from the previous kernel
  pdl_release();
#pragma unroll
  for (int i = 0; i < kStages; ++i) {
    if (i < nch) load_rows(ring.x(i), ring.ld, xg + i * kc, p.x.stride[0], kRows, xrows, kc);
    ssd::cp_async_commit();
  }
  const int r = threadIdx.x / 4, q = threadIdx.x % 4;  // the epilogue's row r, columns q * 8 .. q * 8 + 7 of the tile
  const int64_t b = row0 + r;
  const int col = n0 + q * 8;
  const bool conv = kConv && b < p.batch && col < nout && col >= p.conv_lo && col < p.conv_lo + p.conv_dim;
  ConvIn<T> cin;
  if (conv) cin.load(p, b, int(col - p.conv_lo));
  float acc[4][4][4] = {};
  for (int i = 0; i < nch; ++i) {
    ssd::cp_async_wait<kStages - 1>();  // chunk i's group: at most kStages - 1 later ones still in flight
    __syncthreads();
    if constexpr (kNorm) {
      norm_rows<T>(p, ring.x(0), ring.ld, K, row0, xrows);
      __syncthreads();
    }
    tile_partial<T>(acc, ring.x(i % kStages), ring.w(i % kStages), ring.ld, kc);
    __syncthreads();  // the stage is free again (and after the last chunk: the partial tiles overwrite the ring)
    if (i + kStages < nch) {
      const int st = i % kStages, k0 = (i + kStages) * kc;
      load_rows(ring.w(st), ring.ld, wg + k0, p.weight.stride[0], kCols, wrows, kc);
      load_rows(ring.x(st), ring.ld, xg + k0, p.x.stride[0], kRows, xrows, kc);
    }
    ssd::cp_async_commit();
  }
  const int warp = threadIdx.x / 32, g = (threadIdx.x % 32) / 4, c = threadIdx.x % 4;
  float* red = reinterpret_cast<float*>(smem) + warp * kRows * kRedLd;  // [kWarps][kRows][kRedLd]
#pragma unroll
  for (int m = 0; m < 4; ++m)
#pragma unroll
    for (int n = 0; n < 4; ++n) {
      float* d = red + (m * 16 + g) * kRedLd + n * 8 + 2 * c;
      *reinterpret_cast<float2*>(d) = make_float2(acc[m][n][0], acc[m][n][1]);
      *reinterpret_cast<float2*>(d + 8 * kRedLd) = make_float2(acc[m][n][2], acc[m][n][3]);
    }
  __syncthreads();
  float v[8] = {};
#pragma unroll
  for (int w = 0; w < kWarps; ++w)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const float4 f = *reinterpret_cast<const float4*>(reinterpret_cast<float*>(smem) + (w * kRows + r) * kRedLd +
                                                        q * 8 + e * 4);
      v[e * 4] += f.x, v[e * 4 + 1] += f.y, v[e * 4 + 2] += f.z, v[e * 4 + 3] += f.w;
    }
  if (b >= p.batch || col >= nout) return;
  Pack<T> o;
#pragma unroll
  for (int i = 0; i < 8; ++i) o.e[i] = from_float<T>(v[i]);
  o.store(ptr<T>(p.out) + b * p.out.stride[0] + col);
  if (conv) cin.update(p, b, int(col - p.conv_lo), o);
}

bool streamed(const BatchGemmParams& p) { return p.K > kMaxK; }

size_t smem_bytes(const BatchGemmParams& p, size_t elem) {
  const int64_t kc = streamed(p) ? kChunk : p.K, stages = streamed(p) ? kRing : 1;
  const size_t ops = size_t(stages * (kRows + kCols) * (kc + 8)) * elem, red = size_t(kWarps) * kRows * kRedLd * 4;
  return ops > red ? ops : red;
}

template <typename T, bool kConv>
void launch(const BatchGemmParams& p, cudaStream_t stream) {
  auto kernel = streamed(p) ? batch_gemm_kernel<T, kConv, kRing, false>
              : has(p.norm_weight) ? batch_gemm_kernel<T, kConv, 1, true> : batch_gemm_kernel<T, kConv, 1, false>;
  const size_t smem = smem_bytes(p, sizeof(T));
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  const dim3 grid(ceil_div(p.nout, kCols), ceil_div(p.batch, kRows));
  pdl_launch(kernel, grid, dim3(kThreads), smem, stream, p);
}

bool rows_fit(const TensorArg& t) { return t.stride[1] == 1 && t.stride[0] % 8 == 0 && aligned(t.data, 16); }

}  // namespace

bool batch_gemm_fits(const BatchGemmParams& p) {
  bool ok = (p.dtype == DType::bf16 || p.dtype == DType::f16) && p.batch >= 1 && p.batch <= int64_t(65535) * kRows &&
            p.K >= 16 && p.K % 16 == 0 && (p.K <= kMaxK || (p.K % kChunk == 0 && p.K < (int64_t(1) << 24))) &&
            p.nout >= 8 && p.nout % 8 == 0 &&
            p.nout < (int64_t(1) << 30) && rows_fit(p.x) && rows_fit(p.weight) && rows_fit(p.out);
  if (has(p.norm_weight)) {
    const auto f32_rows = [](const TensorArg& t) {
      return t.stride[1] == 1 && t.stride[0] % 4 == 0 && aligned(t.data, 16);
    };
    ok = ok && p.K <= kMaxK && p.norm_weight.stride[0] == 1 && aligned(p.norm_weight.data, 16) &&
         (!has(p.norm_bias) || (p.norm_bias.stride[0] == 1 && aligned(p.norm_bias.data, 16))) &&
         (!has(p.residual) || f32_rows(p.residual)) && has(p.residual_out) && f32_rows(p.residual_out);
  }
  if (!has(p.conv_state)) return ok;
  const TensorArg &st = p.conv_state, &w = p.conv_weight, &bias = p.conv_bias;
  const bool rows = st.stride[2] == 1 && st.stride[1] == 4, last = st.stride[1] == 1 && st.stride[2] % 8 == 0;
  return ok && p.conv_lo >= 0 && p.conv_lo % 8 == 0 && p.conv_dim >= 8 && p.conv_dim % 8 == 0 &&
         p.conv_lo + p.conv_dim <= p.nout && rows_fit(p.x_conv) && (rows || last) && st.stride[0] % 8 == 0 &&
         aligned(st.data, 16) && w.stride[0] == 4 && w.stride[1] == 1 && aligned(w.data, 16) &&
         (!has(bias) || (bias.stride[0] == 1 && aligned(bias.data, 16)));
}

void batch_gemm(const BatchGemmParams& p, cudaStream_t stream) {
  const char* op = "batch_gemm";
  SSM_CHECK(batch_gemm_fits(p), op, "arguments outside the kernel's layout");
  const bool conv = has(p.conv_state);
  if (p.dtype == DType::bf16)
    conv ? launch<__nv_bfloat16, true>(p, stream) : launch<__nv_bfloat16, false>(p, stream);
  else
    conv ? launch<__half, true>(p, stream) : launch<__half, false>(p, stream);
  check_launch(op);
}

}  // namespace ssm::cuda
