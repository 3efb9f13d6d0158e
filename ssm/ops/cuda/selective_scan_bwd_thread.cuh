// Selective scan (Mamba-1) backward for N <= 16 on the GPU, a thread per (batch, channel).
// Pre-pass: the forward kernel in checkpoint mode stores the state before every kSteps-step chunk
// (chunk_states (B, D, nchunks, N) float32, D fastest), unless the forward wrote them already
// (chunk_states_filled: the fused Mamba-1 backward recomputes y with them). Then each thread walks the chunks in
// reverse; per chunk the steps' u, dt, dy = dout silu(z) sit in registers and, one state entry n
// at a time, the thread recomputes the chunk's kSteps states from the checkpoint (registers),
// walks them back with the adjoint e (dL/dh entering from the later steps, kept per n in shared
// memory across chunks) and accumulates du, ddelta, y (for dz) per step and dA per n. The
// per-(n, t) gradients of B and C are sums over the group's channels: each warp sums its 32
// channels through a shared transpose, the block sums its warps, and one atomic add per block
// and (n, t) goes to the zeroed float32 dB / dC. When the grid leaves room, two warps share 32
// channels, each walking half of the state entries; the second hands its sums over n to the first.
#pragma once
#include <cstdlib>
#include <utility>

#include "cuda/selective_scan_bwd.cuh"
#include "cuda/selective_scan_bwd_pair.cuh"
#include "cuda/selective_scan_fwd_thread.cuh"

namespace ssm::cuda::scan_thread {

constexpr int kXRow = 36;  // transpose row (32 lanes + pad: conflict-free 16-byte row reads)

struct BwdFlags {
  bool vec_u, vec_delta, vec_z, vec_dout, vec_du, vec_ddelta, vec_dz;
};

// Dynamic shared memory of a block of W warps (floats).
template <int kN>
struct BwdSmem {
  float *A, *h0, *e, *dA;  // [kN][threads]: this thread's column
  float *u, *dzf;          // [kSteps][threads]: the chunk's u and dz per unit y, this thread's column
  float *Bt, *Ct;          // [kN][kSteps]: the chunk's B, C
  float *x;                // [W][32][kXRow]: a warp's dB (rows 0..15) and dC (rows 16..31) by lane
  float *red;              // [W][kN][32]: per warp sums, row j of x
  float *sums;             // [W][3][kSteps][32]: S, R, y of the warps holding other state entries
  __device__ BwdSmem(float* s, int threads, int W) {
    A = s, h0 = A + kN * threads, e = h0 + kN * threads, dA = e + kN * threads;
    u = dA + kN * threads, dzf = u + kSteps * threads;
    Bt = dzf + kSteps * threads, Ct = Bt + kN * kSteps, x = Ct + kN * kSteps, red = x + W * 32 * kXRow;
    sums = red + W * kN * 32;
  }
  static size_t bytes(int threads, int W) {
    return sizeof(float) * (4 * kN * threads + 2 * kSteps * threads + 2 * kN * kSteps + W * 32 * kXRow + W * kN * 32 +
                            W * 3 * kSteps * 32);
  }
};

// Per-step values of one chunk; sums over n: S = sum g B (du = dt S, ddelta = u S + R),
// R = sum A g a h_prev, y = sum C h.
struct Steps {
  float dt[kSteps], dtu[kSteps], dy[kSteps];
  float S[kSteps], R[kSteps], y[kSteps];
};

template <typename T, int kN>
struct BwdThread {
  const SelectiveScanParams& p;
  BwdSmem<kN> sm;
  Row<T> u, delta, z, dout, du, ddelta, dz;
  BcSrc<T, kN> Bs, Cs;
  int64_t b, g, d, L;
  int tid, lane, w, W;
  int P, part, nlo, nhi;  // P warps share 32 channels, warp part taking state entries [nlo, nhi)
  bool valid;
  float Dd, bias;

