// Selective scan (Mamba-1) forward for N == 16 with every row contiguous along L (mamba_ssm's
// (B, D, L) layout, B/C (B, G, N, L)): fwd_rows_kernel, the layout-specialized form of
// fwd_block_kernel (selective_scan_fwd_thread.cuh), also the backward's checkpoint pre-pass.
// 32 x kCh channels x 4 warps per block, warp w owning states 4w..4w+3 of channel lane of each
// half of 32 channels (kCh = 2 for 2-byte types: a B/C load serves two channels). The next
// group's rows and B/C tiles go global -> shared with cp.async during the steps (no prefetch
// registers, no runtime layout flags); offsets inside a block's rows are 32-bit. Per (n, t): FMUL,
// ex2, FMUL, 2 FFMA and half a 16-byte shared load; (dt, dt u) of 2 steps in one 16-byte load,
// the warp's partial y of 4 steps in one 16-byte store.
#pragma once
#include <cstdlib>

#include "cuda/selective_scan_thread.cuh"

namespace ssm::cuda::scan_rows {

using scan_thread::kSteps;
constexpr int kN = 16, kW = 4, kNT = kN / kW, kLanes = 32, kThreads = kLanes * kW;
constexpr int kE = kSteps / kW;        // steps per thread when staging a group (4)
constexpr int kDtuRow = 2 * kSteps + 4;  // floats per channel of (dt, dt u): 16-byte reads conflict-free
constexpr int kBcRow = kN + 4;           // floats per step of the float B / C tiles

// Switch: false (or SSM_SCAN_ROWS=0 in the environment, for A/B timing) sends every call to
// fwd_block_kernel; SSM_SCAN_ROWS=1 or 2 forces one or two channels per thread (2-byte types).
constexpr bool kEnabled = true;
inline char env_rows() {
  const char* e = std::getenv("SSM_SCAN_ROWS");
  return e ? e[0] : '\0';
}
inline bool enabled() { return kEnabled && env_rows() != '0'; }

// softplus_fast (selective_scan_thread.cuh) without branches or denormal handling: max(v, 0) +
// log1p(exp(-|v|)), the log1p a degree-9 polynomial; identity above 20.
__device__ __forceinline__ float softplus_ftz(float v) {
  constexpr float c[10] = {1.000000000e+00f, -4.999988973e-01f, 3.332966566e-01f, -2.495116740e-01f,
                           1.966101825e-01f, -1.526327431e-01f, 1.053295061e-01f, -5.626952648e-02f,
                           1.948768646e-02f, -3.163999412e-03f};
  const float t = scan_thread::ex2(-fabsf(v) * scan_thread::kLog2e);
  float q = c[9];
#pragma unroll
  for (int k = 8; k >= 0; --k) q = fmaf(q, t, c[k]);
  const float r = fmaf(t, q, fmaxf(v, 0.f));
  return v > 20.f ? v : r;
}

template <typename T>
struct alignas(kE * sizeof(T)) Quad {
  T e[kE];
};

// kBytes (4, 8 or 16) global -> shared, bytes past `valid` zero-filled.
template <int kBytes>
__device__ __forceinline__ void cp_async(void* dst, const void* src, int valid) {
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  if constexpr (kBytes == 16)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(valid) : "memory");
  else
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(d), "l"(src), "n"(kBytes), "r"(valid)
                 : "memory");
}
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

// A warp's partial y of channel c at the 4-step block starting at step i: block (i / 4 + c / 2) % 4 of
// the row, so that both the steps' stores (8 lanes, one block) and the finish's loads (2 channels, 4
// blocks) of a quarter-warp touch 32 different banks.
__device__ __forceinline__ int yp_at(int c, int i) { return c * kSteps + 4 * ((i / 4 + (c >> 1)) & 3); }

// One half of the block's channels (32; a thread's lane is one channel of each half).
template <typename T>
struct HalfShared {
  Quad<T> raw[3][kLanes][kW];           // u, delta, z of a group as loaded ([channel][step])
  float dtu[kLanes][kDtuRow];           // (dt, dt u) per channel and step
  float yp[kW][kLanes][kSteps];         // each warp's partial y, 4-step blocks swizzled (yp_at)
  float4 dz[2][kThreads];               // D u and silu(z) at each thread's staging steps
};
template <typename T>
struct BcShared {
  T bc_raw[2][kN][kSteps];              // B, C tiles as loaded ([n][step])
  float bc[2][kSteps][kBcRow];          // as float, step-major
};
template <typename T, int kCh>
struct RowsShared {
  HalfShared<T> h[kCh];
  BcShared<T> b;
};

