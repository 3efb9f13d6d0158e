// Selective scan (Mamba-1) forward for N <= 16 on the GPU, also the backward's checkpoint pre-pass
// (fwd_block_kernel below: 32 channels per block, the N states split over the block's warps).
// Per (n, t): one ex2 (A pre-scaled by log2 e), two FMA, one FMUL. With kCk it also writes the
// state before each group g >= 1 of kSteps steps into chunk_states (B, D, nchunks, N), the
// backward's checkpoints; without kOut it writes only those (the backward's pre-pass).
#pragma once
#include "cuda/selective_scan_fwd_rows.cuh"
#include "cuda/selective_scan_fwd_wide.cuh"
#include "cuda/selective_scan_thread.cuh"

namespace ssm::cuda::scan_thread {

struct FwdFlags {
  bool vec_u, vec_delta, vec_z, vec_out;
  bool pack_B = false, pack_C = false;  // B / C tiles in 16-byte packs (block kernel)
};

// ---- Block form: 32 channels per block, the N states split over kW warps ----
// Warp w owns states w*kNT .. w*kNT+kNT-1 of every channel of the block (lane = channel), so a
// thread keeps kNT states in registers and the SM holds many warps. Per group of kSteps steps the
// block computes the per-step values (dt, dt u, D u, silu(z)) once, each thread kE = kSteps / kW
// steps of one channel in delta's thread mapping: kE-element vectors along L when L is contiguous,
// else one element per step with the channel fastest (channels-last rows). u, z and out in the
// other mapping pass through [step][channel] rows of shared memory. The warps' partial y sums meet
// in shared memory; the thread that computed a step's values finishes and stores its y.
constexpr int kLanes = 32;    // channels per block
constexpr int kRowPad = 34;   // [step][channel] rows: conflict-free from either thread mapping

template <typename T, int kE>
struct alignas(kE * sizeof(T) < 16 ? kE * sizeof(T) : 16) Elems {
  T e[kE];
};

// One (B, D, L) tensor's rows of the block's channels: this thread's kE steps i0() .. of channel
// c(). Only block-uniform values are kept (uniform registers); the thread's part is derived.
template <typename T, int kW>
struct RowTile {
  static constexpr int kE = kSteps / kW;
  T* root = nullptr;  // at (b, d0, 0)
  int64_t sD = 0;
  int sL = 0, nch = 0;
  bool vec = false;

  __device__ void init(const TensorArg& t, int64_t b, int64_t d0, int n, bool v) {
    root = ptr<T>(t) + b * t.stride[0] + d0 * t.stride[1];
    sD = t.stride[1], sL = int(t.stride[2]), nch = n, vec = v;
  }
  __device__ __forceinline__ int c() const { return vec ? threadIdx.x / kW : threadIdx.x % kLanes; }
  __device__ __forceinline__ int i0() const { return (vec ? threadIdx.x % kW : threadIdx.x / kLanes) * kE; }
  __device__ __forceinline__ bool valid() const { return c() < nch; }
  __device__ __forceinline__ T* at(int64_t t0) const {
    const int cc = c() < nch ? c() : nch - 1;
    return root + cc * sD + (t0 + i0()) * sL;
  }
  __device__ __forceinline__ void load(Elems<T, kE>& r, int64_t t0, int64_t L) const {
    const T* q = at(t0);
    if (vec && t0 + kSteps <= L) {
      r = *reinterpret_cast<const Elems<T, kE>*>(q);
      return;
    }
#pragma unroll
    for (int k = 0; k < kE; ++k) r.e[k] = t0 + i0() + k < L ? q[k * sL] : zero<T>();
  }
  // raw[i][c] = float(r) (raw: [kSteps][kRowPad])
  __device__ __forceinline__ void put(float* raw, const Elems<T, kE>& r) const {
#pragma unroll
    for (int k = 0; k < kE; ++k) raw[(i0() + k) * kRowPad + c()] = to_float(r.e[k]);
  }
  __device__ __forceinline__ void store(const float (&y)[kE], int64_t t0, int64_t L) const {
    if (!valid()) return;
    T* q = at(t0);
    if (vec && t0 + kSteps <= L) {
      Elems<T, kE> r;
#pragma unroll
      for (int k = 0; k < kE; ++k) r.e[k] = from_float<T>(y[k]);
      *reinterpret_cast<Elems<T, kE>*>(q) = r;
      return;
    }
#pragma unroll
    for (int k = 0; k < kE; ++k)
      if (t0 + i0() + k < L) q[k * sL] = from_float<T>(y[k]);
  }
};

// This thread's share of a group's B (or C) tile. Packed (N == kN, 16-byte packs along the
// contiguous dim L or N, aligned): threads [lo, lo + kPacks) load one pack each; else kPer
// elements in BcSrc's order (zero past N and L). Either way the values sit in one Pack.
template <typename T, int kN, int kPer, int kThreads>
struct BcTile {
  static constexpr int kP = Pack<T>::kN, kPacks = kSteps * kN / kP, kPn = kN >= kP ? kN / kP : 1;
  BcSrc<T, kN> src;
  int N = 0, lo = 0;
  bool packed = false;

