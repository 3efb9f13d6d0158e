// Selective scan (Mamba-1) backward for N <= 16: a block of kW = 2 (or 4, for grids too small to
// fill the GPU) warps over 32 channels of one (batch, B/C group), warp w owning state entries
// [w kN/kW, (w + 1) kN/kW) of every channel (lane).
// Registers stay under 128 (16 warps per SM) because a thread walks one 16-step chunk
// as two 8-step halves, later half first: per half and state entry it recomputes the states from
// the chunk's checkpoint (the later half re-runs the earlier half's 8 steps without storing
// them), walks the half back with the adjoint e (kept per (n, thread) in shared memory across
// halves and chunks) and accumulates the half's per-step sums over its entries (S = sum g B,
// R = sum A g a h_prev, y = sum C h) in registers. Per chunk each warp prepares the per-step
// values (dt, u, dy = dout silu(z), dz per unit y) of 8 steps for the block (warps 0 and 1); per
// half one of them adds the other warps' sums and writes du, ddelta, dz of the half. dB / dC of (n, t) are sums over
// the 32 channels: a shared transpose per warp and n, then one atomic add per (n, t) and block
// into the zeroed float32 outputs (not bitwise reproducible across runs, as before).
// kP = 2 walks two state entries per pass (two independent chains per thread; dt, u, dy read from
// shared memory per step instead of held in registers): twice the instruction-level parallelism for
// the four-warp blocks of small grids (N > 8; session 6 round 1, H200, Mamba-1's D 1536 at batch 8:
// 1.198 ms against 1.344; with two warps at D 4096 it was slower, 2.677 against 2.227): the four-warp
// default (two_entries).
#pragma once
#include <cstdlib>

#include "cuda/selective_scan_bwd.cuh"
#include "cuda/selective_scan_fwd_thread.cuh"

namespace ssm::cuda::scan_pair {

using scan_thread::kLog2e;
using scan_thread::kSteps;
constexpr int kHalf = kSteps / 2;  // the reverse walk's unit and a warp's share of the per-step work
constexpr int kXR = 36;  // transpose row: 32 lanes + pad (conflict-free 16-byte reads)

template <int kN, int kW>
struct Smem {
  static constexpr int kS = kN / kW, kT = 32 * kW;  // state entries per thread, threads
  float dt[kSteps][32], u[kSteps][32], dy[kSteps][32], dzf[kSteps][32];  // the chunk's steps by lane
  float B[kN][kSteps], C[kN][kSteps];                                    // the chunk's B, C
  float A[kS][kT], e[kS][kT], dA[kS][kT];                                // per (entry, thread)
  float x[kW][2 * kHalf][kXR];        // per warp: one n's dB (rows 0..7) and dC (8..15) by lane
  float part[2][kW - 1][3][kHalf][32];  // per half: S, R, y of the warps that do not finish it
  float dpar[2][32];                  // the end: warp 1's dD and d dt_bias sums
};

// 8 steps of one row from t0 (zero past L).
template <typename T>
__device__ __forceinline__ void load_half(const scan_thread::Row<T>& r, T (&v)[kHalf], int64_t t0, int64_t L) {
  const T* q = r.base + t0 * r.sL;
  if (r.vec && t0 + kHalf <= L) {
#pragma unroll
    for (int c = 0; c < kHalf / Pack<T>::kN; ++c) {
      Pack<T> pk;
      pk.load(q + c * Pack<T>::kN);
#pragma unroll
      for (int e = 0; e < Pack<T>::kN; ++e) v[c * Pack<T>::kN + e] = pk.e[e];
    }
    return;
  }
#pragma unroll
  for (int i = 0; i < kHalf; ++i) v[i] = t0 + i < L ? q[i * r.sL] : scan_thread::zero<T>();
}

template <typename T>
__device__ __forceinline__ void store_half(const scan_thread::Row<T>& r, const float (&v)[kHalf], int64_t t0, int64_t L) {
  T* q = r.base + t0 * r.sL;
  if (r.vec && t0 + kHalf <= L) {
#pragma unroll
    for (int c = 0; c < kHalf / Pack<T>::kN; ++c) {
      Pack<T> pk;
#pragma unroll
      for (int e = 0; e < Pack<T>::kN; ++e) pk.e[e] = from_float<T>(v[c * Pack<T>::kN + e]);
      pk.store(q + c * Pack<T>::kN);
    }
    return;
  }
#pragma unroll
  for (int i = 0; i < kHalf; ++i)
    if (t0 + i < L) q[i * r.sL] = from_float<T>(v[i]);
}

// Per-step sums over a warp's state entries for one half.
struct Sums {
  float S[kHalf], R[kHalf], y[kHalf];
};

// Bits of Pair::vec: which rows take 16-byte packs.
enum VecBit { kVecU = 1, kVecDelta = 2, kVecZ = 4, kVecDout = 8, kVecDu = 16, kVecDdelta = 32, kVecDz = 64, kVecBC = 128 };

// Lane j's half (j & 1) of a 32-channel row, summed with its pair's half: the row's sum in both lanes.
__device__ __forceinline__ float row_sum(const float* row, int lane) {
  const float4* q = reinterpret_cast<const float4*>(row + 16 * (lane & 1));
  float v = 0.f;
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    const float4 x = q[c];
    v += (x.x + x.y) + (x.z + x.w);
  }
  return v + __shfl_xor_sync(0xffffffffu, v, 1);
}

