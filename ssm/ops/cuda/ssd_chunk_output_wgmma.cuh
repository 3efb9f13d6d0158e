// SSD step 4 on Hopper's warpgroup MMA (session 10): the exact staged chunk output (chunk_scan_staged_kernel<T,
// float, true, false>: same blocks, stages, C B^T tiles, decay and epilogue) with both products on wgmma m64n64k16
// (float32 accumulators). The block's 4 warps are one warpgroup: S X_k takes S_hi / S_lo from registers (the
// accumulator-to-A-fragment mapping of mma.sync) and X_k from shared memory by descriptor, 8 wgmma per key tile
// instead of 4 x 64 HMMA + 16 ldmatrix per warp; C_q H_in^T with C_q and H_in's half tiles both by descriptor (no A
// registers). The X_k, C_q and H_in tiles are stored 64 x 128 bytes with the 128-byte swizzle (ssd_wgmma.cuh), X_k
// [token][p] (B transposed), C_q [token][n] and H_in [p][n] in 64-column halves. Round 1b (H200, B8 L2048 H32): 167 us
// against 183 (staged).
// Half / bfloat16, N <= 128, H_in not split, sm_90a (launch_chunk_output_wgmma checks).
#pragma once
#include "cuda/ssd_chunk_output_staged.cuh"
#include "cuda/ssd_wgmma.cuh"

namespace ssm::cuda::ssd {

// acc += (S_hi + S_lo) X over the 64 keys of a tile (X swizzled [token][p]); S zero past the causal limit.
template <typename T>
__device__ __forceinline__ void wgmma_sx_split(float (&acc)[8][4], const float (&s)[8][4], const T* xk) {
  unsigned hi[4][4], lo[4][4];
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    split2<T>(s[2 * kk][0], s[2 * kk][1], hi[kk][0], lo[kk][0]);
    split2<T>(s[2 * kk][2], s[2 * kk][3], hi[kk][1], lo[kk][1]);
    split2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1], hi[kk][2], lo[kk][2]);
    split2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3], hi[kk][3], lo[kk][3]);
  }
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) fence_a(hi[kk]), fence_a(lo[kk]);
  const uint64_t dx = sw_desc(smem_addr(xk));
  fence_acc(acc);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {  // 16 keys = 16 rows of 128 bytes
    const uint64_t d = dx + uint64_t(kk * 16 * 128 >> 4);
    wgmma_64x64<T, true>(acc, lo[kk], d);
    wgmma_64x64<T, true>(acc, hi[kk], d);
  }
  wgmma_commit();
  wgmma_wait<0>();
  fence_acc(acc);
}

// hc += C_q H^T over K = 16 kSteps, C_q and H both swizzled [row][n] in 64-column halves 8 KB apart (zero past N),
// both by descriptor: no A registers (the ldmatrix form holds 32 more registers at the pass's peak).
template <typename T, int kSteps>
__device__ __forceinline__ void wgmma_cq(float (&d)[8][4], const T* cq, const T* m) {
  const uint64_t dc = sw_desc(smem_addr(cq)), dm = sw_desc(smem_addr(m));
  fence_acc(d);
  wgmma_fence();
  wgmma_64x64_ss<T, true>(d, dc, dm);
#pragma unroll
  for (int k = 1; k < kSteps; ++k) {
    const uint64_t off = ((k / 4) * kTile * kTile * 2 + (k % 4) * 32) >> 4;
    wgmma_64x64_ss<T, true>(d, dc + off, dm + off);
  }
  wgmma_commit();
  wgmma_wait<0>();
  fence_acc(d);
}

// acc(t, p) += D_p x(t, p) from the swizzled query tile (add_dx's).
template <typename T>
__device__ __forceinline__ void add_dx_sw(float (&acc)[8][4], const float* ds, const T* xq, int r0) {
  const int g8 = int(threadIdx.x & 31) >> 2, lc = 2 * int(threadIdx.x & 3);
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const float2 d = *reinterpret_cast<const float2*>(ds + 8 * j + lc);
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const unsigned xv = *reinterpret_cast<const unsigned*>(xq + sw_off(r0 + g8 + 8 * hf, 8 * j + lc));
      acc[j][2 * hf] += d.x * to_float(reinterpret_cast<const T*>(&xv)[0]);
      acc[j][2 * hf + 1] += d.y * to_float(reinterpret_cast<const T*>(&xv)[1]);
    }
  }
}

