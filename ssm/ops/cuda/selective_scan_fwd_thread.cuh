// Selective scan (Mamba-1) forward for N <= 16 on the GPU, a thread per (batch, channel): the
// thread's N states stay in registers while it walks L in groups of kSteps steps. A block is one
// warp of 32 channels of one B/C group (small blocks: B*D threads spread evenly over the SMs).
// Software pipeline: the next group's u, delta, z and B/C are loaded into registers while the
// current group computes; B/C go to a double-buffered shared tile (float) read with broadcast
// 16-byte loads. Per (n, t): one ex2 (A pre-scaled by log2 e), two FMA, one FMUL.
// With kCk it also writes the state before each group g >= 1 into chunk_states (B, D, nchunks, N),
// the backward's checkpoints; without kOut it writes only those (the backward's pre-pass).
#pragma once
#include <cstdlib>
#include <cstring>

#include "cuda/selective_scan_thread.cuh"

namespace ssm::cuda::scan_thread {

constexpr int kFwdThreads = 32;

struct FwdFlags {
  bool vec_u, vec_delta, vec_z, vec_out;
  bool pack_B = false, pack_C = false;  // B / C tiles in 16-byte packs (block kernel)
};

template <typename T, int kN>
struct FwdShared {
  float B[2][kSteps][kN], C[2][kSteps][kN];  // the group's B/C, double-buffered
  // per-step values of the group, a column per thread: dt, dt u, u, silu(z) (1 without z), y
  float dt[kSteps][kFwdThreads], dtu[kSteps][kFwdThreads], u[kSteps][kFwdThreads];
  float zs[kSteps][kFwdThreads], y[kSteps][kFwdThreads];
};

// The next group's raw inputs (registers).
template <typename T, int kN>
struct FwdRaw {
  static constexpr int kPer = kSteps * kN / kFwdThreads;  // B (and C) elements per thread
  T u[kSteps], d[kSteps], z[kSteps], b[kPer], c[kPer];
};

template <typename T, int kN, bool kOut>
struct FwdWalk {
  const SelectiveScanParams& p;
  Row<T> u, delta, z, out;
  BcSrc<T, kN> Bs, Cs;
  int64_t L;
  bool has_z;
  float bias;

