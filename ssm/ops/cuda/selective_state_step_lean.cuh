// Lean selective-state decode steps for vectorizable layouts (included by selective_state_step.cuh), each
// issuing all of a thread's loads before its math, 32-bit index math, no division on the state's address:
// lean_kernel (wide Mamba-2 rows of small batches), mamba1_pair_kernel (Mamba-1 rows, N = 16, two lanes a channel
// row), mamba1_step_kernel_s5 (Mamba-1 rows with dt_proj folded, several batch rows a thread), mamba2_step_kernel
// (Mamba-2 head tiles of large batches).
#pragma once
#include "cuda/pdl.cuh"

namespace ssm::cuda::step {

constexpr int kLeanThreads = 128;
constexpr int kMaxProjRank = 256;  // mamba1_step_kernel_s5's dt_in rows in shared memory

// 2^x by one MUFU instruction (exp2f adds a range fix-up of 4 instructions; results below 2^-126 flush to 0).
__device__ __forceinline__ float ex2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// log2(x) and 1 / x by one MUFU instruction each.
__device__ __forceinline__ float lg2_approx(float x) {
  float y;
  asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ float rcp_approx(float x) {
  float y;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// softplus with mamba_ssm's threshold (identity above 20) from MUFU instructions: log1p(u), u = e^v, by lg2 of
// 1 + u, or below u = 2^-5 by u (1 - u / 2 + u^2 / 3) (relative error < 1e-5 either way).
__device__ __forceinline__ float softplus_approx(float v) {
  const float u = ex2_approx(v * 1.4426950408889634f);
  const float r = u < 0.03125f ? u * (1.f - u * (0.5f - u * 0.33333333f)) : lg2_approx(1.f + u) * 0.6931471805599453f;
  return v > 20.f ? v : r;
}

// v / (1 + e^-v) without a division (v * 0 = 0 where e^-v overflows).
__device__ __forceinline__ float silu_approx(float v) { return v * rcp_approx(1.f + ex2_approx(-v * 1.4426950408889634f)); }

// 16 bytes global -> shared, asynchronous (cp.async; completed by cp_async_wait).
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  const uint32_t dst = uint32_t(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(gmem) : "memory");
}

// 16 bytes to global memory in one instruction (NVVM splits a uint4 store through a 16-bit element pointer).
__device__ __forceinline__ void st_global16(void* dst, const uint4& v) {
  asm volatile("st.global.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(dst), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w) : "memory");
}

// Wait until at most n of this thread's cp.async groups are pending (n <= 7, constant after unrolling).
__device__ __forceinline__ void cp_async_wait(int n) {
  switch (n) {
    case 0: asm volatile("cp.async.wait_group 0;" ::: "memory"); break;
    case 1: asm volatile("cp.async.wait_group 1;" ::: "memory"); break;
    case 2: asm volatile("cp.async.wait_group 2;" ::: "memory"); break;
    case 3: asm volatile("cp.async.wait_group 3;" ::: "memory"); break;
    case 4: asm volatile("cp.async.wait_group 4;" ::: "memory"); break;
    case 5: asm volatile("cp.async.wait_group 5;" ::: "memory"); break;
    case 6: asm volatile("cp.async.wait_group 6;" ::: "memory"); break;
    default: asm volatile("cp.async.wait_group 7;" ::: "memory"); break;
  }
}

// 8 consecutive elements of T as raw 16-byte words (one for 16-bit types, two for float32).
template <typename T>
struct Raw8 {
  Pack<T> w[sizeof(T) / 2];
  __device__ __forceinline__ void load(const T* src) {
#pragma unroll
    for (int i = 0; i < int(sizeof(T) / 2); ++i) w[i].load(src + i * Pack<T>::kN);
  }
  // through the read-only path: the compiler may issue it ahead of earlier stores
  __device__ __forceinline__ void load_nc(const T* src) {
#pragma unroll
    for (int i = 0; i < int(sizeof(T) / 2); ++i)
      *reinterpret_cast<uint4*>(w[i].e) = __ldg(reinterpret_cast<const uint4*>(src + i * Pack<T>::kN));
  }
  __device__ __forceinline__ void store(T* dst) const {
#pragma unroll
    for (int i = 0; i < int(sizeof(T) / 2); ++i) w[i].store(dst + i * Pack<T>::kN);
  }
  __device__ __forceinline__ float get(int e) const { return to_float(w[e / Pack<T>::kN].e[e % Pack<T>::kN]); }
  __device__ __forceinline__ void set(int e, float v) { w[e / Pack<T>::kN].e[e % Pack<T>::kN] = from_float<T>(v); }
};

// Wide Mamba-2 rows of small batches (A tied along N): K lanes a row of head blockIdx.y, each lane owning
// KP packs of 8 state entries; batch row blockIdx.z. The state, B and C loads are issued first (one memory
// round trip before the math), then x, z, dt; the state stored after the math, y last. softplus and silu by
// MUFU approximations for 16-bit inputs. kPdl (launched with programmatic dependent launch, pdl.cuh; calls without
// state_batch_indices, which the previous kernel could write): the state rows are prefetched into L2 before
// griddepcontrol.wait (one lane a 128-byte line) and everything is read after it, so the kernel is correct whatever
// the previous kernel writes (L2 is the point of coherence: its stores land over the prefetched lines). Session 8
// round 1 (H200): Mamba-2 b1 1.9-2.0 us, plain launch 3.4-3.5, session 7's state loads before the wait 2.3-2.4 (and
// wrong after a step on the same state), a bulk prefetch of the block's rows 2.1.
template <typename TS, typename T, int K, int KP, bool kPdl>
__global__ void __launch_bounds__(kLeanThreads) lean_kernel(StateStepParams p) {
  constexpr float kLog2e = 1.4426950408889634f;
  const uint32_t hp = blockIdx.x * (kLeanThreads / K) + threadIdx.x / K, h = blockIdx.y;
  if (hp >= uint32_t(p.headdim)) return;  // whole lane groups leave together
  const int lane = int(threadIdx.x % K);
  const uint32_t g = p.ngroups == 1 ? 0u : h / (uint32_t(p.nheads) / uint32_t(p.ngroups));
  // the lanes of this row (rows past the end left above: a partial warp shuffles within its groups)
  const unsigned group = K == 32 ? 0xffffffffu : ((1u << K) - 1) << (threadIdx.x % 32 / K * K);
  const int64_t b = blockIdx.z;
  // every address first (arithmetic only: the PDL forms compute them before the wait)
  const T* Bp = ptr<T>(p.B) + b * p.B.stride[0] + g * p.B.stride[1] + lane * 8;
  const T* Cp = ptr<T>(p.C) + b * p.C.stride[0] + g * p.C.stride[1] + lane * 8;
  const T* xp = ptr<T>(p.x) + b * p.x.stride[0] + h * p.x.stride[1] + hp * p.x.stride[2];
  const T* zp = ptr<T>(p.z) + b * p.z.stride[0] + h * p.z.stride[1] + hp * p.z.stride[2];
  const T* dtp = ptr<T>(p.dt) + b * p.dt.stride[0] + h * p.dt.stride[1] + hp * p.dt.stride[2];
  const float* Ap = ptr<float>(p.A) + h * p.A.stride[0] + hp * p.A.stride[1];
  const float* Dp = ptr<float>(p.D) + h * p.D.stride[0] + hp * p.D.stride[1];
  const float* biasp = ptr<float>(p.dt_bias) + h * p.dt_bias.stride[0] + hp * p.dt_bias.stride[1];
  TS* row = ptr<TS>(p.state) + h * p.state.stride[1] + hp * p.state.stride[2];
  if constexpr (kPdl) {
    // no state_batch_indices (srow = b): the state rows into L2 while the previous kernel runs, nothing read
    row += b * p.state.stride[0];
#pragma unroll
    for (int j = 0; j < KP; ++j)
      if ((lane * 8 + j * K * 8) * sizeof(TS) % 128 == 0) prefetch_l2(row + lane * 8 + j * K * 8);
    // the addresses live before the wait (the compiler would otherwise compute them after it)
    asm volatile("" ::"l"(Bp), "l"(Cp), "l"(xp), "l"(zp), "l"(dtp), "l"(Ap), "l"(Dp), "l"(biasp), "l"(row));
    pdl_wait();
    pdl_release();
  }
  // the state row (-1: padding row)
  int srow = int(b);
  if constexpr (!kPdl) {
    srow = has(p.state_batch_indices) ? ptr<int>(p.state_batch_indices)[b * p.state_batch_indices.stride[0]] : int(b);
    row += (srow < 0 ? 0 : srow) * p.state.stride[0];
  }
  TS* st = row + lane * 8;
  Raw8<TS> s[KP];
  Raw8<T> Bv[KP], Cv[KP];
  if (srow >= 0)
#pragma unroll
    for (int j = 0; j < KP; ++j) s[j].load(st + j * K * 8);
  const float A2 = *Ap * kLog2e;
  const float Dv = has(p.D) ? *Dp : 0.f;
  const float bias = has(p.dt_bias) ? *biasp : 0.f;
  if (srow >= 0)
#pragma unroll
    for (int j = 0; j < KP; ++j) {
      Bv[j].load_nc(Bp + j * K * 8);
      Cv[j].load_nc(Cp + j * K * 8);
    }
  const float xv = to_float(*xp);
  const float zv = has(p.z) ? to_float(*zp) : 0.f;
  float dt = to_float(*dtp) + bias;
  if (p.softplus) dt = sizeof(T) == 2 ? softplus_approx(dt) : softplus(dt);  // float32 inputs: exact
  float y = 0.f;
  if (srow >= 0) {
    const float dx = dt * xv, dA = ex2_approx(dt * A2);
#pragma unroll
    for (int j = 0; j < KP; ++j)
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const float sv = s[j].get(e) * dA + dx * Bv[j].get(e);
        y += sv * Cv[j].get(e);
        s[j].set(e, sv);
      }
#pragma unroll
    for (int off = K / 2; off > 0; off /= 2) y += __shfl_xor_sync(group, y, off, K);
    y += Dv * xv;
    if (has(p.z)) y *= sizeof(T) == 2 ? silu_approx(zv) : silu(zv);
#pragma unroll
    for (int j = 0; j < KP; ++j) s[j].store(st + j * K * 8);
  }
  // y (zero for padding rows)
  if (lane == 0) ptr<T>(p.out)[b * p.out.stride[0] + h * p.out.stride[1] + hp * p.out.stride[2]] = from_float<T>(y);
}

// Two floats as one word of two 16-bit values (lo in the low half), rounded to nearest; and back.
template <typename TS>
__device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t pack2<bfloat16_t>(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}
template <>
__device__ __forceinline__ uint32_t pack2<half_t>(float lo, float hi) {
  const __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}
template <typename TS>
__device__ __forceinline__ float2 unpack2(uint32_t w);
template <>
__device__ __forceinline__ float2 unpack2<bfloat16_t>(uint32_t w) {
  return make_float2(__uint_as_float(w << 16), __uint_as_float(w & 0xffff0000u));
}
template <>
__device__ __forceinline__ float2 unpack2<half_t>(uint32_t w) {
  return __half22float2(*reinterpret_cast<const __half2*>(&w));
}

// mamba1_pair_kernel's block (channels x batch rows, threads) and its blocks a SM (registers capped at 48)
constexpr int kM1Ch = 64, kM1Rows = 4, kM1Threads = 256, kM1MinBlocks = 5;

// One lane's pack of mamba1_pair_kernel: the 8 state entries s (16-bit pairs) of block channel c from entry 8 half,
// updated in place with 2^(dl A) and dx B; returns their sum of s C. A row quads are stored at [c][q ^ (c / 2 % 2)].
template <typename TS, typename T>
__device__ __forceinline__ float pair_update(uint4& s, const float4 (*As)[4], uint32_t c, uint32_t half, float dl, float dx,
                                             const uint4& Bw, const uint4& Cw) {
  float A[8];
  *reinterpret_cast<float4*>(A) = As[c][(2 * half) ^ (c / 2 % 2)];
  *reinterpret_cast<float4*>(A + 4) = As[c][(2 * half + 1) ^ (c / 2 % 2)];
  uint32_t w[4] = {s.x, s.y, s.z, s.w};
  const uint32_t bw[4] = {Bw.x, Bw.y, Bw.z, Bw.w}, cw[4] = {Cw.x, Cw.y, Cw.z, Cw.w};
  float y = 0.f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float2 v = unpack2<TS>(w[i]);
    const float2 Bv = unpack2<T>(bw[i]), Cv = unpack2<T>(cw[i]);
    v.x = v.x * ex2_approx(dl * A[2 * i]) + dx * Bv.x;
    v.y = v.y * ex2_approx(dl * A[2 * i + 1]) + dx * Bv.y;
    y += v.x * Cv.x + v.y * Cv.y;
    w[i] = pack2<TS>(v.x, v.y);
  }
  s = make_uint4(w[0], w[1], w[2], w[3]);
  return y;
}

// Mamba-1 rows without dt_proj (P = 1, A per entry, N = 16, 16-bit state and inputs, one group;
// SSM_STEP_M1_FORM=old runs session 5's kernel instead): a block of kM1Ch channels x kM1Rows batch rows, warp w one
// batch row (w / 2) of 32 channels, no loop over rows. Lane l owns state pack l % 2 (entries 8 (l % 2) .. + 8) of the
// warp's channels l / 2 and 16 + l / 2, so each of the warp's two 16-byte state loads and stores covers 512
// contiguous bytes (16 whole rows). The state packs go to shared memory first (cp.async), then the output channel's
// x, dt, z, D, dt_bias to registers and the block's A rows and B, C rows to shared memory (cp.async; one wait and one
// barrier; the state stored from registers). Lane l's output channel is l / 2 (even l) or 16 + l / 2 (odd l): its
// softplus(dt) and dt x reach the partner lane by shuffles, and the two lanes' sums of a channel's y meet by one
// shuffle. softplus and silu by MUFU approximations.
template <typename TS, typename T, bool kPdl>
__global__ void __launch_bounds__(kM1Threads, kM1MinBlocks) mamba1_pair_kernel(StateStepParams p) {
  constexpr float kLog2e = 1.4426950408889634f;
  __shared__ float4 As[kM1Ch][4];       // A row of block channel c, quad q at [c][q ^ (c / 2 % 2)] (no bank conflict)
  __shared__ uint4 bcs[kM1Rows][2][2];  // [row][B, C][pack]: the 16-bit entries as loaded
  __shared__ uint4 Ss[2][kM1Threads];  // thread t's state packs at [j][t]
  const uint32_t t = threadIdx.x, warp = t / 32, lane = t % 32, half = lane % 2;
  const uint32_t H = uint32_t(p.nheads), c0 = blockIdx.x * kM1Ch, b = blockIdx.y * kM1Rows + warp / 2;
  const uint32_t lc0 = warp % 2 * 32 + lane / 2, lc1 = lc0 + 16;  // block channels of the lane's packs
  const uint32_t h0 = c0 + lc0, h1 = c0 + lc1, ho = half ? h1 : h0;  // ho: the lane's output channel
  const bool row = b < uint32_t(p.batch);
  // kPdl (launched with PDL, no state_batch_indices; see lean_kernel): the block's state rows and A rows prefetched
  // into L2 from one lane a 128-byte line while the previous kernel runs, every address computed, nothing read before
  // the wait (session 8 round 1b, H200: Mamba-1 b64 8.1 us, plain launch 9.1; the next wave's rows prefetched too 8.6)
  const bool indexed = !kPdl && has(p.state_batch_indices);
  const int srow = !row ? -1 : indexed ? ptr<int>(p.state_batch_indices)[b * p.state_batch_indices.stride[0]] : int(b);
  // the state packs first (srow -1: padding row or past the batch)
  TS* st = ptr<TS>(p.state) + (srow < 0 ? 0 : srow) * p.state.stride[0] + half * 8;
  TS* st0 = st + h0 * p.state.stride[1];
  TS* st1 = st + h1 * p.state.stride[1];
  const bool ok0 = srow >= 0 && h0 < H, ok1 = srow >= 0 && h1 < H;
  const float* Arow = ptr<float>(p.A) + (c0 + t / 4) * p.A.stride[0] + 4 * (t % 4);  // thread t: quad t % 4 of channel t / 4
  // the output channel's inputs (rows past the batch read row 0's) and weights; row t / 4's B (t / 2 % 2 = 0) or C
  // pack t % 2 (threads < 16)
  const uint32_t bi = row ? b : 0, bb = blockIdx.y * kM1Rows + t / 4;
  const T* xp = ptr<T>(p.x) + bi * p.x.stride[0] + ho * p.x.stride[1];
  const T* dtp = ptr<T>(p.dt) + bi * p.dt.stride[0] + ho * p.dt.stride[1];
  const T* zp = ptr<T>(p.z) + bi * p.z.stride[0] + ho * p.z.stride[1];
  const float* biasp = ptr<float>(p.dt_bias) + ho * p.dt_bias.stride[0];
  const float* Dp = ptr<float>(p.D) + ho * p.D.stride[0];
  const TensorArg& M = t / 2 % 2 ? p.C : p.B;
  const T* bcp = ptr<T>(M) + bb * M.stride[0] + 8 * (t % 2);
  if constexpr (kPdl) {
    if (lane % 8 == 0 && ok0) prefetch_l2(st0);
    if (lane % 8 == 0 && ok1) prefetch_l2(st1);
    if (t % 8 == 0 && c0 + t / 4 < H) prefetch_l2(Arow);
    // the addresses live before the wait (the compiler would otherwise compute them after it)
    asm volatile("" ::"l"(st0), "l"(st1), "l"(Arow), "l"(xp), "l"(dtp), "l"(zp), "l"(biasp), "l"(Dp), "l"(bcp));
    pdl_wait();
    pdl_release();
  }
  // copied into shared memory by cp.async, issued in this order (ptxas moved register loads after the x, dt, z
  // loads, ~190 instructions into the kernel: session 7 rounds 1 and 1b, 9.3 us vs 9.2 this way)
  if (ok0) cp_async16(&Ss[0][t], st0);
  if (ok1) cp_async16(&Ss[1][t], st1);
  // the output channel's weights, the block's A rows
  const float bias = has(p.dt_bias) && ho < H ? *biasp : 0.f;
  const float Do = has(p.D) && ho < H ? *Dp : 0.f;
  if (c0 + t / 4 < H) cp_async16(&As[t / 4][t % 4 ^ (t / 8 % 2)], Arow);
  float xo = 0.f, dto = 0.f, zo = 0.f;
  if (ho < H) {
    xo = to_float(*xp);
    dto = to_float(*dtp) + bias;
    zo = has(p.z) ? to_float(*zp) : 0.f;
  }
  if (t < kM1Rows * 4 && bb < uint32_t(p.batch)) cp_async16(&bcs[t / 4][t / 2 % 2][t % 2], bcp);
  asm volatile("cp.async.commit_group;" ::: "memory");
  const float d = p.softplus ? softplus_approx(dto) : dto, dx = d * xo;
  cp_async_wait(0);
  __syncthreads();
  if (!row) return;  // whole warps
  uint4 s0 = ok0 ? Ss[0][t] : make_uint4(0, 0, 0, 0), s1 = ok1 ? Ss[1][t] : make_uint4(0, 0, 0, 0);
  const float dl0 = __shfl_sync(0xffffffffu, d, lane & ~1u) * kLog2e, dl1 = __shfl_sync(0xffffffffu, d, lane | 1u) * kLog2e;
  const float dx0 = __shfl_sync(0xffffffffu, dx, lane & ~1u), dx1 = __shfl_sync(0xffffffffu, dx, lane | 1u);
  const uint4 Bw = bcs[warp / 2][0][half], Cw = bcs[warp / 2][1][half];
  float y0 = pair_update<TS, T>(s0, As, lc0, half, dl0, dx0, Bw, Cw);
  float y1 = pair_update<TS, T>(s1, As, lc1, half, dl1, dx1, Bw, Cw);
  if (ok0) st_global16(st0, s0);
  if (ok1) st_global16(st1, s1);
  y0 += __shfl_xor_sync(0xffffffffu, y0, 1);
  y1 += __shfl_xor_sync(0xffffffffu, y1, 1);
  float yo = (half ? y1 : y0) + Do * xo;
  if (has(p.z)) yo *= silu_approx(zo);
  if (ho < H) ptr<T>(p.out)[b * p.out.stride[0] + ho * p.out.stride[1]] = from_float<T>(srow < 0 ? 0.f : yo);
}

// Session 5's Mamba-1 kernel: the Mamba-1 rows with dt_proj folded (kProj: the fused proj_state_step past batch 4),
// and without it the fallback of mamba1_pair_kernel (SSM_STEP_M1_FORM=old).
// Mamba-1 rows (P = 1, A per entry, N = 16, 16-bit state and inputs, one group): a thread per channel
// walking R batch rows (its A row read once for R rows). The thread's state packs and A row are copied into
// shared memory by cp.async (no registers held while they are in flight: ptxas otherwise delays register
// loads past earlier waits to fit 96 registers), the block's R rows of B and C converted once into shared
// memory. Every global load is issued before the barrier; then row by row the math and the row's state
// store, y last. kProj: dt = dot(dt_proj[h, :], dt_in[b, :]) (rounded to T), the block's
// dt_in rows in shared memory, each thread reading its dt_proj row once for its R rows.
template <typename TS, typename T, int R, bool kProj>
__global__ void __launch_bounds__(kLeanThreads, R == 4 ? 5 : 1) mamba1_step_kernel_s5(StateStepParams p) {
  constexpr float kLog2e = 1.4426950408889634f;
  constexpr int N = 16;
  __shared__ float4 bc[R][2][N / 4];  // [row][B, C][n / 4]
  // A rows of the block's channels, quad q of thread t at [t][(q + t / 2) % 4]: the 16-byte reads of 8
  // consecutive threads hit 32 different banks
  __shared__ float4 As[kLeanThreads][N / 4];
  __shared__ uint4 S[R][2][kLeanThreads];  // the state packs of thread t at [r][j][t]
  __shared__ float4 dti[kProj ? R : 1][kProj ? kMaxProjRank / 4 : 1];  // [row][k / 4]: dt_in rows (kProj)
  const uint32_t h = blockIdx.x * kLeanThreads + threadIdx.x;
  const bool live = h < uint32_t(p.nheads);  // no early exit: every thread reaches the barrier
  const int64_t b0 = int64_t(blockIdx.z) * R;
  int srow[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int64_t b = b0 + r;
    srow[r] = b >= p.batch ? -1
            : has(p.state_batch_indices) ? ptr<int>(p.state_batch_indices)[b * p.state_batch_indices.stride[0]] : b;
  }
  TS* st = ptr<TS>(p.state) + h * p.state.stride[1];
  const int t = threadIdx.x, rank = int(p.dt_rank);
  // one cp.async group per row (the A row with row 0's): the math of a row starts once its group is in
#pragma unroll
  for (int q = 0; q < N / 4; ++q)
    if (live) cp_async16(&As[t][(q + t / 2) % 4], ptr<float>(p.A) + h * p.A.stride[0] + 4 * q);
#pragma unroll
  for (int r = 0; r < R; ++r) {
#pragma unroll
    for (int j = 0; j < 2; ++j)
      if (live && srow[r] >= 0) cp_async16(&S[r][j][t], st + srow[r] * p.state.stride[0] + j * 8);
    asm volatile("cp.async.commit_group;" ::: "memory");
  }
  // B, C: item i < 32 R is entry i % 16 of row i / 32's B (i / 16 even) or C
  for (int i = t; i < 32 * R; i += kLeanThreads) {
    const int r = i / 32, n = i % N, c = i / N % 2;
    const TensorArg& M = c ? p.C : p.B;
    const int64_t b = b0 + r;
    reinterpret_cast<float*>(bc[r][c])[n] = b < p.batch ? to_float(ptr<T>(M)[b * M.stride[0] + n]) : 0.f;
  }
  if (kProj)
    for (int i = t; i < R * rank; i += kLeanThreads) {
      const int r = i / rank, k = i - r * rank;
      const int64_t b = b0 + r < p.batch ? b0 + r : b0;
      reinterpret_cast<float*>(dti[r])[k] = to_float(ptr<T>(p.dt)[b * p.dt.stride[0] + k * p.dt.stride[1]]);
    }
  float xv[R], zv[R], dt[R], Dv = 0.f, bias = 0.f;
  if (live) {
    Dv = has(p.D) ? ptr<float>(p.D)[h * p.D.stride[0]] : 0.f;
    bias = has(p.dt_bias) ? ptr<float>(p.dt_bias)[h * p.dt_bias.stride[0]] : 0.f;
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int64_t b = srow[r] >= 0 ? b0 + r : b0;  // padding rows read row b0's (unused) inputs
      xv[r] = to_float(ptr<T>(p.x)[b * p.x.stride[0] + h * p.x.stride[1]]);
      zv[r] = has(p.z) ? to_float(ptr<T>(p.z)[b * p.z.stride[0] + h * p.z.stride[1]]) : 0.f;
      dt[r] = kProj ? 0.f : to_float(ptr<T>(p.dt)[b * p.dt.stride[0] + h * p.dt.stride[1]]) + bias;
    }
  }
  __syncthreads();  // B, C (and dt_in) rows in shared memory
  if (!live) return;
  if (kProj) {
    const T* w = ptr<T>(p.dt_proj) + h * p.dt_proj.stride[0];
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = 0.f;
#pragma unroll 4
    for (int k = 0; k < rank; k += 8) {
      Raw8<T> wk;
      wk.load_nc(w + k);
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const float4 lo = dti[r][k / 4], hi = dti[r][k / 4 + 1];
        acc[r] += wk.get(0) * lo.x + wk.get(1) * lo.y + wk.get(2) * lo.z + wk.get(3) * lo.w +
                  wk.get(4) * hi.x + wk.get(5) * hi.y + wk.get(6) * hi.z + wk.get(7) * hi.w;
      }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) dt[r] = to_float(from_float<T>(acc[r])) + bias;
  }
  float y[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    y[r] = 0.f;
    cp_async_wait(R - 1 - r);  // this row's state (and A) in shared memory
    if (srow[r] < 0) continue;
    const float d = p.softplus ? softplus(dt[r]) : dt[r], dx = d * xv[r], dl = d * kLog2e;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      Raw8<TS> sp;
      *reinterpret_cast<uint4*>(sp.w[0].e) = S[r][j][t];
      float Bv[8], Cv[8], Av[8];
      *reinterpret_cast<float4*>(Bv) = bc[r][0][2 * j], *reinterpret_cast<float4*>(Bv + 4) = bc[r][0][2 * j + 1];
      *reinterpret_cast<float4*>(Cv) = bc[r][1][2 * j], *reinterpret_cast<float4*>(Cv + 4) = bc[r][1][2 * j + 1];
      *reinterpret_cast<float4*>(Av) = As[t][(2 * j + t / 2) % 4], *reinterpret_cast<float4*>(Av + 4) = As[t][(2 * j + 1 + t / 2) % 4];
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const float sv = sp.get(e) * ex2_approx(dl * Av[e]) + dx * Bv[e];
        y[r] += sv * Cv[e];
        sp.set(e, sv);
      }
      sp.store(st + srow[r] * p.state.stride[0] + j * 8);
    }
    y[r] += Dv * xv[r];
    if (has(p.z)) y[r] *= silu(zv[r]);
  }