  __device__ __forceinline__ void load_steps(Steps& s, int64_t t0) const {
    const int threads = W * 32;
    T ru[kSteps], rd[kSteps], ro[kSteps], rz[kSteps];
    u.load(ru, t0, L);
    delta.load(rd, t0, L);
    dout.load(ro, t0, L);
    if (has(p.z)) z.load(rz, t0, L);
#pragma unroll
    for (int i = 0; i < kSteps; ++i) {
      float dt = to_float(rd[i]) + bias;
      if (p.softplus) dt = softplus_fast(dt);
      const bool in = valid && t0 + i < L;  // idle threads and steps past L contribute nothing
      s.dt[i] = in ? dt : 0.f;
      const float uu = to_float(ru[i]);
      s.dtu[i] = s.dt[i] * uu;
      sm.u[i * threads + tid] = uu;
      float dy = in ? to_float(ro[i]) : 0.f, dzf = 0.f;
      if (has(p.z)) {
        const float zz = to_float(rz[i]), sg = sigmoid_of<T>(zz);
        dzf = dy * sg * (1.f + zz * (1.f - sg));
        dy *= zz * sg;
      }
      s.dy[i] = dy, sm.dzf[i * threads + tid] = dzf;
      s.S[i] = 0.f, s.R[i] = 0.f, s.y[i] = 0.f;
    }
  }
  // The chunk's B / C into [n][i] tiles and this thread's checkpoints into h0.
  __device__ __forceinline__ void stage(int64_t c, int64_t t0) const {
    for (int e = tid; e < kN * kSteps; e += W * 32) {
      sm.Bt[Bs.state_of(e) * kSteps + Bs.step_of(e)] = to_float(Bs.load(e, t0, L, p.dstate));
      sm.Ct[Cs.state_of(e) * kSteps + Cs.step_of(e)] = to_float(Cs.load(e, t0, L, p.dstate));
    }
    const int threads = W * 32;
#pragma unroll
    for (int n = 0; n < kN; ++n) {
      float h = 0.f;
      if (n < p.dstate && n >= nlo && n < nhi) {
        if (c > 0) {
          const TensorArg& ck = p.chunk_states;
          h = ptr<float>(ck)[b * ck.stride[0] + d * ck.stride[1] + c * ck.stride[2] + n * ck.stride[3]];
        } else if (has(p.initial_state)) {
          const TensorArg& h0 = p.initial_state;
          h = ptr<float>(h0)[b * h0.stride[0] + d * h0.stride[1] + n * h0.stride[2]];
        }
      }
      sm.h0[n * threads + tid] = h;
    }
  }

  // One state entry n over the chunk: recompute the states, walk back, accumulate.
  __device__ __forceinline__ void state_bwd(Steps& s, int n) const {
    const int threads = W * 32;
    const float An = sm.A[n * threads + tid], A2 = An * kLog2e, h0 = sm.h0[n * threads + tid];
    float Bn[kSteps], Cn[kSteps], a[kSteps], h[kSteps];
#pragma unroll
    for (int q = 0; q < kSteps / 4; ++q) {  // 16-byte broadcast reads
      const float4 bq = reinterpret_cast<const float4*>(sm.Bt + n * kSteps)[q];
      const float4 cq = reinterpret_cast<const float4*>(sm.Ct + n * kSteps)[q];
      Bn[4 * q] = bq.x, Bn[4 * q + 1] = bq.y, Bn[4 * q + 2] = bq.z, Bn[4 * q + 3] = bq.w;
      Cn[4 * q] = cq.x, Cn[4 * q + 1] = cq.y, Cn[4 * q + 2] = cq.z, Cn[4 * q + 3] = cq.w;
    }
    float* xw = sm.x + w * 32 * kXRow;
    float hp = h0;
#pragma unroll
    for (int i = 0; i < kSteps; ++i) {
      a[i] = ex2(s.dt[i] * A2);
      hp = fmaf(a[i], hp, s.dtu[i] * Bn[i]);
      h[i] = hp;
    }
    float e = sm.e[n * threads + tid], dAn = 0.f;
#pragma unroll
    for (int i = kSteps - 1; i >= 0; --i) {
      const float Ci = Cn[i], gn = fmaf(Ci, s.dy[i], e), ga = gn * a[i];
      const float gah = ga * (i > 0 ? h[i - 1] : h0);
      s.y[i] = fmaf(Ci, h[i], s.y[i]);
      dAn = fmaf(gah, s.dt[i], dAn);
      s.S[i] = fmaf(gn, Bn[i], s.S[i]);
      s.R[i] = fmaf(An, gah, s.R[i]);
      xw[i * kXRow + lane] = gn * s.dtu[i];             // dB
      xw[(kSteps + i) * kXRow + lane] = h[i] * s.dy[i];  // dC
      e = ga;
    }
    sm.e[n * threads + tid] = e;
    sm.dA[n * threads + tid] += dAn;
    __syncwarp();
    // lane j: row j of the transpose summed over the warp's 32 channels
    float v = 0.f;
#pragma unroll
    for (int q = 0; q < 8; ++q) {
      const float4 x4 = reinterpret_cast<const float4*>(xw + lane * kXRow)[q];
      v += (x4.x + x4.y) + (x4.z + x4.w);
    }
    sm.red[(w * kN + n) * 32 + lane] = v;
    __syncwarp();
  }

