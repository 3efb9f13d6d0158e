// Selective scan (Mamba-1) backward for N <= 16 on the GPU. Pre-pass: the forward kernel in
// checkpoint mode stores the state before every kSteps-step chunk (chunk_states (B, D, nchunks, N)
// float32, D fastest), unless the forward wrote them already (chunk_states_filled: the fused
// Mamba-1 backward recomputes y with them). Then a block of two warps takes 32 channels of one
// (batch, B/C group), warp w owning state entries [w kN/2, (w + 1) kN/2) of every channel (lane).
// Registers stay under 128 (8 blocks, 16 warps per SM) because a thread walks each 16-step chunk
// (in reverse) as two 8-step halves, later half first: per half and state entry it recomputes the
// states from the chunk's checkpoint (the later half re-runs the earlier half's 8 steps without
// storing them), walks the half back with the adjoint e (kept per (n, thread) in shared memory
// across halves and chunks) and accumulates the half's per-step sums over its entries (S = sum g B,
// R = sum A g a h_prev, y = sum C h) in registers. Per chunk each warp prepares the per-step values
// (dt, u, dy = dout silu(z), dz per unit y) of 4 steps of each half for the block, and after each
// half adds the other warp's sums for those 4 steps and writes their du, ddelta, dz. dB / dC of
// (n, t) are sums over the 32 channels: a shared transpose per warp and entry, then one atomic add
// per (n, t) and block into the zeroed float32 outputs (not bitwise reproducible across runs).
#pragma once
#include <cstdlib>

#include "cuda/selective_scan_bwd.cuh"
#include "cuda/selective_scan_fwd_thread.cuh"

namespace ssm::cuda::scan_thread {

constexpr int kHalf = kSteps / 2;  // the reverse walk's unit
constexpr int kQ = kHalf / 2;      // steps of a half that one warp prepares and finishes
constexpr int kBwdThreads = 64;
constexpr int kXR = 36;  // transpose row: 32 lanes + pad (conflict-free 16-byte reads)

template <int kN>
struct Smem {
  static constexpr int kS = kN / 2;  // state entries per thread
  float dt[kSteps][32], u[kSteps][32], dy[kSteps][32], dzf[kSteps][32];  // the chunk's steps by lane
  float B[kN][kSteps], C[kN][kSteps];                                    // the chunk's B, C
  float A[kS][kBwdThreads], e[kS][kBwdThreads], dA[kS][kBwdThreads];              // per (entry, thread)
  float x[2][2 * kHalf][kXR];   // per warp: one n's dB (rows 0..7) and dC (8..15) by lane
  float part[2][2][3][kQ][32];  // per half and writer warp: S, R, y of the other warp's 4 steps
  float dpar[2][32];            // the end: warp 1's dD and d dt_bias sums
};

// kC consecutive elements: one aligned vector access where the row allows it.
template <typename T, int kC>
struct alignas(kC * sizeof(T) < 16 ? kC * sizeof(T) : 16) Run {
  T e[kC];
};

// kC steps of one row from t0 (zero past L).
template <int kC, typename T>
__device__ __forceinline__ void load_n(const Row<T>& r, T (&v)[kC], int64_t t0, int64_t L) {
  const T* q = r.base + t0 * r.sL;
  if (r.vec && t0 + kC <= L) {
    const Run<T, kC> x = *reinterpret_cast<const Run<T, kC>*>(q);
#pragma unroll
    for (int i = 0; i < kC; ++i) v[i] = x.e[i];
    return;
  }
#pragma unroll
  for (int i = 0; i < kC; ++i) v[i] = t0 + i < L ? q[i * r.sL] : zero<T>();
}

template <int kC, typename T>
__device__ __forceinline__ void store_n(const Row<T>& r, const float (&v)[kC], int64_t t0, int64_t L) {
  T* q = r.base + t0 * r.sL;
  if (r.vec && t0 + kC <= L) {
    Run<T, kC> x;
#pragma unroll
    for (int i = 0; i < kC; ++i) x.e[i] = from_float<T>(v[i]);
    *reinterpret_cast<Run<T, kC>*>(q) = x;
    return;
  }
#pragma unroll
  for (int i = 0; i < kC; ++i)
    if (t0 + i < L) q[i * r.sL] = from_float<T>(v[i]);
}

__device__ __forceinline__ void prefetch_l2(const void* a) { asm volatile("prefetch.global.L2 [%0];" ::"l"(a)); }

// Per-step sums over a warp's state entries for one half.
struct Sums {
  float S[kHalf], R[kHalf], y[kHalf];
};

// Bits of Pair::vec: which rows take 16-byte packs.
enum VecBit {
  kVecU = 1, kVecDelta = 2, kVecZ = 4, kVecDout = 8, kVecDu = 16, kVecDdelta = 32, kVecDz = 64, kVecBC = 128
};

// softplus'(x) = 1 - exp(-softplus(x)) = -expm1(-dt): below 0.25 its Taylor series to degree 7
// (relative error < 2e-9), above 1 - exp(-dt) (< 1e-6); a third of expm1f's instructions.
__device__ __forceinline__ float softplus_grad(float dt) {
  constexpr float c[7] = {1.f, -1.f / 2, 1.f / 6, -1.f / 24, 1.f / 120, -1.f / 720, 1.f / 5040};
  float q = c[6];
#pragma unroll
  for (int k = 5; k >= 0; --k) q = fmaf(q, dt, c[k]);
  return dt < 0.25f ? dt * q : 1.f - ex2(-dt * kLog2e);
}

template <typename T, int kN>
struct Pair {
  static constexpr int kS = kN / 2;
  const SelectiveScanParams& p;
  Smem<kN>& sm;
  int64_t b, g, d, L;
  int tid, lane, w, nlo, nhi, vec;
  bool valid;
  float Dd, bias;