#pragma unroll
  for (int r = 0; r < R; ++r)
    if (b0 + r < p.batch) ptr<T>(p.out)[(b0 + r) * p.out.stride[0] + h * p.out.stride[1]] = from_float<T>(y[r]);
}

// Mamba-2 rows of large batches (A tied along N, N in {64, 128, 256}, the (b, h) state tile of P rows
// contiguous): a block per (head, batch row) streams its P x N tile through shared memory by cp.async, the
// 8-entry pack u = t + 128 i copied and then updated by thread t (no barrier on the state; nothing held in
// registers while it is in flight); the N / 8 lanes of a row are consecutive threads. The rows' dt x, dA,
// D x, gate and the group's B / C rows pass through shared memory (one barrier). Shared memory: the tile,
// then B, C (N floats each), then the four row values (P floats each).
template <typename TS, typename T, int N>
__global__ void __launch_bounds__(kLeanThreads) mamba2_step_kernel(StateStepParams p) {
  constexpr float kLog2e = 1.4426950408889634f;
  constexpr int kLanes = N / 8;
  extern __shared__ uint4 smem[];
  const int t = threadIdx.x, P = int(p.headdim), packs = P * kLanes;
  Raw8<TS>* tile = reinterpret_cast<Raw8<TS>*>(smem);
  float* BC = reinterpret_cast<float*>(tile + packs);  // B then C
  float* rv = BC + 2 * N;                               // [dt x, dA, D x, gate][P]
  const uint32_t h = blockIdx.x;
  const int64_t b = blockIdx.y;
  const int64_t srow = has(p.state_batch_indices) ? ptr<int>(p.state_batch_indices)[b * p.state_batch_indices.stride[0]] : b;
  TS* st = ptr<TS>(p.state) + (srow < 0 ? 0 : srow) * p.state.stride[0] + h * p.state.stride[1];
  if (srow >= 0)
    for (int u = t; u < packs; u += kLeanThreads)
#pragma unroll
      for (int w = 0; w < int(sizeof(TS) / 2); ++w) cp_async16(&tile[u].w[w], st + u * 8 + w * Pack<TS>::kN);
  const uint32_t g = p.ngroups == 1 ? 0u : h / (uint32_t(p.nheads) / uint32_t(p.ngroups));
  for (int i = t; i < 2 * N; i += kLeanThreads) {
    const TensorArg& M = i < N ? p.B : p.C;
    BC[i] = to_float(ptr<T>(M)[b * M.stride[0] + g * M.stride[1] + (i % N) * M.stride[2]]);
  }
  for (int r = t; r < P; r += kLeanThreads) {
    float dt = to_float(ptr<T>(p.dt)[b * p.dt.stride[0] + h * p.dt.stride[1] + r * p.dt.stride[2]]) +
               (has(p.dt_bias) ? ptr<float>(p.dt_bias)[h * p.dt_bias.stride[0] + r * p.dt_bias.stride[1]] : 0.f);
    if (p.softplus) dt = softplus(dt);
    const float xv = to_float(ptr<T>(p.x)[b * p.x.stride[0] + h * p.x.stride[1] + r * p.x.stride[2]]);
    const float A = ptr<float>(p.A)[h * p.A.stride[0] + r * p.A.stride[1]];
    rv[r] = dt * xv;
    rv[P + r] = exp2f(dt * A * kLog2e);
    rv[2 * P + r] = has(p.D) ? ptr<float>(p.D)[h * p.D.stride[0] + r * p.D.stride[1]] * xv : 0.f;
    rv[3 * P + r] = has(p.z) ? silu(to_float(ptr<T>(p.z)[b * p.z.stride[0] + h * p.z.stride[1] + r * p.z.stride[2]])) : 1.f;
  }
  __syncthreads();
  T* out = ptr<T>(p.out) + b * p.out.stride[0] + h * p.out.stride[1];
  if (srow < 0) {  // padding row: y = 0, state untouched
    for (int r = t; r < P; r += kLeanThreads) out[r * p.out.stride[2]] = from_float<T>(0.f);
    return;
  }
  asm volatile("cp.async.wait_all;" ::: "memory");
  // this thread's lane of every row it visits: the same B, C entries in every pass
  const int lane = t % kLanes;
  float Bv[8], Cv[8];
#pragma unroll
  for (int e = 0; e < 8; ++e) Bv[e] = BC[lane * 8 + e], Cv[e] = BC[N + lane * 8 + e];
  // the lanes of a row (whole rows leave the loop together)
  const unsigned group = kLanes == 32 ? 0xffffffffu : ((1u << kLanes) - 1) << (t % 32 / kLanes * kLanes);
  for (int u = t; u < packs; u += kLeanThreads) {
    const int row = u / kLanes;
    Raw8<TS> sp = tile[u];
    const float dx = rv[row], dA = rv[P + row];
    float y = 0.f;
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const float sv = sp.get(e) * dA + dx * Bv[e];
      y += sv * Cv[e];
      sp.set(e, sv);
    }
    sp.store(st + u * 8);
#pragma unroll
    for (int off = kLanes / 2; off > 0; off /= 2) y += __shfl_xor_sync(group, y, off, kLanes);
    if (lane == 0) out[row * p.out.stride[2]] = from_float<T>((y + rv[2 * P + row]) * rv[3 * P + row]);
  }
}