// A (B, D, L) tensor's rows of the block's channels: uniform root plus this thread's 32-bit offset.
template <typename T>
struct Rows {
  T* root = nullptr;
  int off = 0;  // channel sc (clamped), step si
  __device__ void init(const TensorArg& t, int64_t b, int64_t d0, int c, int si) {
    root = ptr<T>(t) + b * t.stride[0] + d0 * t.stride[1];
    off = c * int(t.stride[1]) + si;
  }
};

template <typename T, bool kOut>
struct RowsWalk {
  static constexpr int kChunk = 16 / int(sizeof(T));          // elements per 16-byte chunk
  static constexpr int kTileChunks = kN * kSteps / kChunk;     // chunks per B or C tile
  HalfShared<T>* sh = nullptr;  // this half's rows
  BcShared<T>* bs = nullptr;
  Rows<T> u, delta, z, out;
  const T* bc_root = nullptr;  // this thread's tile (B or C) at (b, g)
  int bc_off = 0, bc_n = 0, bc_i = 0, tile = 0;  // this thread's chunk of a tile
  int L = 0, nch = 0, sc = 0, si = 0;
  bool has_z = false, bc_loads = false, bc_owner = false, softplus = false;
  float bias = 0.f, Dd = 0.f;

  // The group at t0: rows and B/C tiles global -> shared (asynchronously). Whole groups copy
  // whole chunks at block-uniform bases; the last partial one zero-fills past L.
  __device__ __forceinline__ void issue(int t0) {
    constexpr int kRowBytes = kE * int(sizeof(T));
    T* const rs[3] = {u.root + t0, delta.root + t0, z.root + t0};
    const int offs[3] = {u.off, delta.off, z.off};
    const int nrows = kOut && has_z ? 3 : 2;
    if (t0 + kSteps <= L) {
#pragma unroll
      for (int r = 0; r < 3; ++r)
        if (r < nrows) cp_async<kRowBytes>(&sh->raw[r][sc][si / kE], rs[r] + offs[r], kRowBytes);
      if (bc_loads) cp_async<16>(&bs->bc_raw[tile][bc_n][bc_i], bc_root + (bc_off + t0), 16);
      return;
    }
    const int left = L - t0 - si, n = left < 0 ? 0 : (left < kE ? left : kE);
#pragma unroll
    for (int r = 0; r < 3; ++r)  // past L: the row's start, nothing read
      if (r < nrows) cp_async<kRowBytes>(&sh->raw[r][sc][si / kE], rs[r] + offs[r] - (n ? 0 : t0 + si), n * int(sizeof(T)));
    if (bc_loads) {
      const int lb = L - t0 - bc_i, nb = lb < 0 ? 0 : (lb < kChunk ? lb : kChunk);
      cp_async<16>(&bs->bc_raw[tile][bc_n][bc_i], bc_root + (bc_off + (nb ? t0 : -bc_i)), nb * int(sizeof(T)));
    }
  }
  // B/C tiles to float [step][n]; this thread's steps: dt, dt u to dtu, D u and silu(z) to dz.
  __device__ __forceinline__ void compute(int t0) {
    {
      const int tl = threadIdx.x / (kThreads / 2), n = threadIdx.x % kN, i = threadIdx.x / kN % kW * kE;
      if (bc_owner && (kOut || tl == 0)) {
        const Quad<T> q = *reinterpret_cast<const Quad<T>*>(&bs->bc_raw[tl][n][i]);
#pragma unroll
        for (int k = 0; k < kE; ++k) bs->bc[tl][i + k][n] = to_float(q.e[k]);
      }
    }
    const Quad<T> ru = sh->raw[0][sc][si / kE], rd = sh->raw[1][sc][si / kE];
    float v[2 * kE], du[kE], zs[kE];
#pragma unroll
    for (int k = 0; k < kE; ++k) {
      const float uu = to_float(ru.e[k]);
      float dt = to_float(rd.e[k]) + bias;
      if (softplus) dt = softplus_ftz(dt);
      v[2 * k] = dt, v[2 * k + 1] = dt * uu;
      du[k] = Dd * uu, zs[k] = 1.f;
    }
    if (t0 + kSteps > L) {
#pragma unroll
      for (int k = 0; k < kE; ++k)
        if (t0 + si + k >= L) v[2 * k] = 0.f;  // past L the state stays (u is zero there)
    }
    float4* dst = reinterpret_cast<float4*>(&sh->dtu[sc][2 * si]);
    dst[0] = make_float4(v[0], v[1], v[2], v[3]);
    dst[1] = make_float4(v[4], v[5], v[6], v[7]);
    if (!kOut) return;
    if (has_z) {
      const Quad<T> rz = sh->raw[2][sc][si / kE];
#pragma unroll
      for (int k = 0; k < kE; ++k) {
        const float zz = to_float(rz.e[k]);
        zs[k] = zz * scan_thread::sigmoid_of<T>(zz);
      }
    }
    sh->dz[0][threadIdx.x] = make_float4(du[0], du[1], du[2], du[3]);
    sh->dz[1][threadIdx.x] = make_float4(zs[0], zs[1], zs[2], zs[3]);
  }
  // y at this thread's steps: D u plus the warps' partial sums, times silu(z).
  __device__ __forceinline__ void finish(int t0) {
    float4 y = sh->dz[0][threadIdx.x];
#pragma unroll
    for (int w = 0; w < kW; ++w) {
      const float4 q = *reinterpret_cast<const float4*>(&sh->yp[w][0][0] + yp_at(sc, si));
      y.x += q.x, y.y += q.y, y.z += q.z, y.w += q.w;
    }
    const float4 zs = sh->dz[1][threadIdx.x];
    const float yv[kE] = {y.x * zs.x, y.y * zs.y, y.z * zs.z, y.w * zs.w};
    if (sc >= nch) return;
    T* q = out.root + (out.off + t0);
    if (t0 + si + kE <= L) {
      Quad<T> r;
#pragma unroll
      for (int k = 0; k < kE; ++k) r.e[k] = from_float<T>(yv[k]);
      *reinterpret_cast<Quad<T>*>(q) = r;
      return;
    }
#pragma unroll
    for (int k = 0; k < kE; ++k)
      if (t0 + si + k < L) q[k] = from_float<T>(yv[k]);
  }
};