// softplus'(x) = 1 - exp(-softplus(x)) = -expm1(-dt): below 0.25 its Taylor series to degree 7
// (relative error < 2e-9), above 1 - exp(-dt) (< 1e-6); a third of expm1f's instructions.
__device__ __forceinline__ float softplus_grad(float dt) {
  constexpr float c[7] = {1.f, -1.f / 2, 1.f / 6, -1.f / 24, 1.f / 120, -1.f / 720, 1.f / 5040};
  float q = c[6];
#pragma unroll
  for (int k = 5; k >= 0; --k) q = fmaf(q, dt, c[k]);
  return dt < 0.25f ? dt * q : 1.f - scan_thread::ex2(-dt * kLog2e);
}

template <typename T, int kN, int kW, int kP>
struct Pair {
  static constexpr int kS = kN / kW, kThreads = 32 * kW;
  static_assert(kS % kP == 0, "entries per thread must be a multiple of the entries per pass");
  const SelectiveScanParams& p;
  Smem<kN, kW>& sm;
  int64_t b, g, d, L;
  int tid, lane, w, nlo, nhi, vec;
  bool valid;
  float Dd, bias;

  // Rows are rebuilt where used (a few instructions per chunk) rather than held in registers.
  __device__ __forceinline__ scan_thread::Row<T> row(const TensorArg& t, int bit) const {
    scan_thread::Row<T> r;
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
      for (int q = tid; q < 2 * kN * 2; q += kThreads) {
        const int which = q / (2 * kN), n = q / 2 % kN, hf = q % 2;
        const TensorArg& src = which ? p.C : p.B;
        float v[kHalf] = {};
        if (n < p.dstate) {
          T r[kHalf];
          scan_thread::Row<T> rw;
          rw.base = ptr<T>(src) + b * src.stride[0] + g * src.stride[1] + n * src.stride[2];
          rw.sL = 1, rw.vec = true;
          load_half(rw, r, t0 + kHalf * hf, L);
#pragma unroll
          for (int e = 0; e < kHalf; ++e) v[e] = to_float(r[e]);
        }
        float4* dst = reinterpret_cast<float4*>((which ? sm.C[n] : sm.B[n]) + kHalf * hf);
        dst[0] = make_float4(v[0], v[1], v[2], v[3]), dst[1] = make_float4(v[4], v[5], v[6], v[7]);
      }
      return;
    }
    scan_thread::BcSrc<T, kN> Bs, Cs;
    Bs.init(p.B, b, g);
    Cs.init(p.C, b, g);
    for (int e = tid; e < kN * kSteps; e += kThreads) {
      sm.B[Bs.state_of(e)][Bs.step_of(e)] = to_float(Bs.load(e, t0, L, p.dstate));
      sm.C[Cs.state_of(e)][Cs.step_of(e)] = to_float(Cs.load(e, t0, L, p.dstate));
    }
  }

  // The chunk's B / C tiles; warps 0 and 1: their 8 steps of the chunk into the shared per-step columns.
  __device__ __forceinline__ void prepare(int64_t t0) const {
    if (kW > 2 && w >= 2) return stage_bc(t0);
    const int64_t ts = t0 + w * kHalf;
    T ru[kHalf], rd[kHalf], ro[kHalf], rz[kHalf];
    load_half(row(p.u, kVecU), ru, ts, L);
    load_half(row(p.delta, kVecDelta), rd, ts, L);
    load_half(row(p.dout, kVecDout), ro, ts, L);
    if (has(p.z)) load_half(row(p.z, kVecZ), rz, ts, L);
    stage_bc(t0);
#pragma unroll
    for (int i = 0; i < kHalf; ++i) {
      const int s = w * kHalf + i;
      const bool in = valid && ts + i < L;  // idle lanes and steps past L contribute nothing
      float dt = to_float(rd[i]) + bias;
      if (p.softplus) dt = scan_thread::softplus_fast(dt);
      float dy = in ? to_float(ro[i]) : 0.f, dzf = 0.f;
      if (has(p.z)) {
        const float zz = to_float(rz[i]), sg = scan_thread::sigmoid_of<T>(zz);
        dzf = dy * sg * (1.f + zz * (1.f - sg));
        dy *= zz * sg;
      }
      sm.dt[s][lane] = in ? dt : 0.f, sm.u[s][lane] = to_float(ru[i]);
      sm.dy[s][lane] = dy, sm.dzf[s][lane] = dzf;
    }
  }

  // One half (kH = 1: steps 8..15, kH = 0: 0..7) of chunk ch for every entry of this warp.
  // Entry nlo's state before chunk ch (loaded once per chunk, early: both halves start from it).
  __device__ __forceinline__ float first_start(int64_t ch, int j = 0) const {
    int64_t hsn;
    const float* hq = start_states(ch, hsn);
    return hq && nlo + j < nhi ? hq[(nlo + j) * hsn] : 0.f;
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
    const int bcn = int(o.stride[2]), hstep = int(hsn);  // |kN x stride| < 2^31 (takes)
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
      for (int i = 0; i < kPre; ++i) hp = fmaf(scan_thread::ex2(dt[i] * A2), hp, dtu[i] * Bn[i]);
      const float hin = hp;
      float a[kHalf], h[kHalf];
#pragma unroll
      for (int i = 0; i < kHalf; ++i) {
        a[i] = scan_thread::ex2(dt[kPre + i] * A2);
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
      const float v = row_sum(xw[row], lane);
      if (adds) atomicAdd(bc, v);
      __syncwarp();
    }
  }

  // half() for two entries per pass (kP == 2): entries n and n + 1 run as two independent chains; the
  // second is idle (its B, C, A and adjoint zero, no atomics) where the warp's entry count is odd.
  template <int kH>
  __device__ __forceinline__ void half2(int64_t ch, int64_t t0, Sums& s, const float (&hfirst)[2]) const {
    constexpr int kPre = kH * kHalf;  // steps [0, kPre) rerun, [kPre, kPre + kHalf) walked
#pragma unroll
    for (int i = 0; i < kHalf; ++i) s.S[i] = 0.f, s.R[i] = 0.f, s.y[i] = 0.f;
    float (*xw)[kXR] = sm.x[w];
    int64_t hsn;
    const float* hq = start_states(ch, hsn);
    // lane j adds row j >> 1 of each entry's transpose: dB (rows 0..7) or dC (8..15) at step t0 + kPre + row % 8
    const int row = lane >> 1;
    const int64_t t = t0 + kPre + row % kHalf;
    const TensorArg& o = row < kHalf ? p.dB : p.dC;
    const int bcn = int(o.stride[2]), hstep = int(hsn);  // |kN x stride| < 2^31 (takes)
    float* bc = ptr<float>(o) + b * o.stride[0] + g * o.stride[1] + t * o.stride[3] + nlo * bcn;
    const bool adds = !(lane & 1) && t < L;
    if (hq) hq += nlo * hstep;
    float hnext[2] = {hfirst[0], hfirst[1]};
#pragma unroll 1
    for (int n = nlo; n < nhi; n += 2, bc += 2 * bcn) {
      const int k = n - nlo;
      const bool second = n + 1 < nhi;
      float An[2], A2[2], hp[2], hin[2], a[2][kHalf], h[2][kHalf], e[2], dAn[2], x1[2][2 * kHalf];
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        hp[j] = j == 0 || second ? hnext[j] : 0.f;
        if (hq && n + 2 + j < nhi) hnext[j] = hq[(k + 2 + j) * hstep];  // in flight during this pass
        An[j] = sm.A[k + j][tid], A2[j] = An[j] * kLog2e;
        e[j] = sm.e[k + j][tid], dAn[j] = 0.f;
      }
      const float* Bn[2] = {sm.B[n], sm.B[n + 1]};
      const float* Cn[2] = {sm.C[n], sm.C[n + 1]};
#pragma unroll
      for (int i = 0; i < kPre; ++i) {
        const float dt = sm.dt[i][lane], dtu = dt * sm.u[i][lane];
#pragma unroll
        for (int j = 0; j < 2; ++j) hp[j] = fmaf(scan_thread::ex2(dt * A2[j]), hp[j], dtu * Bn[j][i]);
      }
#pragma unroll
      for (int j = 0; j < 2; ++j) hin[j] = hp[j];
#pragma unroll
      for (int i = 0; i < kHalf; ++i) {
        const float dt = sm.dt[kPre + i][lane], dtu = dt * sm.u[kPre + i][lane];
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          a[j][i] = scan_thread::ex2(dt * A2[j]);
          hp[j] = fmaf(a[j][i], hp[j], dtu * Bn[j][kPre + i]);
          h[j][i] = hp[j];
        }
      }