// Shared memory of mamba2_step_kernel for this call, or 0 when it does not take it (the general kernel runs):
// the narrow grids of large batches, A tied, N in {64, 128, 256}, state tiles contiguous and 16-byte aligned,
// at most 48 KB. SSM_STEP_LEAN=0 switches it off (session 5 round 1, H200: Mamba-2 b64 52.5 us vs 59.0).
inline size_t mamba2_smem(const StateStepParams& p, bool vec, bool wide) {
  const char* env = std::getenv("SSM_STEP_LEAN");
  if ((env != nullptr && env[0] == '0') || wide || !vec || has(p.dt_proj) || p.A.stride[2] != 0) return 0;
  if (!(p.dstate == 64 || p.dstate == 128 || p.dstate == 256) || p.state.stride[2] != p.dstate) return 0;
  if (p.batch > 65535 || p.nheads > (int64_t(1) << 30)) return 0;
  const int64_t tile = p.headdim * p.dstate * (p.state_dtype == DType::f32 ? 4 : 2);
  const int64_t bytes = tile + (2 * p.dstate + 4 * p.headdim) * 4;
  return bytes <= 48 * 1024 ? size_t(bytes) : 0;
}

// Batch rows a thread of mamba1_step_kernel_s5: four, or two when four leave fewer than two blocks per SM
// (session 5 round 1, H200: four 14.1 us at b64 D5120, two 15.3; mamba-130m b64 decode, D1536: two 166 us a step
// for 24 calls, four 181). SSM_STEP_M1=2 / 4 forces either (measurements).
inline int mamba1_rows(const StateStepParams& p) {
  const char* env = std::getenv("SSM_STEP_M1");
  if (env != nullptr && (env[0] == '2' || env[0] == '4')) return env[0] - '0';
  return int64_t(ceil_div(p.nheads, kLeanThreads)) * ceil_div(p.batch, 4) < 264 ? 2 : 4;
}

