// SSD steps 1 and 2 in one kernel for half / bfloat16 with N <= 128 and no sequence changes (no seq_idx,
// no cu_seqlens): per (batch row, head, 64-wide P tile) one block walks the row's chunks in order with the
// state in its accumulators (warp w: P rows 16w..16w+15, all N), storing each chunk's entering state
// H_in (element type, for the chunk output) before it decays the state by exp(cs_last) and adds the
// chunk's X^T diag(Δ exp(cs_last - cs_t)) B on tensor cores; the x and B token tiles stream through
// kScanStages cp.async stages across chunk boundaries, and each chunk's raw dt is loaded one chunk ahead.
// Removes the float32 chunk states' round trip (written by chunk_state, read by state_passing) and a
// launch. SSM_SSD_FWD_FUSED=0 keeps the two kernels.
#pragma once
#include "cuda/ssd_chunk_state_heads.cuh"

namespace ssm::cuda::ssd {

constexpr int kScanStages = 3;

template <typename T>
size_t state_scan_smem(int N) {
  const int ldb = (N + 15) / 16 * 16 + 8;
  return align128(sizeof(ChunkTokens)) + align128(kMaxChunk * sizeof(float)) +
         kScanStages * (align128(kTile * kLd * sizeof(T)) + align128(kTile * ldb * sizeof(T)));
}

// The chunk's tokens from its raw dt values (thread i holds tokens i, i + 128): Δ (1 with inject_unit),
// the inclusive cumsum of Δ·A, and the state weights wt = Δ exp(cs_last - cs_t); returns exp(cs_last).
// Block-wide (syncs); nvalid >= 1 tokens.
__device__ __forceinline__ float scan_tokens(const SsdParams& p, const float (&raw)[2], float A, int h, int nvalid,
                                             ChunkTokens& tok, float* wt) {
  const float bias = has(p.dt_bias) ? ptr<float>(p.dt_bias)[h * p.dt_bias.stride[0]] : 0.f;
#pragma unroll
  for (int u = 0; u < 2; ++u) {
    const int i = int(threadIdx.x) + u * kThreads;
    float d = raw[u] + bias;
    if (p.dt_softplus) d = softplus(d);
    d = i < nvalid ? fminf(fmaxf(d, p.dt_lo), p.dt_hi) : 0.f;
    tok.dt[i] = p.inject_unit ? (i < nvalid ? 1.f : 0.f) : d;
    tok.cs[i] = d * A;
  }
  __syncthreads();
  block_scan(tok.cs, tok.ftot);
  const float last = tok.cs[nvalid - 1];
  for (int k = threadIdx.x; k < kMaxChunk; k += kThreads) wt[k] = tok.dt[k] * __expf(last - tok.cs[k]);
  return __expf(last);
}

// Raw dt of the chunk starting at token c0 (0 past the row's end).
__device__ __forceinline__ void load_raw_dt(const SsdParams& p, int64_t b, int h, int64_t c0, int Q, float (&raw)[2]) {
#pragma unroll
  for (int u = 0; u < 2; ++u) {
    const int64_t t = c0 + threadIdx.x + u * kThreads;
    raw[u] = threadIdx.x + u * kThreads < Q && t < p.seqlen
                 ? ptr<float>(p.dt)[b * p.dt.stride[0] + t * p.dt.stride[1] + h * p.dt.stride[2]]
                 : 0.f;
  }
}

// The accumulators (P rows prow, prow + 8; N columns 8 j + 2 (lane % 4) + e) as element-type pairs into
// the chunk's H_in (rows of N), or as float32 into the final states.
template <typename T>
__device__ __forceinline__ void store_hin(T* dst, const float (&acc)[16][4], int P, int N, int prow) {
  const int c2 = 2 * int(threadIdx.x & 3);
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const int pp = prow + 8 * hf;
    if (pp >= P) continue;
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      const int nn = 8 * j + c2;
      if (nn + 1 < N && N % 2 == 0) {
        *reinterpret_cast<unsigned*>(dst + int64_t(pp) * N + nn) = pack2<T>(acc[j][2 * hf], acc[j][2 * hf + 1]);
      } else {
        if (nn < N) dst[int64_t(pp) * N + nn] = from_float<T>(acc[j][2 * hf]);
        if (nn + 1 < N) dst[int64_t(pp) * N + nn + 1] = from_float<T>(acc[j][2 * hf + 1]);
      }
    }
  }
}

__device__ __forceinline__ void acc_from_states(float (&acc)[16][4], const SsdParams& p, int64_t b, int h, int P,
                                                int N, int prow, bool load) {
  const int c2 = 2 * int(threadIdx.x & 3);
#pragma unroll
  for (int hf = 0; hf < 2; ++hf)
#pragma unroll
    for (int j = 0; j < 16; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int pp = prow + 8 * hf, nn = 8 * j + c2 + e;
        acc[j][2 * hf + e] = load && pp < P && nn < N ? at4<float>(p.initial_states, b, h, pp, nn) : 0.f;
      }
}