// masked_sx_tiled with the product on wgmma: the diagonal tile runs all 4 key steps (S is zero past each row).
template <typename T>
__device__ __forceinline__ void masked_sx_wgmma(float (&acc)[8][4], float (&s)[8][4], const T* xk,
                                                const ChunkTokens& tok, const float* kf, const float (&q2)[2],
                                                const int (&trow)[2], float ref, int kt, int qt, int lim, int rows_left,
                                                bool runs, bool factored, bool diag_kf) {
  const bool diag = kt == qt && !runs;
  if (runs)
    decay_mask(s, tok, trow, kt * kTile, rows_left);
  else if (diag && diag_kf)
    scale_keys_diag(s, kf, kt * kTile, trow);
  else if (diag)
    decay_lean<true>(s, tok, q2, trow, kt * kTile, lim);
  else if (factored)
    scale_keys(s, kf, kt * kTile);
  else
    decay_lean<false>(s, tok, q2, trow, kt * kTile, lim);
  if (diag && factored && !diag_kf) scale_rows(acc, q2, ref);
  wgmma_sx_split<T>(acc, s, xk);
  if (diag && diag_kf) scale_rows(acc, q2, ref);
}

// Bytes of a stage's buffer pair: the swizzled X_k tile (8 KB), then the C B^T tile (16 KB; or H_in's second half
// tile in its first 8 KB); both 1024-byte aligned from the aligned base.
constexpr size_t kWgPair = kTile * kTile * 2 + kTile * kTile * sizeof(float);

// Shared memory: the alignment slack, two buffer pairs, C_q, tokens, the key factors and D of the P tile.
// C_q's two swizzled 64-column halves.
constexpr size_t kWgCq = 2 * kTile * kTile * 2;

// Shared memory: the alignment slack, two buffer pairs, C_q, tokens, the key factors and D of the P tile.
inline size_t chunk_scan_wgmma_smem() {
  return 1024 + 2 * kWgPair + kWgCq + align128(sizeof(ChunkTokens)) + align128((kMaxChunk + kTile) * sizeof(float));
}

