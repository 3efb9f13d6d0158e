// SSD step 4: the output of one 64-token query tile of a chunk for one 64-wide slice of P:
// Y = sum over key tiles up to the diagonal of ((C_q B_k^T) ∘ mask) X_k   (mask[t, s] =
// exp(cs_t - cs_s) Δ_s for s <= t in the same run) + diag(exp(cs)) C_q H_in^T on the first run,
// + D x, then y·silu(z). Runs starting inside the chunk with a cu_seqlens initial state add
// exp(cs_t - cs_before_run) C_t · init (FMA; only that case). Float32 runs this kernel; half and
// bfloat16 the register-fragment ones (ssd_chunk_output_staged.cuh holds the launcher).
#pragma once
#include "cuda/ssd_chunk_state.cuh"

namespace ssm::cuda::ssd {

__host__ __device__ inline int round16(int n) { return (n + 15) / 16 * 16; }

template <typename T>
size_t chunk_scan_smem(int N) {
  const int ldn = round16(N) + 8;
  return align128(sizeof(ChunkTokens)) + 2 * align128(kTile * ldn * sizeof(T)) +
         2 * align128(kTile * kLd * sizeof(T)) + kTile * kLdF * sizeof(float);
}

// The y epilogue of element (t, p) given the accumulated scan output `acc`: the value stored.
template <typename T>
__device__ float y_out(const SsdParams& p, const ChunkTokens& tok, int64_t b, int h, int g, int64_t c0, int i_chunk,
                       int pp, float acc, float xv) {
  const int64_t t = c0 + i_chunk;
  float y = acc;
  if (has(p.D)) y += ptr<float>(p.D)[h * p.D.stride[0] + pp * p.D.stride[1]] * xv;
  const int run = tok.run[i_chunk];
  if (run > 0 && has(p.cu_seqlens) && has(p.initial_states)) {
    const int seg = tok.seg[i_chunk];
    float dot = 0.f;
    for (int n = 0; n < p.dstate; ++n) dot += at4<float>(p.initial_states, seg, h, pp, n) * at4<T>(p.C, b, t, g, n);
    y += __expf(tok.cs[i_chunk] - cs_before(tok, tok.runstart[run])) * dot;
  }
  if (has(p.z)) y *= silu(at4<T>(p.z, b, t, h, pp));
  return y;
}

template <typename T>
__device__ T* y_ptr(const SsdParams& p, int64_t b, int64_t t, int h, int pp) {
  return ptr<T>(p.out) + b * p.out.stride[0] + t * p.out.stride[1] + h * p.out.stride[2] + pp * p.out.stride[3];
}

template <typename T>
__device__ void write_y(const SsdParams& p, const ChunkTokens& tok, int64_t b, int h, int g, int64_t c0, int i_chunk,
                        int pp, float acc, float xv) {
  *y_ptr<T>(p, b, c0 + i_chunk, h, pp) = from_float<T>(y_out<T>(p, tok, b, h, g, c0, i_chunk, pp, acc, xv));
}

template <typename T>
__global__ void __launch_bounds__(kThreads) chunk_scan_kernel(SsdParams p, Layout w) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int P = int(p.headdim), N = int(p.dstate), Q = int(p.chunk), Np = round16(N), ldn = Np + 8;
  unsigned char* at = smem;
  ChunkTokens& tok = *reinterpret_cast<ChunkTokens*>(at);
  T* cq = reinterpret_cast<T*>(at += align128(sizeof(ChunkTokens)));
  T* bk = reinterpret_cast<T*>(at += align128(kTile * ldn * sizeof(T)));
  T* xk = reinterpret_cast<T*>(at += align128(kTile * ldn * sizeof(T)));
  T* ss = reinterpret_cast<T*>(at += align128(kTile * kLd * sizeof(T)));
  float* sf = reinterpret_cast<float*>(at += align128(kTile * kLd * sizeof(T)));
  const int nq = Q / kTile, ntp = (P + kTile - 1) / kTile;
  const int qt = blockIdx.x % nq, pt = blockIdx.x / nq % ntp, p0 = pt * kTile;
  const int64_t c = blockIdx.x / nq / ntp, b = blockIdx.z, c0 = c * Q, L = p.seqlen;
  const int h = blockIdx.y, g = h / int(p.nheads / p.ngroups), t0 = qt * kTile;
  if (c0 + t0 >= L) return;
  load_chunk(p, b, h, c0, Q, tok);
  const int rows_left = int(min(int64_t(Q), L - c0));  // valid tokens of the chunk
  const T* bsrc = ptr<T>(p.B) + b * p.B.stride[0] + g * p.B.stride[2] + c0 * p.B.stride[1];
  const T* xsrc = ptr<T>(p.x) + b * p.x.stride[0] + h * p.x.stride[2] + p0 * p.x.stride[3] + c0 * p.x.stride[1];
  const T* csrc = ptr<T>(p.C) + b * p.C.stride[0] + g * p.C.stride[2] + (c0 + t0) * p.C.stride[1];
  load_tile<T>(cq, ldn, Np, csrc, p.C.stride[1], p.C.stride[3], rows_left - t0, N);