// SSM_STEP_M1_FORM=old: Mamba-1 rows without dt_proj on session 5's kernel (mamba1_step_kernel_s5), not
// mamba1_pair_kernel (the fallback switch).
inline bool mamba1_old() {
  const char* env = std::getenv("SSM_STEP_M1_FORM");
  return env != nullptr && env[0] == 'o';
}

// The lean kernels' form for this call, or false (the general kernel runs): Mamba-1 rows (P = 1, A per
// entry, N = 16, 16-bit state and inputs, one group, dt_proj optional: mamba1_pair_kernel, mamba1_step_kernel_s5)
// and the wide Mamba-2 rows of
// small batches (A tied, N in {64, 128, 256}: N / 16 lanes, two packs each). SSM_STEP_LEAN=0 switches
// them off.
inline bool use_lean(const StateStepParams& p, bool vec, bool wide) {
  const char* env = std::getenv("SSM_STEP_LEAN");
  if ((env != nullptr && env[0] == '0') || !vec) return false;
  const bool tied = p.A.stride[2] == 0;
  // dt_proj folded in: mamba1_step_kernel_s5 only (its dt_proj rows read in 16-byte packs), past batch 4 (the
  // small batches keep the general kernel's dt_proj mode)
  if (has(p.dt_proj) && (tied || p.batch <= 4 || p.dt_rank % 8 != 0 || p.dt_rank > kMaxProjRank ||
                         !rows_vectorizable<uint16_t>(p.dt_proj, 1)))
    return false;
  if (p.batch > 65535 || p.nheads > (p.headdim == 1 ? int64_t(1) << 30 : 65535) || p.headdim > (1 << 20)) return false;
  if (!tied) {
    return p.headdim == 1 && p.dstate == 16 && p.state_dtype != DType::f32 && p.dtype != DType::f32 &&
           rows_vectorizable<float>(p.A, 2) && p.ngroups == 1;
  }
  return wide && p.headdim > 1 && (p.dstate == 64 || p.dstate == 128 || p.dstate == 256);
}