  // Sums of the block's warps into dB / dC (one atomic per (n, t) and block).
  __device__ __forceinline__ void add_bc(int64_t t0) const {
    for (int q = tid; q < kN * 32; q += W * 32) {
      const int n = q / 32, j = q % 32, i = j % kSteps;
      if (n >= p.dstate || t0 + i >= L) continue;
      float v = 0.f;
      for (int k = 0; k < W / P; ++k) v += sm.red[((k * P + n / (kN / P)) * kN + n) * 32 + j];
      const TensorArg o = j < kSteps ? p.dB : p.dC;  // by value: no local copy of the params
      atomicAdd(ptr<float>(o) + b * o.stride[0] + g * o.stride[1] + n * o.stride[2] + (t0 + i) * o.stride[3], v);
    }
  }

  // Warps of part > 0 hand their sums over n to part 0 (before the block barrier)...
  __device__ __forceinline__ void give_sums(const Steps& s) const {
    float* o = sm.sums + w * 3 * kSteps * 32 + lane;
#pragma unroll
    for (int i = 0; i < kSteps; ++i)
      o[i * 32] = s.S[i], o[(kSteps + i) * 32] = s.R[i], o[(2 * kSteps + i) * 32] = s.y[i];
  }
  // ... which adds them after it.
  __device__ __forceinline__ void take_sums(Steps& s) const {
    for (int q = 1; q < P; ++q) {
      const float* o = sm.sums + (w + q) * 3 * kSteps * 32 + lane;
#pragma unroll
      for (int i = 0; i < kSteps; ++i)
        s.S[i] += o[i * 32], s.R[i] += o[(kSteps + i) * 32], s.y[i] += o[(2 * kSteps + i) * 32];
    }
  }