  __device__ void init(const TensorArg& t, int64_t b, int64_t g, int64_t n, int lo_, bool pk) {
    src.init(t, b, g);
    N = int(n), lo = lo_, packed = pk;
  }
  __device__ __forceinline__ bool pack_of(int& i, int& n) const {  // this thread's pack
    const int j = int(threadIdx.x) - lo;
    if (src.lfast) n = j / (kSteps / kP), i = j % (kSteps / kP) * kP;
    else i = j / kPn, n = j % kPn * kP;
    return j >= 0 && j < kPacks;
  }
  __device__ __forceinline__ void load(Pack<T>& r, int64_t t0, int steps) const {
    const T* q = src.base + t0 * src.sL;
    if (packed && steps == kSteps) {
      int i, n;
      if (pack_of(i, n)) r.load(q + (n * src.sN + i * src.sL));
      return;
    }
#pragma unroll
    for (int k = 0; k < kPer; ++k) {
      const int e = threadIdx.x + k * kThreads, i = src.step_of(e), n = src.state_of(e);
      r.e[k] = n < N && i < steps ? q[n * src.sN + i * src.sL] : zero<T>();
    }
  }
  __device__ __forceinline__ void put(float (*dst)[kN], const Pack<T>& r, int steps) const {
    if (packed && steps == kSteps) {
      int i, n;
      if (!pack_of(i, n)) return;
#pragma unroll
      for (int e = 0; e < kP; ++e) {
        if (src.lfast) dst[i + e][n] = to_float(r.e[e]);
        else dst[i][n + e] = to_float(r.e[e]);
      }
      return;
    }
#pragma unroll
    for (int k = 0; k < kPer; ++k) {
      const int e = threadIdx.x + k * kThreads;
      dst[src.step_of(e)][src.state_of(e)] = to_float(r.e[k]);
    }
  }
};

// Host: can a (B, G, N, L) tensor's tiles be read in 16-byte packs (BcTile), N == kN?
template <typename T>
bool bc_packable(const TensorArg& t, int64_t N, int kN) {
  constexpr int64_t kP = 16 / sizeof(T);
  if (N != kN || !aligned(t.data, 16) || t.stride[0] % kP || t.stride[1] % kP) return false;
  if (t.stride[3] == 1) return t.stride[2] % kP == 0;
  return t.stride[2] == 1 && kN % kP == 0 && t.stride[3] % kP == 0;
}

template <int kN, int kW>
struct BlkShared {
  float raw[2][kSteps][kRowPad];     // u and z when their thread mapping differs from delta's
  float2 dtu[kSteps][kLanes + 1];    // (dt, dt u) per step and channel (padded: conflict-free both ways)
  float B[kSteps][kN], C[kSteps][kN];
  float yp[kW][kSteps][kRowPad];     // each warp's partial y
  float yo[kSteps][kRowPad];         // finished y when out's mapping differs from delta's
};

// The per-step work of a group runs in delta's thread mapping (channel delta.c, steps delta.i0 ..);
// rows in the other mapping (u, z, out) pass through [step][channel] rows of shared memory.
template <typename T, int kN, int kW, bool kOut>
struct BlkWalk {
  static constexpr int kE = kSteps / kW, kNT = kN / kW, kPer = kSteps * kN / (kLanes * kW);
  const SelectiveScanParams& p;
  BlkShared<kN, kW>& sh;
  RowTile<T, kW> u, delta, z, out;
  BcTile<T, kN, kPer, kLanes * kW> Bs, Cs;
  int64_t L;
  bool has_z, u_t, z_t, out_t;  // u, z, out transposed through shared memory
  float bias, Dd;               // delta.c's channel
  float Du[kE], zs[kE];         // the current group's D u and silu(z) at delta's steps
  Elems<T, kE> ru, rd, rz;      // the next group's rows
  Pack<T> rb, rc;               // and B/C tile shares