  // Rows are rebuilt where used (a few instructions per chunk) rather than held in registers.
  __device__ __forceinline__ Row<T> row(const TensorArg& t, int bit) const {
    Row<T> r;
    r.init(t, b, d, (vec & bit) != 0);
    return r;
  }

  // Where the states before chunk ch start (checkpoint or initial state; nullptr: zeros), and the
  // stride of n there.
  __device__ __forceinline__ const float* start_states(int64_t ch, int64_t& sn) const {
    const TensorArg& ck = ch > 0 ? p.chunk_states : p.initial_state;
    sn = ch > 0 ? ck.stride[3] : ck.stride[2];
    if (!has(ck)) return nullptr;
    return ptr<float>(ck) + b * ck.stride[0] + d * ck.stride[1] + (ch > 0 ? ch * ck.stride[2] : 0);
  }

  // The chunk's B / C tiles: with L-contiguous aligned rows, 16-byte loads of 8 steps of one (tensor, n).
  __device__ __forceinline__ void stage_bc(int64_t t0) const {
    if ((vec & kVecBC) && t0 + kSteps <= L) {
      for (int q = tid; q < 2 * kN * 2; q += kBwdThreads) {
        const int which = q / (2 * kN), n = q / 2 % kN, hf = q % 2;
        const TensorArg& src = which ? p.C : p.B;
        float v[kHalf] = {};
        if (n < p.dstate) {
          T r[kHalf];
          Row<T> rw;
          rw.base = ptr<T>(src) + b * src.stride[0] + g * src.stride[1] + n * src.stride[2];
          rw.sL = 1, rw.vec = true;
          load_n<kHalf>(rw, r, t0 + kHalf * hf, L);
#pragma unroll
          for (int e = 0; e < kHalf; ++e) v[e] = to_float(r[e]);
        }
        float4* dst = reinterpret_cast<float4*>((which ? sm.C[n] : sm.B[n]) + kHalf * hf);
        dst[0] = make_float4(v[0], v[1], v[2], v[3]), dst[1] = make_float4(v[4], v[5], v[6], v[7]);
      }
      return;
    }
    BcSrc<T, kN> Bs, Cs;
    Bs.init(p.B, b, g);
    Cs.init(p.C, b, g);
    for (int e = tid; e < kN * kSteps; e += kBwdThreads) {
      sm.B[Bs.state_of(e)][Bs.step_of(e)] = to_float(Bs.load(e, t0, L, p.dstate));
      sm.C[Cs.state_of(e)][Cs.step_of(e)] = to_float(Cs.load(e, t0, L, p.dstate));
    }
  }