  __device__ __forceinline__ void load(FwdRaw<T, kN>& r, int64_t t0) const {
    u.load(r.u, t0, L);
    delta.load(r.d, t0, L);
    if (kOut && has_z) z.load(r.z, t0, L);
#pragma unroll
    for (int k = 0; k < FwdRaw<T, kN>::kPer; ++k) {
      const int e = threadIdx.x + k * kFwdThreads;
      r.b[k] = Bs.load(e, t0, L, p.dstate);
      if (kOut) r.c[k] = Cs.load(e, t0, L, p.dstate);
    }
  }
  // B/C into the shared tile buf; the per-step values into this thread's columns.
  __device__ __forceinline__ void stage(FwdShared<T, kN>& sh, const FwdRaw<T, kN>& r, int buf, int64_t t0) const {
#pragma unroll
    for (int k = 0; k < FwdRaw<T, kN>::kPer; ++k) {
      const int e = threadIdx.x + k * kFwdThreads, i = Bs.step_of(e), n = Bs.state_of(e);
      sh.B[buf][i][n] = to_float(r.b[k]);
      if (kOut) sh.C[buf][Cs.step_of(e)][Cs.state_of(e)] = to_float(r.c[k]);
    }
    const int lane = threadIdx.x;
#pragma unroll
    for (int i = 0; i < kSteps; ++i) {
      float dt = to_float(r.d[i]) + bias;
      if (p.softplus) dt = softplus_fast(dt);
      dt = t0 + i < L ? dt : 0.f;  // past L: the state stays (u is zero there)
      const float uu = to_float(r.u[i]);
      sh.dt[i][lane] = dt, sh.dtu[i][lane] = dt * uu, sh.u[i][lane] = uu;
      if (kOut) {
        const float zz = to_float(r.z[i]);
        sh.zs[i][lane] = has_z ? zz * sigmoid_of<T>(zz) : 1.f;
      }
    }
  }
};

template <typename T, int kN, bool kOut, bool kCk>
__global__ void __launch_bounds__(kFwdThreads) fwd_kernel(SelectiveScanParams p, FwdFlags f) {
  __shared__ __align__(16) FwdShared<T, kN> sh;
  const int64_t Dg = p.dim / p.ngroups, bpg = (Dg + kFwdThreads - 1) / kFwdThreads;
  const int64_t b = blockIdx.y, g = blockIdx.x / bpg, c = (blockIdx.x % bpg) * kFwdThreads + threadIdx.x;
  const bool valid = c < Dg;
  const int64_t d = g * Dg + (valid ? c : Dg - 1), L = p.seqlen, N = p.dstate;
  const int lane = threadIdx.x;

  FwdWalk<T, kN, kOut> w{p};
  w.L = L, w.has_z = has(p.z);
  w.bias = has(p.dt_bias) ? ptr<float>(p.dt_bias)[d * p.dt_bias.stride[0]] : 0.f;
  w.u.init(p.u, b, d, f.vec_u);
  w.delta.init(p.delta, b, d, f.vec_delta);
  if (kOut && w.has_z) w.z.init(p.z, b, d, f.vec_z);
  if (kOut) w.out.init(p.out, b, d, f.vec_out);
  w.Bs.init(p.B, b, g);
  if (kOut) w.Cs.init(p.C, b, g);

  float s[kN], A2[kN];
#pragma unroll
  for (int n = 0; n < kN; ++n) {
    A2[n] = n < N ? ptr<float>(p.A)[d * p.A.stride[0] + n * p.A.stride[1]] * kLog2e : 0.f;
    const TensorArg& h0 = p.initial_state;
    s[n] = n < N && has(h0) ? ptr<float>(h0)[b * h0.stride[0] + d * h0.stride[1] + n * h0.stride[2]] : 0.f;
  }
  const float Dd = has(p.D) ? ptr<float>(p.D)[d * p.D.stride[0]] : 0.f;

  FwdRaw<T, kN> nxt;
  w.load(nxt, 0);
  w.stage(sh, nxt, 0, 0);
  __syncwarp();
  int buf = 0;
  for (int64_t t0 = 0; t0 < L; t0 += kSteps, buf ^= 1) {
    const bool more = t0 + kSteps < L;
    if (more) w.load(nxt, t0 + kSteps);  // in flight during the steps
    // the steps: a small rolled loop (the unrolled group overflowed the instruction cache)
#pragma unroll 1
    for (int i = 0; i < kSteps; ++i) {
      const float dt = sh.dt[i][lane], dtu = sh.dtu[i][lane];
      const float4* Bq = reinterpret_cast<const float4*>(sh.B[buf][i]);
      const float4* Cq = reinterpret_cast<const float4*>(sh.C[buf][i]);
      float acc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int q = 0; q < kN / 4; ++q) {
        const float4 bq = Bq[q];
        const float bv[4] = {bq.x, bq.y, bq.z, bq.w};
        float cv[4] = {0.f, 0.f, 0.f, 0.f};
        if (kOut) {
          const float4 cq = Cq[q];
          cv[0] = cq.x, cv[1] = cq.y, cv[2] = cq.z, cv[3] = cq.w;
        }
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int n = 4 * q + e;
          s[n] = fmaf(ex2(dt * A2[n]), s[n], dtu * bv[e]);
          if (kOut) acc[e] = fmaf(s[n], cv[e], acc[e]);
        }
      }
      if (kOut) sh.y[i][lane] = fmaf(Dd, sh.u[i][lane], (acc[0] + acc[1]) + (acc[2] + acc[3])) * sh.zs[i][lane];
    }
    if (kOut && valid) {
      float y[kSteps];
#pragma unroll
      for (int i = 0; i < kSteps; ++i) y[i] = sh.y[i][lane];
      w.out.store(y, t0, L);
    }
    if (kCk && more && valid) {
      const TensorArg& ck = p.chunk_states;
      float* dst = ptr<float>(ck) + b * ck.stride[0] + d * ck.stride[1] + (t0 / kSteps + 1) * ck.stride[2];
#pragma unroll
      for (int n = 0; n < kN; ++n)
        if (n < N) dst[n * ck.stride[3]] = s[n];
    }
    __syncwarp();  // every lane done with tile buf before it is refilled two groups on
    if (more) w.stage(sh, nxt, buf ^ 1, t0 + kSteps);
    __syncwarp();
  }
  if (kOut && valid && has(p.last_state)) {
    const TensorArg& o = p.last_state;
#pragma unroll
    for (int n = 0; n < kN; ++n)
      if (n < N) ptr<float>(o)[b * o.stride[0] + d * o.stride[1] + n * o.stride[2]] = s[n];
  }
}