#pragma unroll
      for (int i = kHalf - 1; i >= 0; --i) {
        const float dt = sm.dt[kPre + i][lane], dtu = dt * sm.u[kPre + i][lane], dy = sm.dy[kPre + i][lane];
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const float Ci = Cn[j][kPre + i], gn = fmaf(Ci, dy, e[j]), ga = gn * a[j][i];
          const float gah = ga * (i > 0 ? h[j][i - 1] : hin[j]);
          s.y[i] = fmaf(Ci, h[j][i], s.y[i]);
          dAn[j] = fmaf(gah, dt, dAn[j]);
          s.S[i] = fmaf(gn, Bn[j][kPre + i], s.S[i]);
          s.R[i] = fmaf(An[j], gah, s.R[i]);
          x1[j][i] = gn * dtu, x1[j][kHalf + i] = h[j][i] * dy;  // entry 0's to shared now, entry 1's later
          if (j == 0) xw[i][lane] = x1[0][i], xw[kHalf + i][lane] = x1[0][kHalf + i];
          e[j] = ga;
        }
      }
#pragma unroll
      for (int j = 0; j < 2; ++j) sm.e[k + j][tid] = e[j], sm.dA[k + j][tid] += dAn[j];
      // each entry's rows summed over the warp's 32 channels: lane j takes half j & 1 of a row, its pair the other
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        if (j == 1) {
#pragma unroll
          for (int i = 0; i < 2 * kHalf; ++i) xw[i][lane] = x1[1][i];
        }
        __syncwarp();
        const float v = row_sum(xw[row], lane);
        if (adds && (j == 0 || second)) atomicAdd(bc + j * bcn, v);
        __syncwarp();
      }
    }
  }

  // One half by kP entries per pass.
  template <int kH>
  __device__ __forceinline__ void walk(int64_t ch, int64_t t0, Sums& s, const float (&hfirst)[kP]) const {
    if constexpr (kP == 2) half2<kH>(ch, t0, s, hfirst);
    else half<kH>(ch, t0, s, hfirst[0]);
  }

  // The other warps' sums of half kH into shared memory (before the block barrier; warp kH finishes it)...
  template <int kH>
  __device__ __forceinline__ void give(const Sums& s) const {
    float (*o)[kHalf][32] = sm.part[kH][kW == 2 ? 0 : w < kH ? w : w - 1];
#pragma unroll
    for (int i = 0; i < kHalf; ++i) o[0][i][lane] = s.S[i], o[1][i][lane] = s.R[i], o[2][i][lane] = s.y[i];
  }

  // ... which warp kH adds after it, writing du, ddelta, dz of the half; dD, d dt_bias partial sums.
  template <int kH>
  __device__ __forceinline__ void finish(Sums& s, int64_t t0, float& dDp, float& dbp) const {
    float dus[kHalf], ddt[kHalf];
#pragma unroll
    for (int i = 0; i < kHalf; ++i) {
      const int st = kH * kHalf + i;
      float S = s.S[i] + sm.part[kH][0][0][i][lane], R = s.R[i] + sm.part[kH][0][1][i][lane];
      float y = s.y[i] + sm.part[kH][0][2][i][lane];
#pragma unroll
      for (int q = 1; q < kW - 1; ++q)
        S += sm.part[kH][q][0][i][lane], R += sm.part[kH][q][1][i][lane], y += sm.part[kH][q][2][i][lane];
      const float dt = sm.dt[st][lane], uu = sm.u[st][lane], dy = sm.dy[st][lane];
      dus[i] = fmaf(dt, S, Dd * dy);
      ddt[i] = fmaf(uu, S, R);
      if (p.softplus) ddt[i] *= softplus_grad(dt);
      if (t0 + st < L) dbp += ddt[i];
      dDp = fmaf(dy, uu, dDp);
      s.y[i] = sm.dzf[st][lane] * fmaf(Dd, uu, y);
    }
    if (!valid) return;
    const int64_t ts = t0 + kH * kHalf;
    store_half(row(p.du, kVecDu), dus, ts, L);
    store_half(row(p.ddelta, kVecDdelta), ddt, ts, L);
    if (has(p.z)) store_half(row(p.dz, kVecDz), s.y, ts, L);
  }

  __device__ void init_entries() const {
    for (int k = 0; k < kS; ++k) {
      const int n = nlo + k;
      const bool in = n < nhi;
      sm.A[k][tid] = in ? ptr<float>(p.A)[d * p.A.stride[0] + n * p.A.stride[1]] : 0.f;
      const TensorArg& dl = p.dlast;
      sm.e[k][tid] = in && valid && has(dl) ? ptr<float>(dl)[b * dl.stride[0] + d * dl.stride[1] + n * dl.stride[2]] : 0.f;
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

// kW warps over 32 channels (2 or 4; 4: twice the warps for grids too small to fill the GPU).
template <typename T, int kN, int kW, int kP>
__global__ void __launch_bounds__(32 * kW, 16 / kW) pair_bwd_kernel(SelectiveScanParams p, int vec) {
  __shared__ __align__(16) Smem<kN, kW> sm;
  Pair<T, kN, kW, kP> t{p, sm};
  const int64_t Dg = p.dim / p.ngroups, bpg = (Dg + 31) / 32;
  t.tid = threadIdx.x, t.lane = threadIdx.x % 32, t.w = threadIdx.x / 32, t.vec = vec;
  const int64_t c = (blockIdx.x % bpg) * 32 + t.lane;
  t.b = blockIdx.y, t.g = blockIdx.x / bpg, t.L = p.seqlen;
  t.valid = c < Dg;
  t.d = t.g * Dg + (t.valid ? c : Dg - 1);  // idle lanes shadow the group's last channel, writing nothing
  t.nlo = t.w * Pair<T, kN, kW, kP>::kS;
  t.nhi = min(int64_t(t.nlo + Pair<T, kN, kW, kP>::kS), p.dstate);
  t.Dd = has(p.D) ? ptr<float>(p.D)[t.d * p.D.stride[0]] : 0.f;
  t.bias = has(p.dt_bias) ? ptr<float>(p.dt_bias)[t.d * p.dt_bias.stride[0]] : 0.f;
  t.init_entries();
  float dDp = 0.f, dbp = 0.f;
  const int64_t nchunks = (p.seqlen + kSteps - 1) / kSteps;
  for (int64_t ch = nchunks - 1; ch >= 0; --ch) {
    const int64_t t0 = ch * kSteps;
    Sums s;
    float hfirst[kP];
#pragma unroll
    for (int j = 0; j < kP; ++j) hfirst[j] = t.first_start(ch, j);
    t.prepare(t0);
    __syncthreads();
    t.template walk<1>(ch, t0, s, hfirst);
    if (t.w != 1) t.template give<1>(s);
    __syncthreads();
    if (t.w == 1) t.template finish<1>(s, t0, dDp, dbp);
    t.template walk<0>(ch, t0, s, hfirst);
    if (t.w != 0) t.template give<0>(s);
    __syncthreads();
    if (t.w == 0) t.template finish<0>(s, t0, dDp, dbp);
  }
  t.write_params(dDp, dbp);
}

// Host: 32-bit steps of n through the start states and dB / dC (the kernel's pointer increments);
// the op layer's _thread_bwd asks the same of L, D and the initial state.
inline bool takes(const SelectiveScanParams& p) {
  auto fits = [](const TensorArg& t, int dim) { return !t.present() || std::abs(t.stride[dim]) * 16 < (int64_t(1) << 31); };
  return fits(p.chunk_states, 3) && fits(p.initial_state, 2) && fits(p.dB, 2) && fits(p.dC, 2);
}

// Four warps per 32 channels when that grid still fits in one wave (4 blocks per SM): small grids get
// twice the warps (session 5 round 2, H200: 1.50 ms against 1.83 at the mamba-130m shape, D 1536;
// 2.98 against 2.24 at D 4096, where two warps fill the GPU). SSM_SCAN_BWD_WARPS=2 or 4 forces one
// (read per call, so one process can time both).
inline bool four_warps(int64_t blocks) {
  const char* v = std::getenv("SSM_SCAN_BWD_WARPS");
  if (v && (v[0] == '2' || v[0] == '4')) return v[0] == '4';
  static const int sms = [] {
    int dev = 0, n = 132;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev);
    return n;
  }();
  return blocks <= 4 * int64_t(sms);
}

// Two entries per pass for four-warp blocks (H200, D 1536 at batch 8: 1.216 ms against 1.350, session 7 round
// 1b), one with two warps (D 4096: 2.227 against 2.677, session 6). SSM_SCAN_BWD_ILP=0 / 1 forces one (read per
// call). Session 6's dB difference between two backward calls was the atomics' order: two identical calls of
// either form differ by one bf16 ulp in dB / dC (session 7 round 1b, 24 repeats each).
inline bool two_entries(bool four) {
  const char* v = std::getenv("SSM_SCAN_BWD_ILP");
  return v && (v[0] == '0' || v[0] == '1') ? v[0] == '1' : four;
}

template <typename T>
void launch_bwd(const SelectiveScanParams& p, cudaStream_t stream) {
  auto bit = [&](const TensorArg& t, int b) { return has(t) && rows_vectorizable<T>(t, 2) ? b : 0; };
  const int vec = bit(p.u, kVecU) | bit(p.delta, kVecDelta) | bit(p.z, kVecZ) | bit(p.dout, kVecDout) |
                  bit(p.du, kVecDu) | bit(p.ddelta, kVecDdelta) | bit(p.dz, kVecDz) |
                  (rows_vectorizable<T>(p.B, 3) && rows_vectorizable<T>(p.C, 3) ? kVecBC : 0);
  const int64_t Dg = p.dim / p.ngroups;
  const dim3 grid(unsigned(p.ngroups * ((Dg + 31) / 32)), unsigned(p.batch));
  SSM_SCAN_THREAD_N_SWITCH(p.dstate, KN, [&] {
    const bool four = four_warps(int64_t(grid.x) * grid.y);
    auto kernel = four ? pair_bwd_kernel<T, KN, 4, 1> : pair_bwd_kernel<T, KN, 2, 1>;
    if constexpr (KN > 8) {
      if (two_entries(four)) kernel = four ? pair_bwd_kernel<T, KN, 4, 2> : pair_bwd_kernel<T, KN, 2, 2>;
    }
    cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, int(cudaSharedmemCarveoutMaxShared));
    kernel<<<grid, four ? 128 : 64, 0, stream>>>(p, vec);
  });
}

}  // namespace ssm::cuda::scan_pair