  // Step i < 8 of this warp's share: 4 of each half (steps 4w..4w+3 and 8+4w..8+4w+3).
  __device__ __forceinline__ int own_step(int i) const { return (i / kQ) * kHalf + w * kQ + i % kQ; }

  // This warp's 8 steps of the chunk into the shared per-step columns; the chunk's B / C tiles.
  __device__ __forceinline__ void prepare(int64_t t0) const {
    T ru[2][kQ], rd[2][kQ], ro[2][kQ], rz[2][kQ];
#pragma unroll
    for (int q = 0; q < 2; ++q) {
      const int64_t ts = t0 + own_step(q * kQ);
      load_n<kQ>(row(p.u, kVecU), ru[q], ts, L);
      load_n<kQ>(row(p.delta, kVecDelta), rd[q], ts, L);
      load_n<kQ>(row(p.dout, kVecDout), ro[q], ts, L);
      if (has(p.z)) load_n<kQ>(row(p.z, kVecZ), rz[q], ts, L);
    }
    stage_bc(t0);
#pragma unroll
    for (int i = 0; i < kHalf; ++i) {
      const int s = own_step(i);
      const bool in = valid && t0 + s < L;  // idle lanes and steps past L contribute nothing
      const int q = i / kQ, j = i % kQ;
      float dt = to_float(rd[q][j]) + bias;
      if (p.softplus) dt = softplus_fast(dt);
      float dy = in ? to_float(ro[q][j]) : 0.f, dzf = 0.f;
      if (has(p.z)) {
        const float zz = to_float(rz[q][j]), sg = sigmoid_of<T>(zz);
        dzf = dy * sg * (1.f + zz * (1.f - sg));
        dy *= zz * sg;
      }
      sm.dt[s][lane] = in ? dt : 0.f, sm.u[s][lane] = to_float(ru[q][j]);
      sm.dy[s][lane] = dy, sm.dzf[s][lane] = dzf;
    }
  }

  // L2 prefetches of what chunk ch reads from memory (its checkpoints, this warp's L-contiguous rows,
  // this thread's B / C piece), issued a chunk ahead: its loads then wait for L2, not DRAM.
  __device__ __forceinline__ void prefetch(int64_t ch) const {
    const int64_t t0 = ch * kSteps;
    if (ch > 0) {
      const TensorArg& ck = p.chunk_states;
      const float* q = ptr<float>(ck) + b * ck.stride[0] + d * ck.stride[1] + ch * ck.stride[2];
      for (int n = nlo; n < nhi; ++n) prefetch_l2(q + n * ck.stride[3]);
    }
    auto rowp = [&](const TensorArg& t, int bit) {
      if (!(vec & bit)) return;
      const T* q = ptr<T>(t) + b * t.stride[0] + d * t.stride[1] + t0;
      prefetch_l2(q + own_step(0));
      prefetch_l2(q + own_step(kQ));
    };
    rowp(p.u, kVecU);
    rowp(p.delta, kVecDelta);
    rowp(p.dout, kVecDout);
    if (has(p.z)) rowp(p.z, kVecZ);
    if (!(vec & kVecBC) || t0 + kSteps > L) return;
    for (int q = tid; q < 2 * kN * 2; q += kBwdThreads) {
      const int which = q / (2 * kN), n = q / 2 % kN, hf = q % 2;
      const TensorArg& src = which ? p.C : p.B;
      if (n < p.dstate)
        prefetch_l2(ptr<T>(src) + b * src.stride[0] + g * src.stride[1] + n * src.stride[2] + t0 + kHalf * hf);
    }
  }

  // Entry nlo's state before chunk ch (loaded once per chunk, early: both halves start from it).
  __device__ __forceinline__ float first_start(int64_t ch) const {
    int64_t hsn;
    const float* hq = start_states(ch, hsn);
    return hq && nlo < nhi ? hq[nlo * hsn] : 0.f;
  }