// ---- Block form: 32 channels per block, the N states split over kW warps ----
// Warp w owns states w*kNT .. w*kNT+kNT-1 of every channel of the block (lane = channel), so a
// thread keeps kNT states in registers and the SM holds many warps. The next group's u, delta, z
// rows and B/C tiles reach shared memory during the current group's steps (cp.async). Per group of
// kSteps steps the block computes the per-step values (dt, dt u, D u, silu(z)) once, each thread
// kE = kSteps / kW steps of one channel in delta's thread mapping (kE consecutive steps when L is
// contiguous, else one step per warp-row with the channel fastest: channels-last rows). The warps'
// partial y sums meet in shared memory; the thread that computed a step's values finishes and
// stores its y (through shared memory when out's layout differs from delta's).
constexpr int kLanes = 32;    // channels per block
constexpr int kRowPad = 34;   // [step][channel] rows: conflict-free from either thread mapping

template <typename T, int kE>
struct alignas(kE * sizeof(T) < 16 ? kE * sizeof(T) : 16) Elems {
  T e[kE];
};

// kBytes (8, or a multiple of 16) global -> shared without registers; cp_async_wait() before use.
template <int kBytes>
__device__ __forceinline__ void cp_async(void* dst, const void* src) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  if constexpr (kBytes < 16) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2;\n" ::"r"(s), "l"(src), "n"(kBytes));
  } else {
#pragma unroll
    for (int k = 0; k < kBytes / 16; ++k)
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s + 16 * k),
                   "l"(static_cast<const char*>(src) + 16 * k));
  }
}
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