// lean_kernel over wide rows (K lanes a row, two packs each)
template <typename TS, typename T, int K>
void launch_wide(const StateStepParams& p, cudaStream_t stream) {
  const dim3 grid(ceil_div(p.headdim * K, kLeanThreads), unsigned(p.nheads), unsigned(p.batch));
  if (has(p.state_batch_indices)) return lean_kernel<TS, T, K, 2, false><<<grid, kLeanThreads, 0, stream>>>(p);
  pdl_launch(lean_kernel<TS, T, K, 2, true>, grid, dim3(kLeanThreads), 0, stream, p);
}

template <typename TS, typename T>
void launch_lean(const StateStepParams& p, cudaStream_t stream) {
  // grid: (row tiles, heads (P > 1) or 1, batch groups of R)
  auto go = [&](auto kernel, int K, int R) {
    const int64_t rows = p.headdim == 1 ? p.nheads : p.headdim;
    const dim3 grid(ceil_div(rows * K, kLeanThreads), p.headdim == 1 ? 1 : unsigned(p.nheads), ceil_div(p.batch, R));
    kernel<<<grid, kLeanThreads, 0, stream>>>(p);
  };
  if constexpr (sizeof(TS) == 2 && sizeof(T) == 2) {  // float32 rows would not fit in registers
    if (p.A.stride[2] != 0) {
      SSM_BOOL_SWITCH(has(p.dt_proj), kProj, [&] {
        // defaults (session 7 round 1, H200): without dt_proj mamba1_pair_kernel (Mamba-1 b64 step 9.2 us; session
        // 6's coal form 11.9, session 5's kernel 12.2, two batch rows a warp 10.4); with dt_proj the session-5
        // kernel's FFMA dot (mamba-130m b64: 6.9 us a call in session 5; session 6's tensor-core dot 8.0)
        if (!kProj && !mamba1_old()) {
          const dim3 grid(ceil_div(p.nheads, kM1Ch), ceil_div(p.batch, kM1Rows));
          // PDL (kPdl) on calls without state_batch_indices (which the previous kernel could write)
          if (has(p.state_batch_indices)) return mamba1_pair_kernel<TS, T, false><<<grid, kM1Threads, 0, stream>>>(p);
          return pdl_launch(mamba1_pair_kernel<TS, T, true>, grid, dim3(kM1Threads), 0, stream, p);
        }
        if (mamba1_rows(p) == 2) return go(mamba1_step_kernel_s5<TS, T, 2, kProj>, 1, 2);
        go(mamba1_step_kernel_s5<TS, T, 4, kProj>, 1, 4);
      });
      return;
    }
  }
  // wide rows: two packs a lane, N / 16 lanes (faster than one pack a lane, session 4 round 2)
  if (p.dstate == 64) return launch_wide<TS, T, 4>(p, stream);
  if (p.dstate == 128) return launch_wide<TS, T, 8>(p, stream);
  launch_wide<TS, T, 16>(p, stream);
}

}  // namespace ssm::cuda::step

namespace ssm::cuda::step {

template <typename TS, typename T>
void launch_mamba2(const StateStepParams& p, size_t smem, cudaStream_t stream) {
  const dim3 grid(unsigned(p.nheads), unsigned(p.batch));
  if (p.dstate == 64) return mamba2_step_kernel<TS, T, 64><<<grid, kLeanThreads, smem, stream>>>(p);
  if (p.dstate == 128) return mamba2_step_kernel<TS, T, 128><<<grid, kLeanThreads, smem, stream>>>(p);
  mamba2_step_kernel<TS, T, 256><<<grid, kLeanThreads, smem, stream>>>(p);
}

}  // namespace ssm::cuda::step