  template <int kH>
  __device__ __forceinline__ void half(int64_t ch, int64_t t0, Sums& s, float hfirst) const {
    constexpr int kPre = kH * kHalf, kEnd = kPre + kHalf;  // steps [0, kPre) rerun, [kPre, kEnd) walked
    float dt[kEnd], dtu[kEnd], dy[kHalf];
#pragma unroll
    for (int i = 0; i < kEnd; ++i) dt[i] = sm.dt[i][lane], dtu[i] = dt[i] * sm.u[i][lane];
#pragma unroll
    for (int i = 0; i < kHalf; ++i) dy[i] = sm.dy[kPre + i][lane], s.S[i] = 0.f, s.R[i] = 0.f, s.y[i] = 0.f;
    float (*xw)[kXR] = sm.x[w];
    int64_t hsn;
    const float* hq = start_states(ch, hsn);  // entry nlo's start state, then the next ones
    // lane j adds row j >> 1 of the transpose: dB (rows 0..7) or dC (8..15) at step t0 + kPre + row % 8
    const int row = lane >> 1;
    const int64_t t = t0 + kPre + row % kHalf;
    const TensorArg& o = row < kHalf ? p.dB : p.dC;
    const int bcn = int(o.stride[2]), hstep = int(hsn);  // |kN x stride| < 2^31 (host-checked)
    float* bc = ptr<float>(o) + b * o.stride[0] + g * o.stride[1] + t * o.stride[3] + nlo * bcn;
    const bool adds = !(lane & 1) && t < L;
    if (hq) hq += nlo * hstep;
    float hnext = hfirst;
#pragma unroll 1
    for (int n = nlo; n < nhi; ++n, bc += bcn) {
      const int k = n - nlo;
      const float h0 = hnext;
      if (hq && n + 1 < nhi) hq += hstep, hnext = *hq;  // in flight during this entry
      const float An = sm.A[k][tid], A2 = An * kLog2e;
      const float* Bn = sm.B[n];
      const float* Cn = sm.C[n];
      float hp = h0;
#pragma unroll
      for (int i = 0; i < kPre; ++i) hp = fmaf(ex2(dt[i] * A2), hp, dtu[i] * Bn[i]);
      const float hin = hp;
      float a[kHalf], h[kHalf];
#pragma unroll
      for (int i = 0; i < kHalf; ++i) {
        a[i] = ex2(dt[kPre + i] * A2);
        hp = fmaf(a[i], hp, dtu[kPre + i] * Bn[kPre + i]);
        h[i] = hp;
      }
      float e = sm.e[k][tid], dAn = 0.f;
#pragma unroll
      for (int i = kHalf - 1; i >= 0; --i) {
        const float Ci = Cn[kPre + i], gn = fmaf(Ci, dy[i], e), ga = gn * a[i];
        const float gah = ga * (i > 0 ? h[i - 1] : hin);
        s.y[i] = fmaf(Ci, h[i], s.y[i]);
        dAn = fmaf(gah, dt[kPre + i], dAn);
        s.S[i] = fmaf(gn, Bn[kPre + i], s.S[i]);
        s.R[i] = fmaf(An, gah, s.R[i]);
        xw[i][lane] = gn * dtu[kPre + i];
        xw[kHalf + i][lane] = h[i] * dy[i];
        e = ga;
      }
      sm.e[k][tid] = e;
      sm.dA[k][tid] += dAn;
      // the row's sum over the warp's 32 channels: lane j takes half j & 1 of it, its pair the other
      __syncwarp();
      const float4* q = reinterpret_cast<const float4*>(xw[row] + 16 * (lane & 1));
      float v = 0.f;
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const float4 x = q[c];
        v += (x.x + x.y) + (x.z + x.w);
      }
      v += __shfl_xor_sync(0xffffffffu, v, 1);
      if (adds) atomicAdd(bc, v);
      __syncwarp();
    }
  }