__device__ __forceinline__ void acc_to_final(const float (&acc)[16][4], const SsdParams& p, int64_t b, int h, int P,
                                             int N, int prow) {
  const TensorArg& f = p.final_states;
  const int c2 = 2 * int(threadIdx.x & 3);
#pragma unroll
  for (int hf = 0; hf < 2; ++hf)
#pragma unroll
    for (int j = 0; j < 16; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int pp = prow + 8 * hf, nn = 8 * j + c2 + e;
        if (pp < P && nn < N)
          ptr<float>(f)[b * f.stride[0] + h * f.stride[1] + pp * f.stride[2] + nn * f.stride[3]] = acc[j][2 * hf + e];
      }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) state_scan_kernel(SsdParams p, Layout w) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int P = int(p.headdim), N = int(p.dstate), Q = int(p.chunk), Np = (N + 15) / 16 * 16, ldb = Np + 8;
  const size_t xb = align128(kTile * kLd * sizeof(T)), sb = xb + align128(kTile * ldb * sizeof(T));
  ChunkTokens& tok = *reinterpret_cast<ChunkTokens*>(smem);
  float* wt = reinterpret_cast<float*>(smem + align128(sizeof(ChunkTokens)));
  unsigned char* stages = smem + align128(sizeof(ChunkTokens)) + align128(kMaxChunk * sizeof(float));
  const int p0 = int(blockIdx.x) * kTile, h = blockIdx.y, g = h / int(p.nheads / p.ngroups), nq = Q / kTile;
  const int64_t b = blockIdx.z, L = p.seqlen, nt = (L + kTile - 1) / kTile;  // token tiles of the row
  const int64_t xr = p.x.stride[1], br = p.B.stride[1];
  const T* xrow = ptr<T>(p.x) + b * p.x.stride[0] + h * p.x.stride[2] + p0 * p.x.stride[3];
  const T* brow = ptr<T>(p.B) + b * p.B.stride[0] + g * p.B.stride[2];
  auto issue = [&](int64_t f) {  // token tile f (x and B) into stage f % kScanStages
    unsigned char* st = stages + (f % kScanStages) * sb;
    const int rows = int(min(int64_t(kTile), L - f * kTile));
    issue_tile<T>(reinterpret_cast<T*>(st), kLd, kTile, xrow + f * kTile * xr, xr, p.x.stride[3], rows, P - p0);
    issue_tile<T>(reinterpret_cast<T*>(st + xb), ldb, Np, brow + f * kTile * br, br, p.B.stride[3], rows, N);
  };
#pragma unroll
  for (int f = 0; f < kScanStages - 1; ++f) {
    if (f < nt) issue(f);
    cp_async_commit();
  }
  const float A = ptr<float>(p.A)[h * p.A.stride[0]];
  const int r0 = int(threadIdx.x >> 5) * 16, prow = p0 + r0 + (int(threadIdx.x & 31) >> 2), npair = Np / 16;
  float raw[2];
  load_raw_dt(p, b, h, 0, Q, raw);
  float acc[16][4];
  acc_from_states(acc, p, b, h, P, N, prow, has(p.initial_states));
  T* hin = reinterpret_cast<T*>(ptr<float>(p.workspace) + w.hin);
#pragma unroll 1
  for (int64_t f = 0; f < nt; ++f) {
    const int64_t c = f / nq;
    const int kt = int(f % nq);
    if (kt == 0) {  // chunk c: store H_in(c), decay the state by the whole chunk
      const int nvalid = int(min(int64_t(Q), L - c * Q));
      const float decay = scan_tokens(p, raw, A, h, nvalid, tok, wt);
      if (c + 1 < w.nchunks) load_raw_dt(p, b, h, (c + 1) * Q, Q, raw);
      store_hin(hin + ((b * w.nchunks + c) * p.nheads + h) * int64_t(P) * N, acc, P, N, prow);
#pragma unroll
      for (int j = 0; j < 16; ++j) acc[j][0] *= decay, acc[j][1] *= decay, acc[j][2] *= decay, acc[j][3] *= decay;
    }
    if (f + kScanStages - 1 < nt) issue(f + kScanStages - 1);
    cp_async_commit();
    cp_async_wait<kScanStages - 1>();  // tile f landed
    __syncthreads();
    const unsigned char* st = stages + (f % kScanStages) * sb;
    state_tile_wide<T>(acc, reinterpret_cast<const T*>(st), reinterpret_cast<const T*>(st + xb), ldb,
                       wt + kt * kTile, r0, npair);
    __syncthreads();  // the stage, tok and wt are free again
  }
  if (has(p.final_states)) acc_to_final(acc, p, b, h, P, N, prow);
}

// The fused state scan (SSM_SSD_FWD_FUSED=0: chunk_state + state_passing), where it applies.
inline bool fused_enabled() { return ssd_switch("SSM_SSD_FWD_FUSED", false); }

template <typename T>
bool launch_fused_states(const SsdParams& p, const Layout& w, cudaStream_t s) {
  if constexpr (std::is_same<T, float>::value) {
    return false;
  } else {
    if (!fused_enabled() || p.dstate > 2 * kTile || has(p.seq_idx) || has(p.cu_seqlens)) return false;
    const dim3 grid(ceil_div(p.headdim, kTile), unsigned(p.nheads), unsigned(p.batch));
    launch(state_scan_kernel<T>, grid, state_scan_smem<T>(int(p.dstate)), s, p, w);
    return true;
  }
}

}  // namespace ssm::cuda::ssd