  // The chunk's per-step gradients: du, ddelta, dz out; dD and d dt_bias partial sums.
  __device__ __forceinline__ void finish(Steps& s, int64_t t0, float& dDp, float& dbp) const {
    const int threads = W * 32;
    float dus[kSteps], ddt[kSteps];
#pragma unroll
    for (int i = 0; i < kSteps; ++i) {
      const float uu = sm.u[i * threads + tid];
      dus[i] = fmaf(s.dt[i], s.S[i], Dd * s.dy[i]);
      ddt[i] = fmaf(uu, s.S[i], s.R[i]);
      if (p.softplus) ddt[i] *= -expm1f(-s.dt[i]);  // softplus'(x) = 1 - exp(-softplus(x))
      if (t0 + i < L) dbp += ddt[i];
      dDp = fmaf(s.dy[i], uu, dDp);
      s.y[i] = sm.dzf[i * threads + tid] * fmaf(Dd, uu, s.y[i]);
    }
    if (!valid) return;
    du.store(dus, t0, L);
    ddelta.store(ddt, t0, L);
    if (has(p.z)) dz.store(s.y, t0, L);
  }
};

template <typename T, int kN>
__global__ void __launch_bounds__(128) bwd_kernel(SelectiveScanParams p, BwdFlags f, int P) {
  extern __shared__ __align__(16) float smem[];
  const int W = blockDim.x / 32, threads = blockDim.x, chans = threads / P;  // warp w = channel warp * P + part
  BwdThread<T, kN> t{p, BwdSmem<kN>(smem, threads, W)};
  const int64_t Dg = p.dim / p.ngroups, bpg = (Dg + chans - 1) / chans;
  t.b = blockIdx.y, t.g = blockIdx.x / bpg, t.L = p.seqlen;
  t.tid = threadIdx.x, t.lane = threadIdx.x % 32, t.w = threadIdx.x / 32, t.W = W;
  t.P = P, t.part = t.w % P, t.nlo = t.part * (kN / P), t.nhi = t.nlo + kN / P;
  const int64_t c = (blockIdx.x % bpg) * chans + (t.w / P) * 32 + t.lane;
  t.valid = c < Dg;
  t.d = t.g * Dg + (t.valid ? c : Dg - 1);
  t.Dd = has(p.D) ? ptr<float>(p.D)[t.d * p.D.stride[0]] : 0.f;
  t.bias = has(p.dt_bias) ? ptr<float>(p.dt_bias)[t.d * p.dt_bias.stride[0]] : 0.f;
  t.u.init(p.u, t.b, t.d, f.vec_u);
  t.delta.init(p.delta, t.b, t.d, f.vec_delta);
  t.dout.init(p.dout, t.b, t.d, f.vec_dout);
  t.du.init(p.du, t.b, t.d, f.vec_du);
  t.ddelta.init(p.ddelta, t.b, t.d, f.vec_ddelta);
  if (has(p.z)) t.z.init(p.z, t.b, t.d, f.vec_z), t.dz.init(p.dz, t.b, t.d, f.vec_dz);
  t.Bs.init(p.B, t.b, t.g);
  t.Cs.init(p.C, t.b, t.g);
  for (int n = 0; n < kN; ++n) {
    const bool in = n < p.dstate;
    t.sm.A[n * threads + t.tid] = in ? ptr<float>(p.A)[t.d * p.A.stride[0] + n * p.A.stride[1]] : 0.f;
    const TensorArg& dl = p.dlast;
    t.sm.e[n * threads + t.tid] =
        in && t.valid && has(dl) ? ptr<float>(dl)[t.b * dl.stride[0] + t.d * dl.stride[1] + n * dl.stride[2]] : 0.f;
    t.sm.dA[n * threads + t.tid] = 0.f;
  }
  float dDp = 0.f, dbp = 0.f;
  const int64_t nchunks = (p.seqlen + kSteps - 1) / kSteps;
  for (int64_t ch = nchunks - 1; ch >= 0; --ch) {
    const int64_t t0 = ch * kSteps;
    Steps s;
    t.load_steps(s, t0);
    t.stage(ch, t0);
    __syncthreads();
#pragma unroll 1
    for (int n = t.nlo; n < t.nhi; ++n) t.state_bwd(s, n);
    if (t.part > 0) t.give_sums(s);
    __syncthreads();
    t.add_bc(t0);
    if (t.part == 0) {
      t.take_sums(s);
      t.finish(s, t0, dDp, dbp);
    }
  }
  if (!t.valid) return;
  for (int n = t.nlo; n < t.nhi && n < p.dstate; ++n) {
    const int64_t b = t.b, d = t.d;
    ptr<float>(p.dA)[b * p.dA.stride[0] + d * p.dA.stride[1] + n * p.dA.stride[2]] = t.sm.dA[n * threads + t.tid];
    const TensorArg& di = p.dinitial_state;
    if (has(di)) ptr<float>(di)[b * di.stride[0] + d * di.stride[1] + n * di.stride[2]] = t.sm.e[n * threads + t.tid];
  }
  if (t.part > 0) return;
  if (has(p.dD)) ptr<float>(p.dD)[t.b * p.dD.stride[0] + t.d * p.dD.stride[1]] = dDp;
  if (has(p.ddt_bias)) ptr<float>(p.ddt_bias)[t.b * p.ddt_bias.stride[0] + t.d * p.ddt_bias.stride[1]] = dbp;
}

inline int sm_count() {
  static int n = [] {
    int dev = 0, v = 132;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev);
    return v;
  }();
  return n;
}