// kCh halves of 32 channels per block: each thread walks channel lane of every half (kCh = 2:
// the B/C values a shared load brings serve two channels).
template <typename T, bool kOut, bool kCk, int kMinBlocks, int kCh>
__global__ void __launch_bounds__(kThreads, kMinBlocks) fwd_rows_kernel(SelectiveScanParams p) {
  constexpr int kBlockCh = kLanes * kCh;
  __shared__ __align__(16) RowsShared<T, kCh> sh;
  const int Dg = int(p.dim / p.ngroups), bpg = (Dg + kBlockCh - 1) / kBlockCh;
  const int64_t b = blockIdx.y, g = blockIdx.x / bpg;
  const int cg = int(blockIdx.x % bpg) * kBlockCh;
  const int64_t d0 = g * Dg + cg;
  const int nch = Dg - cg < kBlockCh ? Dg - cg : kBlockCh;
  const int lane = threadIdx.x % kLanes, w = threadIdx.x / kLanes, n0 = w * kNT;
  using W = RowsWalk<T, kOut>;
  W wk[kCh];
#pragma unroll
  for (int q = 0; q < kCh; ++q) {
    W& k = wk[q];
    k.sh = &sh.h[q], k.bs = &sh.b;
    k.L = int(p.seqlen), k.nch = nch - q * kLanes, k.softplus = p.softplus;
    k.sc = threadIdx.x / kW, k.si = threadIdx.x % kW * kE;
    const int c = q * kLanes + k.sc, cc = c < nch ? c : nch - 1;  // block channel (clamped for loads)
    k.u.init(p.u, b, d0, cc, k.si);
    k.delta.init(p.delta, b, d0, cc, k.si);
    k.has_z = kOut && has(p.z);
    if (k.has_z) k.z.init(p.z, b, d0, cc, k.si);
    if (kOut) k.out.init(p.out, b, d0, c < nch ? c : 0, k.si);
    k.bias = has(p.dt_bias) ? ptr<float>(p.dt_bias)[(d0 + cc) * p.dt_bias.stride[0]] : 0.f;
    k.Dd = kOut && has(p.D) ? ptr<float>(p.D)[(d0 + cc) * p.D.stride[0]] : 0.f;
    const int j = threadIdx.x % (kThreads / 2);
    k.bc_owner = q == 0;
    k.tile = threadIdx.x / (kThreads / 2);
    k.bc_loads = q == 0 && j < W::kTileChunks && (kOut || k.tile == 0);
    k.bc_n = j / (kSteps / W::kChunk), k.bc_i = j % (kSteps / W::kChunk) * W::kChunk;
    const bool isc = kOut && k.tile;
    k.bc_root = isc ? ptr<T>(p.C) + b * p.C.stride[0] + g * p.C.stride[1] : ptr<T>(p.B) + b * p.B.stride[0] + g * p.B.stride[1];
    k.bc_off = k.bc_n * int(isc ? p.C.stride[2] : p.B.stride[2]) + k.bc_i;
  }

  float s[kCh][kNT], A2[kCh][kNT];
  float* ck[kCh];
#pragma unroll
  for (int q = 0; q < kCh; ++q) {
    const int c = q * kLanes + lane;
    const int64_t d = d0 + (c < nch ? c : nch - 1);
#pragma unroll
    for (int j = 0; j < kNT; ++j) {
      A2[q][j] = ptr<float>(p.A)[d * p.A.stride[0] + (n0 + j) * p.A.stride[1]] * scan_thread::kLog2e;
      const TensorArg& h0 = p.initial_state;
      s[q][j] = has(h0) ? ptr<float>(h0)[b * h0.stride[0] + d * h0.stride[1] + (n0 + j) * h0.stride[2]] : 0.f;
    }
    ck[q] = nullptr;
    if (kCk) {
      const TensorArg& c4 = p.chunk_states;
      ck[q] = ptr<float>(c4) + b * c4.stride[0] + d * c4.stride[1] + n0 * c4.stride[3];
    }
  }

  const int L = int(p.seqlen);
#pragma unroll
  for (int q = 0; q < kCh; ++q) wk[q].issue(0);
  cp_async_wait_all();
  __syncthreads();
#pragma unroll
  for (int q = 0; q < kCh; ++q) wk[q].compute(0);
  __syncthreads();
  for (int t0 = 0; t0 < L; t0 += kSteps) {
    const bool more = t0 + kSteps < L;
    if (more) {  // in flight during the steps
#pragma unroll
      for (int q = 0; q < kCh; ++q) wk[q].issue(t0 + kSteps);
    }
#pragma unroll
    for (int i = 0; i < kSteps; i += 4) {
      float acc[kCh][4];
#pragma unroll
      for (int h = 0; h < 4; ++h) {
        const float4 bv = *reinterpret_cast<const float4*>(&sh.b.bc[0][i + h][n0]);
        const float bb[kNT] = {bv.x, bv.y, bv.z, bv.w};
        float cc[kNT] = {0.f, 0.f, 0.f, 0.f};
        if (kOut) {
          const float4 cv = *reinterpret_cast<const float4*>(&sh.b.bc[1][i + h][n0]);
          cc[0] = cv.x, cc[1] = cv.y, cc[2] = cv.z, cc[3] = cv.w;
        }
#pragma unroll
        for (int q = 0; q < kCh; ++q) {
          const float4 dd = *reinterpret_cast<const float4*>(&sh.h[q].dtu[lane][2 * (i + (h & 2))]);
          const float dt = h & 1 ? dd.z : dd.x, dtu = h & 1 ? dd.w : dd.y;
          acc[q][h] = 0.f;
#pragma unroll
          for (int j = 0; j < kNT; ++j) {
            s[q][j] = fmaf(scan_thread::ex2(dt * A2[q][j]), s[q][j], dtu * bb[j]);
            if (kOut) acc[q][h] = fmaf(s[q][j], cc[j], acc[q][h]);
          }
        }
      }
      if (kOut) {
#pragma unroll
        for (int q = 0; q < kCh; ++q)
          *reinterpret_cast<float4*>(&sh.h[q].yp[w][0][0] + yp_at(lane, i)) = make_float4(acc[q][0], acc[q][1], acc[q][2], acc[q][3]);
      }
    }
    if (kCk && more) {
#pragma unroll
      for (int q = 0; q < kCh; ++q) {
        if (q * kLanes + lane >= nch) continue;
        float* dst = ck[q] + (t0 / kSteps + 1) * p.chunk_states.stride[2];
#pragma unroll
        for (int j = 0; j < kNT; ++j) dst[j * p.chunk_states.stride[3]] = s[q][j];
      }
    }
    cp_async_wait_all();
    __syncthreads();  // partial sums complete, the next group's loads visible; step values free
#pragma unroll
    for (int q = 0; q < kCh; ++q) {
      if (kOut) wk[q].finish(t0);
      if (more) wk[q].compute(t0 + kSteps);
    }
    __syncthreads();
  }
  if (kOut && has(p.last_state)) {
    const TensorArg& o = p.last_state;
#pragma unroll
    for (int q = 0; q < kCh; ++q) {
      const int c = q * kLanes + lane;
      if (c >= nch) continue;
#pragma unroll
      for (int j = 0; j < kNT; ++j)
        ptr<float>(o)[b * o.stride[0] + (d0 + c) * o.stride[1] + (n0 + j) * o.stride[2]] = s[q][j];
    }
  }
}