// One (B, D, L) tensor's rows of the block's channels: this thread's kE steps i0() .. of channel
// c(). Only block-uniform values are kept (uniform registers); the thread's part is derived.
template <typename T, int kW>
struct RowTile {
  static constexpr int kE = kSteps / kW;
  static constexpr int kPitch = kSteps + 16 / int(sizeof(T));  // [c][i] rows in shared memory
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
  __device__ __forceinline__ T* at(int t0) const {
    const int cc = c() < nch ? c() : nch - 1;
    return root + cc * sD + int64_t(t0 + i0()) * sL;
  }
  __device__ __forceinline__ void load(Elems<T, kE>& r, int t0, int L) const {
    const T* q = at(t0);
    if (vec && t0 + kSteps <= L) {
      r = *reinterpret_cast<const Elems<T, kE>*>(q);
      return;
    }
#pragma unroll
    for (int k = 0; k < kE; ++k) r.e[k] = t0 + i0() + k < L ? q[k * sL] : zero<T>();
  }
  // The group at t0 into raw: [c][kPitch] when L is contiguous (cp.async for a full group), else
  // [i][kLanes] (loads).
  __device__ __forceinline__ void fetch(T* raw, int t0, int L) const {
    if (vec && t0 + kSteps <= L) {
      cp_async<kE * int(sizeof(T))>(raw + c() * kPitch + i0(), at(t0));
      return;
    }
    Elems<T, kE> r;
    load(r, t0, L);
#pragma unroll
    for (int k = 0; k < kE; ++k) raw[vec ? c() * kPitch + i0() + k : (i0() + k) * kLanes + c()] = r.e[k];
  }
  __device__ __forceinline__ float get(const T* raw, int cc, int i) const {
    return to_float(vec ? raw[cc * kPitch + i] : raw[i * kLanes + cc]);
  }
  __device__ __forceinline__ void store(const float (&y)[kE], int t0, int L) const {
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
// contiguous dim L or N, aligned, full group): threads [lo, lo + kPacks) copy one pack each with
// cp.async; else kPer elements in BcSrc's order (zero past N and L). Either way element e of the
// tile (BcSrc's order) lands at raw[e].
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
  // The group's tile at t0 into raw (element e at raw[e]): cp.async per pack, or loads.
  __device__ __forceinline__ void fetch(T* raw, int t0, int steps) const {
    const T* q = src.base + int64_t(t0) * src.sL;
    if (packed && steps == kSteps) {
      int i, n;
      if (pack_of(i, n)) cp_async<16>(raw + (src.lfast ? n * kSteps + i : i * kN + n), q + (n * src.sN + i * src.sL));
      return;
    }
#pragma unroll
    for (int k = 0; k < kPer; ++k) {
      const int e = threadIdx.x + k * kThreads, i = src.step_of(e), n = src.state_of(e);
      raw[e] = n < N && i < steps ? q[n * src.sN + i * src.sL] : zero<T>();
    }
  }
  // raw tile -> float [step][n] tile
  __device__ __forceinline__ void put(float (*dst)[kN], const T* raw) const {
#pragma unroll
    for (int k = 0; k < kSteps * kN / kThreads; ++k) {
      const int e = threadIdx.x + k * kThreads;
      dst[src.step_of(e)][src.state_of(e)] = to_float(raw[e]);
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

template <typename T, int kN, int kW>
struct BlkShared {
  T rows[3][kLanes * RowTile<T, kW>::kPitch];  // the next group's u, delta, z (RowTile::fetch)
  T bc[2][kSteps * kN];                        // and B, C (BcTile::fetch)
  float2 dtu[kSteps][kLanes + 1];    // (dt, dt u) per step and channel (padded: conflict-free both ways)
  float B[kSteps][kN], C[kSteps][kN];
  float yp[kW][kSteps][kRowPad];     // each warp's partial y
  float yo[kSteps][kRowPad];         // finished y when out's mapping differs from delta's
  float du[kSteps][kRowPad], zs[kSteps][kRowPad];  // D u and silu(z), from compute to finish
};

// The next group's rows and B/C tiles travel to shared memory during the current group's steps
// (cp.async where aligned and full, else loads); the per-step work of a group runs in delta's
// thread mapping (channel delta.c(), steps delta.i0() ..).
template <typename T, int kN, int kW, bool kOut>
struct BlkWalk {
  static constexpr int kE = kSteps / kW, kNT = kN / kW, kPer = kSteps * kN / (kLanes * kW);
  const SelectiveScanParams& p;
  BlkShared<T, kN, kW>& sh;
  RowTile<T, kW> u, delta, z, out;
  BcTile<T, kN, kPer, kLanes * kW> Bs, Cs;
  int L;
  bool has_z, out_t;  // out transposed through shared memory (layout unlike delta's)
  float bias, Dd;     // delta.c()'s channel

  __device__ __forceinline__ void fetch(int t0) {
    u.fetch(sh.rows[0], t0, L);
    delta.fetch(sh.rows[1], t0, L);
    if (kOut && has_z) z.fetch(sh.rows[2], t0, L);
    const int steps = L - t0 < kSteps ? L - t0 : kSteps;
    Bs.fetch(sh.bc[0], t0, steps);
    if (kOut) Cs.fetch(sh.bc[1], t0, steps);
  }
  // The fetched B/C tiles as float (after cp_async_wait and a barrier).
  __device__ __forceinline__ void put() {
    Bs.put(sh.B, sh.bc[0]);
    if (kOut) Cs.put(sh.C, sh.bc[1]);
  }
  // Per-step values at delta's kE steps: (dt, dt u), D u and silu(z) to shared memory.
  __device__ __forceinline__ void compute(int t0) {
    const int c = delta.c(), i0 = delta.i0();
    const int steps = L - t0 < kSteps ? L - t0 : kSteps;
#pragma unroll
    for (int k = 0; k < kE; ++k) {
      const int i = i0 + k;
      float dt = delta.get(sh.rows[1], c, i) + bias;
      if (p.softplus) dt = softplus_fast(dt);
      dt = i < steps ? dt : 0.f;  // past L: the state stays (u is zero there)
      const float uu = u.get(sh.rows[0], c, i);
      sh.dtu[i][c] = make_float2(dt, dt * uu);
      if (kOut) {
        sh.du[i][c] = Dd * uu;
        if (has_z) {
          const float zz = z.get(sh.rows[2], c, i);
          sh.zs[i][c] = zz * sigmoid_of<T>(zz);
        } else {
          sh.zs[i][c] = 1.f;
        }
      }
    }
  }
  // y at delta's steps from the warps' partial sums: stored, or into yo when out is transposed.
  __device__ __forceinline__ void finish(int t0) {
    const int c = delta.c(), i0 = delta.i0();
    float y[kE];
#pragma unroll
    for (int k = 0; k < kE; ++k) {
      float a = sh.du[i0 + k][c];
#pragma unroll
      for (int w = 0; w < kW; ++w) a += sh.yp[w][i0 + k][c];
      y[k] = a * sh.zs[i0 + k][c];
      if (out_t) sh.yo[i0 + k][c] = y[k];
    }
    if (!out_t) out.store(y, t0, L);
  }
  __device__ __forceinline__ void store_transposed(int t0) {
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
  __shared__ __align__(16) BlkShared<T, kN, kW> sh;
  const int64_t Dg = p.dim / p.ngroups, bpg = (Dg + kLanes - 1) / kLanes;
  const int64_t b = blockIdx.y, g = blockIdx.x / bpg, cg = (blockIdx.x % bpg) * kLanes, d0 = g * Dg + cg;
  const int nch = int(Dg - cg < kLanes ? Dg - cg : kLanes);
  const int lane = threadIdx.x % kLanes, w = threadIdx.x / kLanes, n0 = w * kNT;
  const bool valid = lane < nch;
  const int64_t d = d0 + (valid ? lane : nch - 1), N = p.dstate;
  const int L = int(p.seqlen);  // launch_fwd: L < 2^30

  BlkWalk<T, kN, kW, kOut> wk{p, sh};
  wk.L = L, wk.has_z = has(p.z);
  wk.u.init(p.u, b, d0, nch, f.vec_u);
  wk.delta.init(p.delta, b, d0, nch, f.vec_delta);
  if (kOut && wk.has_z) wk.z.init(p.z, b, d0, nch, f.vec_z);
  if (kOut) wk.out.init(p.out, b, d0, nch, f.vec_out);
  wk.out_t = f.vec_out != f.vec_delta;
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

  wk.fetch(0);
  cp_async_wait();
  __syncthreads();
  wk.put();
  wk.compute(0);
  __syncthreads();
  for (int t0 = 0; t0 < L; t0 += kSteps) {
    const bool more = t0 + kSteps < L;
    if (more) wk.fetch(t0 + kSteps);  // in flight during the steps
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
    cp_async_wait();
    __syncthreads();  // partial sums complete, the next group fetched; step values and tiles free
    if (kOut) wk.finish(t0);
    if (more) wk.put();
    if (kOut && wk.out_t) {
      __syncthreads();
      wk.store_transposed(t0);
    }
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

// Switch: SSM_SCAN_FWD_BLOCK=0 sends the N <= 16 forward and pre-pass to the one-warp kernel
// above (fwd_kernel; for A/B timings).
inline bool fwd_block_enabled() {
  static const bool on = [] {
    const char* v = std::getenv("SSM_SCAN_FWD_BLOCK");
    return v == nullptr || std::strcmp(v, "0") != 0;
  }();
  return on;
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
  FwdFlags f;
  f.vec_u = rows_vectorizable<T>(p.u, 2), f.vec_delta = rows_vectorizable<T>(p.delta, 2);
  f.vec_z = has(p.z) && rows_vectorizable<T>(p.z, 2);
  f.vec_out = !only_checkpoints && rows_vectorizable<T>(p.out, 2);
  const int64_t Dg = p.dim / p.ngroups;
  const dim3 grid(unsigned(p.ngroups * ((Dg + kFwdThreads - 1) / kFwdThreads)), unsigned(p.batch));
  if (fwd_block_enabled() && p.seqlen < (int64_t(1) << 30)) {
    SSM_SCAN_BLOCK_N_SWITCH(p.dstate, KN, KW, [&] {
      const dim3 block(kLanes * KW);
      f.pack_B = bc_packable<T>(p.B, p.dstate, KN), f.pack_C = !only_checkpoints && bc_packable<T>(p.C, p.dstate, KN);
      auto kernel = only_checkpoints       ? fwd_block_kernel<T, KN, KW, false, true>
                    : checkpoint_layout(p) ? fwd_block_kernel<T, KN, KW, true, true>
                                           : fwd_block_kernel<T, KN, KW, true, false>;
      // 8 blocks of ~27 KB per SM: the largest shared-memory carveout
      cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared);
      kernel<<<grid, block, 0, stream>>>(p, f);
    });
    return;
  }
  SSM_SCAN_THREAD_N_SWITCH(p.dstate, KN, [&] {
    if (only_checkpoints) fwd_kernel<T, KN, false, true><<<grid, kFwdThreads, 0, stream>>>(p, f);
    else if (checkpoint_layout(p)) fwd_kernel<T, KN, true, true><<<grid, kFwdThreads, 0, stream>>>(p, f);
    else fwd_kernel<T, KN, true, false><<<grid, kFwdThreads, 0, stream>>>(p, f);
  });
}

}  // namespace ssm::cuda::scan_thread