  // This warp's sums of half kH for the other warp's 4 steps into shared memory (before the
  // block barrier)...
  template <int kH>
  __device__ __forceinline__ void give(const Sums& s) const {
#pragma unroll
    for (int j = 0; j < kQ; ++j) {
      // the other warp's steps 4 (1 - w) + j of the half
      sm.part[kH][w][0][j][lane] = w ? s.S[j] : s.S[kQ + j];
      sm.part[kH][w][1][j][lane] = w ? s.R[j] : s.R[kQ + j];
      sm.part[kH][w][2][j][lane] = w ? s.y[j] : s.y[kQ + j];
    }
  }

  // ... and after it adds the other's sums for its own 4 steps 4w + j, writing their du, ddelta,
  // dz; dD, d dt_bias partial sums.
  template <int kH>
  __device__ __forceinline__ void finish(const Sums& s, int64_t t0, float& dDp, float& dbp) const {
    float dus[kQ], ddt[kQ], dzs[kQ];
#pragma unroll
    for (int j = 0; j < kQ; ++j) {
      const int st = kH * kHalf + w * kQ + j;
      const float (*o)[kQ][32] = sm.part[kH][1 - w];
      const float S = (w ? s.S[kQ + j] : s.S[j]) + o[0][j][lane];
      const float R = (w ? s.R[kQ + j] : s.R[j]) + o[1][j][lane];
      const float y = (w ? s.y[kQ + j] : s.y[j]) + o[2][j][lane];
      const float dt = sm.dt[st][lane], uu = sm.u[st][lane], dy = sm.dy[st][lane];
      dus[j] = fmaf(dt, S, Dd * dy);
      ddt[j] = fmaf(uu, S, R);
      if (p.softplus) ddt[j] *= softplus_grad(dt);
      if (t0 + st < L) dbp += ddt[j];
      dDp = fmaf(dy, uu, dDp);
      dzs[j] = sm.dzf[st][lane] * fmaf(Dd, uu, y);
    }
    if (!valid) return;
    const int64_t ts = t0 + kH * kHalf + w * kQ;
    store_n<kQ>(row(p.du, kVecDu), dus, ts, L);
    store_n<kQ>(row(p.ddelta, kVecDdelta), ddt, ts, L);
    if (has(p.z)) store_n<kQ>(row(p.dz, kVecDz), dzs, ts, L);
  }

  __device__ void init_entries() const {
    for (int k = 0; k < kS; ++k) {
      const int n = nlo + k;
      const bool in = n < nhi;
      sm.A[k][tid] = in ? ptr<float>(p.A)[d * p.A.stride[0] + n * p.A.stride[1]] : 0.f;
      const TensorArg& dl = p.dlast;
      const bool given = in && valid && has(dl);
      sm.e[k][tid] = given ? ptr<float>(dl)[b * dl.stride[0] + d * dl.stride[1] + n * dl.stride[2]] : 0.f;
      sm.dA[k][tid] = 0.f;
    }
  }

  // dA, the initial state's gradient, dD and d dt_bias.
  __device__ void write_params(float dDp, float dbp) const {
    if (w == 1) sm.dpar[0][lane] = dDp, sm.dpar[1][lane] = dbp;
    __syncthreads();
    if (!valid) return;
    for (int n = nlo; n < nhi; ++n) {
      ptr<float>(p.dA)[b * p.dA.stride[0] + d * p.dA.stride[1] + n * p.dA.stride[2]] = sm.dA[n - nlo][tid];
      const TensorArg& di = p.dinitial_state;
      if (has(di)) ptr<float>(di)[b * di.stride[0] + d * di.stride[1] + n * di.stride[2]] = sm.e[n - nlo][tid];
    }
    if (w != 0) return;
    if (has(p.dD)) ptr<float>(p.dD)[b * p.dD.stride[0] + d * p.dD.stride[1]] = dDp + sm.dpar[0][lane];
    if (has(p.ddt_bias))
      ptr<float>(p.ddt_bias)[b * p.ddt_bias.stride[0] + d * p.ddt_bias.stride[1]] = dbp + sm.dpar[1][lane];
  }
};