// Host: N == 16, rows contiguous along L and 16-byte aligned, B/C in 16-byte packs along L,
// offsets inside a block's rows and tiles below 2^31.
template <typename T>
bool takes(const SelectiveScanParams& p, bool only_checkpoints) {
  constexpr int64_t kP = 16 / sizeof(T);
  auto row = [](const TensorArg& t) { return rows_vectorizable<T>(t, 2) && t.stride[1] < (int64_t(1) << 24); };
  auto bc = [](const TensorArg& t) {
    return t.stride[3] == 1 && aligned(t.data, 16) && t.stride[0] % kP == 0 && t.stride[1] % kP == 0 &&
           t.stride[2] % kP == 0 && t.stride[2] < (int64_t(1) << 26);
  };
  if (p.dstate != kN || p.seqlen >= (int64_t(1) << 30) || !row(p.u) || !row(p.delta) || !bc(p.B))
    return false;
  if (!enabled()) return false;
  return only_checkpoints || (row(p.out) && bc(p.C) && (!p.z.present() || row(p.z)));
}

template <typename T, bool kOut, bool kCk, int kMinBlocks, int kCh>
void launch_kernel(const SelectiveScanParams& p, cudaStream_t stream) {
  // 8 blocks of 26 KB (one channel per thread) or 4 of 48 KB (two) per SM: the largest carveout
  static const bool carveout = cudaFuncSetAttribute(fwd_rows_kernel<T, kOut, kCk, kMinBlocks, kCh>,
      cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared) == cudaSuccess;
  (void)carveout;
  const int64_t Dg = p.dim / p.ngroups;
  const dim3 grid(unsigned(p.ngroups * ((Dg + kLanes * kCh - 1) / (kLanes * kCh))), unsigned(p.batch));
  fwd_rows_kernel<T, kOut, kCk, kMinBlocks, kCh><<<grid, kThreads, 0, stream>>>(p);
}

