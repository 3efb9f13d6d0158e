// Selective scan (Mamba-1) forward for N <= 16 on the GPU, a thread per (batch, channel): the
// thread's N states stay in registers while it walks L in groups of kSteps steps. A block is one
// warp of 32 channels of one B/C group (small blocks: B*D threads spread evenly over the SMs).
// Software pipeline: the next group's u, delta, z and B/C are loaded into registers while the
// current group computes; B/C go to a double-buffered shared tile (float) read with broadcast
// 16-byte loads. Per (n, t): one ex2 (A pre-scaled by log2 e), two FMA, one FMUL.
// With kCk it also writes the state before each group g >= 1 into chunk_states (B, D, nchunks, N),
// the backward's checkpoints; without kOut it writes only those (the backward's pre-pass).
#pragma once
#include "cuda/selective_scan_thread.cuh"

namespace ssm::cuda::scan_thread {

constexpr int kFwdThreads = 32;

struct FwdFlags {
  bool vec_u, vec_delta, vec_z, vec_out;
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

// Whether chunk_states is this kernel's workspace (D fastest) and L needs it.
inline bool checkpoint_layout(const SelectiveScanParams& p) {
  return p.seqlen > kSteps && p.chunk_states.present() && p.chunk_states.stride[1] == 1;
}

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
  SSM_SCAN_THREAD_N_SWITCH(p.dstate, KN, [&] {
    if (only_checkpoints) fwd_kernel<T, KN, false, true><<<grid, kFwdThreads, 0, stream>>>(p, f);
    else if (checkpoint_layout(p)) fwd_kernel<T, KN, true, true><<<grid, kFwdThreads, 0, stream>>>(p, f);
    else fwd_kernel<T, KN, true, false><<<grid, kFwdThreads, 0, stream>>>(p, f);
  });
}

}  // namespace ssm::cuda::scan_thread