  Tile<T> acc;
  acc.zero();
  for (int kt = 0; kt <= qt; ++kt) {
    const int s0 = kt * kTile;
    load_tile<T>(bk, ldn, Np, bsrc + s0 * p.B.stride[1], p.B.stride[1], p.B.stride[3], rows_left - s0, N);
    load_tile<T>(xk, kLd, kTile, xsrc + s0 * p.x.stride[1], p.x.stride[1], p.x.stride[3], rows_left - s0, P - p0);
    __syncthreads();
    Tile<T> cb;
    cb.zero();
    cb.template mma<true, false>(cq, ldn, bk, ldn, Np);  // (C B^T)(t, s): B^T(n, s) = bk[s][n]
    cb.store(sf, kLdF);
    __syncthreads();
    for (int e = threadIdx.x; e < kTile * kTile; e += kThreads) {
      const int i = e / kTile, j = e % kTile, ti = t0 + i, sj = s0 + j;
      const bool keep = sj <= ti && ti < rows_left && tok.run[sj] == tok.run[ti];
      ss[i * kLd + j] = from_float<T>(keep ? sf[i * kLdF + j] * __expf(tok.cs[ti] - tok.cs[sj]) * tok.dt[sj] : 0.f);
    }
    __syncthreads();
    acc.template mma<true, true>(ss, kLd, xk, kLd, kTile);
    if (kt < qt) __syncthreads();  // the last x tile stays: it holds the query tokens' x
  }
  // the state entering the chunk, seen by its first run: bk[p][n] = H_in[p0 + p][n]
  const T* hin = reinterpret_cast<const T*>(ptr<float>(p.workspace) + w.hin) +
                 ((b * w.nchunks + c) * p.nheads + h) * int64_t(P) * N + int64_t(p0) * N;
  __syncthreads();
  load_tile<T>(bk, ldn, Np, hin, N, 1, P - p0, N);
  for (int e = threadIdx.x; e < kTile * Np; e += kThreads) {
    const int i = e / Np, n = e % Np, ti = t0 + i;
    const float scale = ti < rows_left && tok.run[ti] == 0 ? __expf(tok.cs[ti]) : 0.f;
    cq[i * ldn + n] = from_float<T>(to_float(cq[i * ldn + n]) * scale);
  }
  __syncthreads();
  acc.template mma<true, false>(cq, ldn, bk, ldn, Np);  // H_in^T(n, p) = bk[p][n]
  acc.store(sf, kLdF);
  __syncthreads();
  for (int e = threadIdx.x; e < kTile * kTile; e += kThreads) {
    const int i = e / kTile, j = e % kTile;
    if (t0 + i < rows_left && p0 + j < P)
      write_y<T>(p, tok, b, h, g, c0, t0 + i, p0 + j, sf[i * kLdF + j], to_float(xk[i * kLd + j]));
  }
}

}  // namespace ssm::cuda::ssd