template <typename T>
__global__ void __launch_bounds__(kThreads, 3) chunk_scan_wgmma_kernel(SsdParams p, Layout w) {
#ifdef SSM_WGMMA
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char* smem = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);  // swizzle atoms 1024-aligned
  const int P = int(p.headdim), N = int(p.dstate), Q = int(p.chunk), Np = round16(N);
  auto xbuf = [&](int i) { return reinterpret_cast<T*>(smem + (i & 1) * kWgPair); };
  auto cbuf = [&](int i) { return reinterpret_cast<float*>(smem + (i & 1) * kWgPair + kTile * kTile * 2); };
  T* cq = reinterpret_cast<T*>(smem + 2 * kWgPair);
  ChunkTokens& tok = *reinterpret_cast<ChunkTokens*>(reinterpret_cast<unsigned char*>(cq) +
                                                     kWgCq);
  float* kf = reinterpret_cast<float*>(reinterpret_cast<unsigned char*>(&tok) + align128(sizeof(ChunkTokens)));
  float* ds = kf + kMaxChunk;  // D of the P tile
  const int nq = Q / kTile, nqp = (nq + 1) / 2, ntp = (P + kTile - 1) / kTile;
  const int qp = blockIdx.x % nqp, pt = blockIdx.x / nqp % ntp, p0 = pt * kTile;
  const int64_t c = blockIdx.x / nqp / ntp, b = blockIdx.z, c0 = c * Q, L = p.seqlen;
  const int h = blockIdx.y, g = h / int(p.nheads / p.ngroups);
  if (c0 + qp * kTile >= L) return;
  const int rows_left = int(min(int64_t(Q), L - c0));  // valid tokens of the chunk
  // the block's query tiles: qp and nq - 1 - qp (nq + 1 key tiles together: balanced blocks)
  const int q_last = nq - 1 - qp, npass = q_last != qp && c0 + q_last * kTile < L ? 2 : 1;
  const int64_t xs1 = p.x.stride[1];
  const T* xsrc = ptr<T>(p.x) + b * p.x.stride[0] + h * p.x.stride[2] + p0 * p.x.stride[3] + c0 * xs1;
  const T* csrc = ptr<T>(p.C) + b * p.C.stride[0] + g * p.C.stride[2] + c0 * p.C.stride[1];
  const T* hin = reinterpret_cast<const T*>(ptr<float>(p.workspace) + w.hin) +
                 ((b * w.nchunks + c) * p.nheads + h) * int64_t(P) * N + int64_t(p0) * N;
  const float* cb = ptr<float>(p.workspace) + w.cb + ((b * w.nchunks + c) * p.ngroups + g) * int64_t(Q) * Q;
  const int warp = int(threadIdx.x >> 5), r0 = warp * 16, g8 = int(threadIdx.x & 31) >> 2;
  const bool pairs = P % 2 == 0 && pair_rows(p.out) && (!has(p.z) || pair_rows(p.z));
  // key tile k of query tile q's pass (X_k and the tiled C B^T rows of q) into buffer pair i
  auto issue_key = [&](int i, int q, int k) {
    const int s1 = k * kTile;
    issue_sw<T>(xbuf(i), xsrc + s1 * xs1, xs1, p.x.stride[3], rows_left - s1, P - p0);
    issue_cb_tiled(cbuf(i), cb + (q * nq + k) * kTile * kTile);
  };
  auto issue_hin = [&](int i) {  // H_in's half tiles ([p][n], n < 64 and n >= 64) into pair i
    issue_sw<T>(xbuf(i), hin, N, 1, P - p0, min(N, kTile));
    if (N > kTile) issue_sw<T>(reinterpret_cast<T*>(cbuf(i)), hin + kTile, N, 1, P - p0, N - kTile);
  };
  auto issue_c = [&](int q) {  // C_q's halves, read by the pass's last stage
    const T* src = csrc + q * kTile * p.C.stride[1];
    issue_sw<T>(cq, src, p.C.stride[1], p.C.stride[3], rows_left - q * kTile, min(N, kTile));
    if (N > kTile)
      issue_sw<T>(cq + kTile * kTile, src + kTile * p.C.stride[3], p.C.stride[1], p.C.stride[3], rows_left - q * kTile,
                  N - kTile);
  };
  auto landed = [&]() {  // this thread's copies done and visible to wgmma, then every thread's
    cp_async_wait<0>();
    fence_async_smem();
    __syncthreads();
  };
  const bool copied = !has(p.seq_idx) && !has(p.cu_seqlens);  // no runs: Δ / cs from the tokens kernel
  if (copied) {
    issue_tokens(p, w, b, h, c, tok);
    cp_async_commit();
  }
  issue_c(qp);
  issue_key(0, qp, 0);
  cp_async_commit();
  prefetch_z<T>(p, b, h, c0, {qp, q_last}, npass, rows_left, p0);
  for (int k = threadIdx.x; k < kTile; k += kThreads)  // read after load_chunk's barriers
    ds[k] = has(p.D) && p0 + k < P ? ptr<float>(p.D)[h * p.D.stride[0] + (p0 + k) * p.D.stride[1]] : 0.f;
  if (copied) {
    cp_async_wait<1>();  // the tokens (C_q and the first key tile may still be in flight)
    __syncthreads();
  } else {
    load_chunk(p, b, h, c0, Q, tok);
  }
  const bool runs = tok.run[rows_left - 1] != 0;  // a sequence changes inside the chunk
  const bool factored = !runs && p.dt_lo >= 0.f;
  int base = 0;  // the buffer pair of the pass's first key tile