template <typename T, int kN>
__global__ void __launch_bounds__(kBwdThreads, 8) bwd_kernel(SelectiveScanParams p, int vec) {
  __shared__ __align__(16) Smem<kN> sm;
  Pair<T, kN> t{p, sm};
  const int64_t Dg = p.dim / p.ngroups, bpg = (Dg + 31) / 32;
  t.tid = threadIdx.x, t.lane = threadIdx.x % 32, t.w = threadIdx.x / 32, t.vec = vec;
  const int64_t c = (blockIdx.x % bpg) * 32 + t.lane;
  t.b = blockIdx.y, t.g = blockIdx.x / bpg, t.L = p.seqlen;
  t.valid = c < Dg;
  t.d = t.g * Dg + (t.valid ? c : Dg - 1);  // idle lanes shadow the group's last channel, writing nothing
  t.nlo = t.w * Pair<T, kN>::kS;
  t.nhi = min(int64_t(t.nlo + Pair<T, kN>::kS), p.dstate);
  t.Dd = has(p.D) ? ptr<float>(p.D)[t.d * p.D.stride[0]] : 0.f;
  t.bias = has(p.dt_bias) ? ptr<float>(p.dt_bias)[t.d * p.dt_bias.stride[0]] : 0.f;
  t.init_entries();
  float dDp = 0.f, dbp = 0.f;
  const int64_t nchunks = (p.seqlen + kSteps - 1) / kSteps;
  for (int64_t ch = nchunks - 1; ch >= 0; --ch) {
    const int64_t t0 = ch * kSteps;
    Sums s;
    const float hfirst = t.first_start(ch);
    if (ch > 0) t.prefetch(ch - 1);
    t.prepare(t0);
    __syncthreads();
    t.template half<1>(ch, t0, s, hfirst);
    t.template give<1>(s);
    __syncthreads();
    t.template finish<1>(s, t0, dDp, dbp);
    t.template half<0>(ch, t0, s, hfirst);
    t.template give<0>(s);
    __syncthreads();
    t.template finish<0>(s, t0, dDp, dbp);
  }
  t.write_params(dDp, dbp);
}

// Whether the backward runs here: takes(p) (the forward's conditions), a workspace of this
// kernel's layout (D fastest) when L needs more than one chunk, and 32-bit steps of n through the
// start states and dB / dC (the kernel's pointer increments).
inline bool takes_bwd(const SelectiveScanParams& p) {
  auto fits = [](const TensorArg& t, int dim) {
    return !t.present() || std::abs(t.stride[dim]) * 16 < (int64_t(1) << 31);
  };
  return takes(p) && (p.seqlen <= kSteps || checkpoint_layout(p)) && fits(p.chunk_states, 3) &&
         fits(p.initial_state, 2) && fits(p.dB, 2) && fits(p.dC, 2);
}

template <typename T>
void launch_bwd(const SelectiveScanParams& p, cudaStream_t stream) {
  const int64_t total = p.nslices * p.batch * p.ngroups * p.dstate * p.seqlen;
  if (total > 0) scan_bwd::zero_bc<<<ceil_div(total, 256), 256, 0, stream>>>(p);
  if (p.seqlen > kSteps && !p.chunk_states_filled) launch_fwd<T>(p, true, stream);
  auto bit = [&](const TensorArg& t, int b) { return has(t) && rows_vectorizable<T>(t, 2) ? b : 0; };
  const int vec = bit(p.u, kVecU) | bit(p.delta, kVecDelta) | bit(p.z, kVecZ) | bit(p.dout, kVecDout) |
                  bit(p.du, kVecDu) | bit(p.ddelta, kVecDdelta) | bit(p.dz, kVecDz) |
                  (rows_vectorizable<T>(p.B, 3) && rows_vectorizable<T>(p.C, 3) ? kVecBC : 0);
  const int64_t Dg = p.dim / p.ngroups;
  const dim3 grid(unsigned(p.ngroups * ((Dg + 31) / 32)), unsigned(p.batch));
  SSM_SCAN_THREAD_N_SWITCH(p.dstate, KN, [&] {
    auto kernel = bwd_kernel<T, KN>;
    cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, int(cudaSharedmemCarveoutMaxShared));
    kernel<<<grid, kBwdThreads, 0, stream>>>(p, vec);
  });
}

}  // namespace ssm::cuda::scan_thread