// Two channels per thread (4 blocks per SM) where that grid still gives every SM three blocks, else
// one (8 blocks per SM; twice the blocks for small grids: Mamba-1's D 1536 at batch 8 has 192 blocks
// of 64 channels for 132 SMs). Where it gives three, the forward proper of 2-byte types runs
// fwd_wide_kernel instead (selective_scan_fwd_wide.cuh); the backward's pre-pass still runs this one.
inline bool two_channels(const SelectiveScanParams& p) {
  const char e = env_rows();
  if (e == '1' || e == '2') return e == '2';
  static const int sms = [] {
    int dev = 0, n = 132;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev);
    return n;
  }();
  const int64_t blocks = p.batch * p.ngroups * ((p.dim / p.ngroups + 2 * kLanes - 1) / (2 * kLanes));
  return blocks >= 3 * int64_t(sms);
}

// ck: write the checkpoints (chunk_states in fwd_block_kernel's layout) besides y. 2-byte types:
// two channels per thread where the grid is large (two_channels); float32 (twice the staging bytes): one.
template <typename T>
void launch(const SelectiveScanParams& p, bool only_checkpoints, bool ck, cudaStream_t stream) {
  if constexpr (sizeof(T) == 2) {
    if (two_channels(p)) {
      if (only_checkpoints) launch_kernel<T, false, true, 4, 2>(p, stream);
      else if (ck) launch_kernel<T, true, true, 4, 2>(p, stream);
      else launch_kernel<T, true, false, 4, 2>(p, stream);
      return;
    }
  }
  if (only_checkpoints) launch_kernel<T, false, true, 8, 1>(p, stream);
  else if (ck) launch_kernel<T, true, true, 8, 1>(p, stream);
  else launch_kernel<T, true, false, 8, 1>(p, stream);
}

}  // namespace ssm::cuda::scan_rows