  __device__ __forceinline__ bool transposed() const { return u_t || (kOut && (z_t || out_t)); }
  __device__ __forceinline__ void load(int64_t t0) {
    u.load(ru, t0, L);
    delta.load(rd, t0, L);
    if (kOut && has_z) z.load(rz, t0, L);
    const int steps = L - t0 < kSteps ? int(L - t0) : kSteps;
    Bs.load(rb, t0, steps);
    if (kOut) Cs.load(rc, t0, steps);
  }
  // B/C tiles and the transposed rows of the group at t0 into shared memory.
  __device__ __forceinline__ void put(int64_t t0) {
    const int steps = L - t0 < kSteps ? int(L - t0) : kSteps;
    if (u_t) u.put(&sh.raw[0][0][0], ru);
    if (kOut && has_z && z_t) z.put(&sh.raw[1][0][0], rz);
    Bs.put(sh.B, rb, steps);
    if (kOut) Cs.put(sh.C, rc, steps);
  }
  // Per-step values at delta's kE steps: (dt, dt u) to shared memory, D u and silu(z) kept.
  __device__ __forceinline__ void compute(int64_t t0) {
    const int c = delta.c(), i0 = delta.i0();
    const int steps = L - t0 < kSteps ? int(L - t0) : kSteps;
#pragma unroll
    for (int k = 0; k < kE; ++k) {
      const int i = i0 + k;
      float dt = to_float(rd.e[k]) + bias;
      if (p.softplus) dt = softplus_fast(dt);
      dt = i < steps ? dt : 0.f;  // past L: the state stays (u is zero there)
      const float uu = u_t ? sh.raw[0][i][c] : to_float(ru.e[k]);
      sh.dtu[i][c] = make_float2(dt, dt * uu);
      if (kOut) {
        const float zz = z_t ? sh.raw[1][i][c] : to_float(rz.e[k]);
        Du[k] = Dd * uu;
        zs[k] = has_z ? zz * sigmoid_of<T>(zz) : 1.f;
      }
    }
  }
  // y at delta's steps from the warps' partial sums: stored, or into yo when out is transposed.
  __device__ __forceinline__ void finish(int64_t t0) {
    const int c = delta.c(), i0 = delta.i0();
    float y[kE];
#pragma unroll
    for (int k = 0; k < kE; ++k) {
      float a = Du[k];
#pragma unroll
      for (int w = 0; w < kW; ++w) a += sh.yp[w][i0 + k][c];
      y[k] = a * zs[k];
      if (out_t) sh.yo[i0 + k][c] = y[k];
    }
    if (!out_t) out.store(y, t0, L);
  }
  __device__ __forceinline__ void store_transposed(int64_t t0) {
    float y[kE];
#pragma unroll
    for (int k = 0; k < kE; ++k) y[k] = sh.yo[out.i0() + k][out.c()];
    out.store(y, t0, L);
  }
};

// kNT floats of a shared row (16-byte aligned row, kNT-aligned offset).
template <int kNT>
__device__ __forceinline__ void lds(float (&v)[kNT], const float* src) {
  const Elems<float, kNT> e = *reinterpret_cast<const Elems<float, kNT>*>(src);
#pragma unroll
  for (int j = 0; j < kNT; ++j) v[j] = e.e[j];
}

template <typename T, int kN, int kW, bool kOut, bool kCk>
__global__ void __launch_bounds__(kLanes * kW, 8) fwd_block_kernel(SelectiveScanParams p, FwdFlags f) {
  constexpr int kNT = kN / kW;
  __shared__ __align__(16) BlkShared<kN, kW> sh;
  const int64_t Dg = p.dim / p.ngroups, bpg = (Dg + kLanes - 1) / kLanes;
  const int64_t b = blockIdx.y, g = blockIdx.x / bpg, cg = (blockIdx.x % bpg) * kLanes, d0 = g * Dg + cg;
  const int nch = int(Dg - cg < kLanes ? Dg - cg : kLanes);
  const int lane = threadIdx.x % kLanes, w = threadIdx.x / kLanes, n0 = w * kNT;
  const bool valid = lane < nch;
  const int64_t d = d0 + (valid ? lane : nch - 1), L = p.seqlen, N = p.dstate;

  BlkWalk<T, kN, kW, kOut> wk{p, sh};
  wk.L = L, wk.has_z = has(p.z);
  wk.u.init(p.u, b, d0, nch, f.vec_u);
  wk.delta.init(p.delta, b, d0, nch, f.vec_delta);
  if (kOut && wk.has_z) wk.z.init(p.z, b, d0, nch, f.vec_z);
  if (kOut) wk.out.init(p.out, b, d0, nch, f.vec_out);
  wk.u_t = f.vec_u != f.vec_delta, wk.z_t = wk.has_z && f.vec_z != f.vec_delta, wk.out_t = f.vec_out != f.vec_delta;
  const int64_t dc = d0 + (wk.delta.valid() ? wk.delta.c() : nch - 1);  // delta's channel
  wk.bias = has(p.dt_bias) ? ptr<float>(p.dt_bias)[dc * p.dt_bias.stride[0]] : 0.f;
  wk.Dd = kOut && has(p.D) ? ptr<float>(p.D)[dc * p.D.stride[0]] : 0.f;
  wk.Bs.init(p.B, b, g, N, 0, f.pack_B);
  if (kOut) wk.Cs.init(p.C, b, g, N, decltype(wk.Cs)::kPacks, f.pack_C);

  float s[kNT], A2[kNT];
#pragma unroll
  for (int j = 0; j < kNT; ++j) {
    const int64_t n = n0 + j;
    A2[j] = n < N ? ptr<float>(p.A)[d * p.A.stride[0] + n * p.A.stride[1]] * kLog2e : 0.f;
    const TensorArg& h0 = p.initial_state;
    s[j] = n < N && has(h0) ? ptr<float>(h0)[b * h0.stride[0] + d * h0.stride[1] + n * h0.stride[2]] : 0.f;
  }

  wk.load(0);
  wk.put(0);
  __syncthreads();
  wk.compute(0);
  __syncthreads();
  for (int64_t t0 = 0; t0 < L; t0 += kSteps) {
    const bool more = t0 + kSteps < L;
    if (more) wk.load(t0 + kSteps);  // in flight during the steps
#pragma unroll
    for (int i = 0; i < kSteps; ++i) {
      const float2 dd = sh.dtu[i][lane];
      float bv[kNT], cv[kNT];
      lds(bv, &sh.B[i][n0]);
      if (kOut) lds(cv, &sh.C[i][n0]);
      float acc = 0.f;
#pragma unroll
      for (int j = 0; j < kNT; ++j) {
        s[j] = fmaf(ex2(dd.x * A2[j]), s[j], dd.y * bv[j]);
        if (kOut) acc = fmaf(s[j], cv[j], acc);
      }
      if (kOut) sh.yp[w][i][lane] = acc;
    }
    if (kCk && more && valid) {
      const TensorArg& ck = p.chunk_states;
      float* dst = ptr<float>(ck) + b * ck.stride[0] + d * ck.stride[1] + (t0 / kSteps + 1) * ck.stride[2];
#pragma unroll
      for (int j = 0; j < kNT; ++j)
        if (n0 + j < N) dst[(n0 + j) * ck.stride[3]] = s[j];
    }
    __syncthreads();  // partial sums complete; the step values and B/C tiles free
    if (kOut) wk.finish(t0);
    if (more) wk.put(t0 + kSteps);
    if (wk.transposed()) __syncthreads();
    if (kOut && wk.out_t) wk.store_transposed(t0);
    if (more) wk.compute(t0 + kSteps);
    __syncthreads();
  }
  if (kOut && valid && has(p.last_state)) {
    const TensorArg& o = p.last_state;
#pragma unroll
    for (int j = 0; j < kNT; ++j)
      if (n0 + j < N) ptr<float>(o)[b * o.stride[0] + d * o.stride[1] + (n0 + j) * o.stride[2]] = s[j];
  }
}

// Whether chunk_states is this kernel's workspace (D fastest) and L needs it.
inline bool checkpoint_layout(const SelectiveScanParams& p) {
  return p.seqlen > kSteps && p.chunk_states.present() && p.chunk_states.stride[1] == 1;
}

// Block form: N <= 4 one warp, <= 8 two, <= 16 four (4 states per thread).
#define SSM_SCAN_BLOCK_N_SWITCH(N, KN, KW, ...)                                      \
  [&] {                                                                              \
    if (N <= 4) { constexpr int KN = 4, KW = 1; return __VA_ARGS__(); }              \
    if (N <= 8) { constexpr int KN = 8, KW = 2; return __VA_ARGS__(); }              \
    constexpr int KN = 16, KW = 4; return __VA_ARGS__();                             \
  }()

// only_checkpoints: the backward's pre-pass; else the forward, writing the checkpoints as well
// when the op layer passes their workspace.
template <typename T>
void launch_fwd(const SelectiveScanParams& p, bool only_checkpoints, cudaStream_t stream) {
  if (scan_rows::takes<T>(p, only_checkpoints))
    return scan_rows::launch<T>(p, only_checkpoints, checkpoint_layout(p), stream);
  FwdFlags f;
  f.vec_u = rows_vectorizable<T>(p.u, 2), f.vec_delta = rows_vectorizable<T>(p.delta, 2);
  f.vec_z = has(p.z) && rows_vectorizable<T>(p.z, 2);
  f.vec_out = !only_checkpoints && rows_vectorizable<T>(p.out, 2);
  const int64_t Dg = p.dim / p.ngroups;
  const dim3 grid(unsigned(p.ngroups * ((Dg + kLanes - 1) / kLanes)), unsigned(p.batch));
  SSM_SCAN_BLOCK_N_SWITCH(p.dstate, KN, KW, [&] {
    const dim3 block(kLanes * KW);
    f.pack_B = bc_packable<T>(p.B, p.dstate, KN), f.pack_C = !only_checkpoints && bc_packable<T>(p.C, p.dstate, KN);
    if (only_checkpoints) fwd_block_kernel<T, KN, KW, false, true><<<grid, block, 0, stream>>>(p, f);
    else if (checkpoint_layout(p)) fwd_block_kernel<T, KN, KW, true, true><<<grid, block, 0, stream>>>(p, f);
    else fwd_block_kernel<T, KN, KW, true, false><<<grid, block, 0, stream>>>(p, f);
  });
}

// The forward proper (y wanted): the thread-per-channel kernel where it is chosen (2-byte types), else launch_fwd.
template <typename T>
void launch_fwd_y(const SelectiveScanParams& p, cudaStream_t stream) {
  if constexpr (sizeof(T) == 2) {
    if (scan_rows::takes<T>(p, false) && scan_wide::takes(p))
      return scan_wide::launch<T>(p, checkpoint_layout(p), stream);
  }
  launch_fwd<T>(p, false, stream);
}

}  // namespace ssm::cuda::scan_thread