#pragma unroll 1
  for (int pass = 0; pass < npass; ++pass) {
    const int qt = pass == 0 ? qp : q_last, t0 = qt * kTile;
    const float ref = cs_before(tok, t0) * kLog2e;  // r, in log2 units
    // the diagonal tile's keys by key factors (bfloat16 within 2^±64: chunk_scan_staged_kernel's test)
    const bool diag_kf = std::is_same<T, __nv_bfloat16>::value && factored &&
                         fabsf(ref - tok.cs[t0 + kTile - 1] * kLog2e) < 64.f;
    const int kf_end = diag_kf ? t0 + kTile : t0;
    if (factored)  // read after the key loop's first barrier (the previous pass's reads are done)
      for (int k = threadIdx.x; k < kf_end; k += kThreads) kf[k] = ex2(ref - tok.cs[k] * kLog2e) * tok.dt[k];
    const int trow[2] = {t0 + r0 + g8, t0 + r0 + g8 + 8};  // the thread's two query tokens
    const float q2[2] = {tok.cs[trow[0]] * kLog2e, tok.cs[trow[1]] * kLog2e};
    float acc[8][4] = {};
    for (int kt = 0; kt <= qt; ++kt) {
      landed();  // key tile kt landed; every warp is done with the previous stage's buffers and C_q
      if (kt < qt) {
        issue_key(base + kt + 1, qt, kt + 1);
        if (kt == 0 && pass > 0) issue_c(qt);
      } else {  // H_in into the free pair
        issue_hin(base + qt + 1);
      }
      cp_async_commit();
      const int lim = kt == qt ? warp : 3;  // the diagonal tile: keys up to the warp's last row
      float s[8][4];
      cb_from_quads(s, cbuf(base + kt), r0, lim);
      masked_sx_wgmma<T>(acc, s, xbuf(base + kt), tok, kf, q2, trow, ref, kt, qt, lim, rows_left, runs, factored,
                         diag_kf);
    }
    const bool general = !pairs || (runs && has(p.cu_seqlens) && has(p.initial_states));
    add_dx_sw<T>(acc, ds, xbuf(base + qt), r0);  // the diagonal key tile is the query tile
    landed();  // H_in landed; the diagonal tile's pair is free
    if (pass + 1 < npass) {  // the next pass's first key tile
      issue_key(base + qt, q_last, 0);
      cp_async_commit();
    }
    float e[2];  // exp(cs_t) on the chunk's first run, else 0
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) e[hf] = trow[hf] < rows_left && tok.run[trow[hf]] == 0 ? ex2(q2[hf]) : 0.f;
    float hc[8][4] = {};
    if (Np > kTile)  // (H_in's second half tile 8 KB after the first: cbuf is xbuf + 8 KB)
      wgmma_cq<T, 8>(hc, cq, xbuf(base + qt + 1));
    else
      wgmma_cq<T, 4>(hc, cq, xbuf(base + qt + 1));
    add_scaled(acc, hc, e);
    if (general) {
      store_y_general<T>(p, tok, acc, nullptr, b, h, g, c0, trow, t0, rows_left, p0);
    } else {
      unsigned zv[2][8];
      load_z<T>(p, b, h, c0, trow, rows_left, p0, zv);
      if (has(p.z))
        store_y_pred<T, true>(p, acc, zv, b, h, c0, trow, rows_left, p0);
      else
        store_y_pred<T, false>(p, acc, zv, b, h, c0, trow, rows_left, p0);
    }
    base += qt;  // the next pass's first key tile: in the diagonal tile's pair
  }
#else
  __trap();  // built without sm_90a: launch_chunk_output_wgmma never launches it
#endif
}

// The wgmma chunk output (with its C B^T kernel) where it applies, else false: wgmma_enabled() (an sm_90a build on a
// device of compute capability 9.0, SSM_SSD_WGMMA not 0), the exact staged form's shapes (N <= 128), no H_in split.
template <typename T>
bool launch_chunk_output_wgmma(const SsdParams& p, const Layout& w, cudaStream_t s) {
  if (p.dstate > 2 * kTile || w.split || !wgmma_enabled()) return false;
  const int N = int(p.dstate);
  const int64_t nq = p.chunk / kTile, ptiles = (p.headdim + kTile - 1) / kTile;
  const dim3 paired(unsigned(w.nchunks * ptiles * ((nq + 1) / 2)), unsigned(p.nheads), unsigned(p.batch));
  const dim3 cb_grid(unsigned(w.nchunks * nq * nq), unsigned(p.ngroups), unsigned(p.batch));
  const size_t cb_smem = 2 * align128(kTile * (round16(N) + 8) * sizeof(T));
  launch(chunk_cb_kernel<T, float, true>, cb_grid, std::max(cb_smem, size_t(kTile * kTile * sizeof(float))), s, p, w);
  launch(chunk_scan_wgmma_kernel<T>, paired, chunk_scan_wgmma_smem(), s, p, w);
  return true;
}

}  // namespace ssm::cuda::ssd