// Whether the backward runs here: takes(p), and a workspace of this kernel's layout (D fastest)
// when L needs more than one chunk (the op layer allocates it for this kernel or the older one).
inline bool takes_bwd(const SelectiveScanParams& p) {
  return takes(p) && (p.seqlen <= kSteps || checkpoint_layout(p));
}

// Switch: SSM_SCAN_BWD_PAIR=0 sends the backward to the kernel below instead of
// selective_scan_bwd_pair.cuh's (read per call, so one process can time both).
inline bool pair_bwd() {
  const char* v = std::getenv("SSM_SCAN_BWD_PAIR");
  return !v || v[0] != '0';
}

// Switch: false keeps one warp per 32 channels (every state entry in one thread).
constexpr bool kSplitN = true;

// (warps per block, warps per 32 channels): when one warp per 32 channels leaves room for twice
// as many (8 warps per SM at 255 registers), two warps split the state entries (each thread's
// serial walk halves); else the most warps (up to 4) that still give every SM two blocks.
inline std::pair<int, int> bwd_shape(const SelectiveScanParams& p) {
  const int64_t Dg = p.dim / p.ngroups, warps = p.batch * p.ngroups * ((Dg + 31) / 32);
  if (kSplitN && 2 * warps <= 8 * sm_count()) return {2, 2};
  for (int W = 4; W > 1; W /= 2)
    if (p.batch * p.ngroups * ((Dg + 32 * W - 1) / (32 * W)) >= 2 * sm_count()) return {W, 1};
  return {1, 1};
}

template <typename T>
void launch_bwd(const SelectiveScanParams& p, cudaStream_t stream) {
  const int64_t total = p.nslices * p.batch * p.ngroups * p.dstate * p.seqlen;
  if (total > 0) scan_bwd::zero_bc<<<ceil_div(total, 256), 256, 0, stream>>>(p);
  if (p.seqlen > kSteps && !p.chunk_states_filled) launch_fwd<T>(p, true, stream);
  if (pair_bwd() && scan_pair::takes(p)) return scan_pair::launch_bwd<T>(p, stream);
  BwdFlags f;
  f.vec_u = rows_vectorizable<T>(p.u, 2), f.vec_delta = rows_vectorizable<T>(p.delta, 2);
  f.vec_z = has(p.z) && rows_vectorizable<T>(p.z, 2), f.vec_dout = rows_vectorizable<T>(p.dout, 2);
  f.vec_du = rows_vectorizable<T>(p.du, 2), f.vec_ddelta = rows_vectorizable<T>(p.ddelta, 2);
  f.vec_dz = has(p.dz) && rows_vectorizable<T>(p.dz, 2);
  const std::pair<int, int> shape = bwd_shape(p);
  const int W = shape.first, P = shape.second;
  const int64_t Dg = p.dim / p.ngroups, chans = 32 * W / P;
  const dim3 grid(unsigned(p.ngroups * ((Dg + chans - 1) / chans)), unsigned(p.batch));
  SSM_SCAN_THREAD_N_SWITCH(p.dstate, KN, [&] {
    const size_t bytes = BwdSmem<KN>::bytes(32 * W, W);
    auto kernel = bwd_kernel<T, KN>;
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
    kernel<<<grid, 32 * W, bytes, stream>>>(p, f, P);
  });
}

}  // namespace ssm::cuda::scan_thread
