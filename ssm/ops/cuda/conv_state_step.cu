// Fused Mamba-2 decode step on the GPU (ConvStateStepParams): the depthwise conv update of the
// raw xBC row and the selective state step in one launch. Block (row slice, head, batch row):
// rows of kTPR lanes, each lane owning kPacks packs of 8 state entries (as state_step_kernel);
// the conv outputs the block needs (its x channels, its group's B and C) pass through shared
// memory. A block owns the conv states of its x channels; the B/C conv states are shared by every
// block of the (batch row, group) and rewritten by the last of them to arrive (counters).
// Launched with PDL (pdl.cuh): its blocks start while in_proj ends. With the states read before the
// wait (p.early), a block also draws its ticket there (once its B/C history has arrived): after the
// wait no fence or atomic round trip is left on the chain.
#include "cuda/kernels.h"
#include "cuda/pdl.cuh"
#include "cuda/vec.cuh"

namespace ssm::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxN = 256;

// The W-1 history entries (up to 4) and the new input of one channel, as read for its conv.
struct Window {
  float v[4], xin;
};

// Channel c's history entries (the conv_state's last W-1, up to 4) of batch row b into win.
template <typename T>
__device__ __forceinline__ void load_history(const ConvStateStepParams& p, int64_t b, int64_t c, Window& win) {
  const T* st = ptr<T>(p.conv_state) + b * p.conv_state.stride[0] + c * p.conv_state.stride[1];
  const int64_t W = p.width, first = p.state_len - (W - 1), ss = p.conv_state.stride[2];
#pragma unroll
  for (int k = 0; k < 4; ++k) win.v[k] = k < W - 1 ? to_float(st[(first + k) * ss]) : 0.f;
}

// The conv output of channel c of batch row b from its history (load_history) and the new input:
// silu?(bias + sum_k w[k] window[k]), rounded to T as the separate conv op's output is.
template <typename T>
__device__ __forceinline__ float conv_at(const ConvStateStepParams& p, int64_t b, int64_t c, Window& win) {
  const T* st = ptr<T>(p.conv_state) + b * p.conv_state.stride[0] + c * p.conv_state.stride[1];
  const float* w = ptr<float>(p.conv_weight) + c * p.conv_weight.stride[0];
  const int64_t W = p.width, first = p.state_len - (W - 1), ss = p.conv_state.stride[2];
  const int64_t ws = p.conv_weight.stride[1];
  const float xin = win.xin = to_float(ptr<T>(p.xbc)[b * p.xbc.stride[0] + c * p.xbc.stride[1]]);
  float acc = has(p.conv_bias) ? ptr<float>(p.conv_bias)[c * p.conv_bias.stride[0]] : 0.f;
#pragma unroll
  for (int k = 0; k < 4; ++k)
    if (k < W - 1) acc += w[k * ws] * win.v[k];
  for (int64_t k = 4; k < W - 1; ++k) acc += w[k * ws] * to_float(st[(first + k) * ss]);
  acc += w[(W - 1) * ws] * xin;
  return to_float(from_float<T>(p.silu ? silu(acc) : acc));
}

// Shift channel c's conv state left by one and append the new input (loads before stores).
template <typename T>
__device__ __forceinline__ void shift_in(const ConvStateStepParams& p, int64_t b, int64_t c) {
  T* st = ptr<T>(p.conv_state) + b * p.conv_state.stride[0] + c * p.conv_state.stride[1];
  const int64_t S = p.state_len, ss = p.conv_state.stride[2];
  const T xin = ptr<T>(p.xbc)[b * p.xbc.stride[0] + c * p.xbc.stride[1]];
  T v[8];
#pragma unroll
  for (int s = 0; s < 8; ++s)
    if (s + 1 < S) v[s] = st[(s + 1) * ss];
#pragma unroll
  for (int s = 0; s < 8; ++s)
    if (s + 1 < S) st[s * ss] = v[s];
  for (int64_t s = 8; s + 1 < S; ++s) st[s * ss] = st[(s + 1) * ss];
  st[(S - 1) * ss] = xin;
}

// Channel of entry i < 2N of group g's conv outputs [B (N), C (N)] in the xBC row.
__device__ __forceinline__ int64_t bc_channel(const ConvStateStepParams& p, int64_t g, int64_t i) {
  const int64_t N = p.dstate, base = p.nheads * p.headdim;
  return i < N ? base + g * N + i : base + (p.ngroups + g) * N + (i - N);
}

// Before the wait (the B/C histories read there, p.early): once this thread's B/C windows have arrived
// (their values used), thread 0 draws the block's ticket. Its result is first needed at the block's
// end, so the atomic's round trip is off the path; the last block zeroes the counter at its end, and
// the next launch may draw before that: consecutive launches take alternate counters (the op layer).
// Returns the ticket on thread 0.
__device__ __forceinline__ int draw_ticket(const Window (&win)[2 * kMaxN / kThreads], int64_t N, int* counter) {
  float arrived = 0.f;
#pragma unroll
  for (int j = 0; j < 2 * kMaxN / kThreads; ++j)
    if (threadIdx.x + j * kThreads < 2 * N) arrived += win[j].v[0] + win[j].v[1] + win[j].v[2] + win[j].v[3];
  asm volatile("" ::"f"(arrived) : "memory");
  __syncthreads();
  int ticket = 0;
  if (threadIdx.x == 0) {
    __threadfence();
    ticket = atomicAdd(counter, 1);
  }
  return ticket;
}

template <typename TS, typename T, int kTPR>
__global__ void __launch_bounds__(kThreads, 1) conv_state_step_kernel(ConvStateStepParams p) {
  constexpr int kPacks = 4;
  constexpr int kRows = kThreads / kTPR;
  __shared__ float sBC[2 * kMaxN];  // conv outputs of the group's B (first N) and C
  __shared__ float sx[kRows];       // conv outputs of this block's x channels
  __shared__ bool s_last;
  const int tid = threadIdx.x, r = tid / kTPR, lane = tid % kTPR;
  const int64_t b = blockIdx.z, h = blockIdx.y, P = p.headdim, N = p.dstate;
  const int64_t g = h / (p.nheads / p.ngroups), p0 = int64_t(blockIdx.x) * kRows, hp = p0 + r;
  const bool row_ok = hp < P;
  TS* st = ptr<TS>(p.state) + b * p.state.stride[0] + h * p.state.stride[1] + (row_ok ? hp : 0) * p.state.stride[2];
  Pack<TS> s[kPacks][sizeof(TS) / 2];
  // this thread's B/C channels tid and tid + kThreads: their windows kept for the last block's shift
  Window win[2 * kMaxN / kThreads], xw;
  const bool own_x = tid < kRows && p0 + tid < P;
  // the state stream first, then the conv histories: every load in flight before the conv work
  const auto load_states = [&] {
#pragma unroll
    for (int j = 0; j < kPacks; ++j) {
      const int64_t n0 = (int64_t(j) * kTPR + lane) * 8;
      if (row_ok && n0 < N) {
#pragma unroll
        for (int w = 0; w < int(sizeof(TS) / 2); ++w) s[j][w].load(st + n0 + w * Pack<TS>::kN);
      }
    }
#pragma unroll
    for (int j = 0; j < 2 * kMaxN / kThreads; ++j) {
      const int64_t i = tid + int64_t(j) * kThreads;
      if (i < 2 * N) load_history<T>(p, b, bc_channel(p, g, i), win[j]);
    }
    if (own_x) load_history<T>(p, b, h * P + p0 + tid, xw);
  };
  // p.early: the caller promises that the stream's previous kernel writes neither state, so they are
  // read before it ends (launched with PDL); everything else may depend on it (in_proj's output)
  if (p.early) load_states();
  // parameters (no kernel writes them) before the wait too
  const float A_h = ptr<float>(p.A)[h * p.A.stride[0]];
  const float dt_b = has(p.dt_bias) ? ptr<float>(p.dt_bias)[h * p.dt_bias.stride[0]] : 0.f;
  const float D_hp = has(p.D) && row_ok && lane == 0 ? ptr<float>(p.D)[h * p.D.stride[0] + hp * p.D.stride[1]] : 0.f;
  int* counter = ptr<int>(p.counters) + (b * p.ngroups + g) * p.counters.stride[0];
  const int total = int(p.nheads / p.ngroups) * int(gridDim.x);  // blocks of the (batch row, group)
  int ticket = p.early ? draw_ticket(win, N, counter) : 0;
  pdl_wait();
  pdl_release();
  if (!p.early) load_states();
  // this block's dt and the row's gate, issued with the conv inputs (before any store)
  const float dt_raw = to_float(ptr<T>(p.dt)[b * p.dt.stride[0] + h * p.dt.stride[1]]);
  const float zv = has(p.z) && row_ok && lane == 0
                       ? to_float(ptr<T>(p.z)[b * p.z.stride[0] + h * p.z.stride[1] + hp * p.z.stride[2]])
                       : 0.f;
#pragma unroll
  for (int j = 0; j < 2 * kMaxN / kThreads; ++j) {
    const int64_t i = tid + int64_t(j) * kThreads;
    if (i < 2 * N) sBC[i] = conv_at<T>(p, b, bc_channel(p, g, i), win[j]);
  }
  if (own_x) {
    const int64_t c = h * P + p0 + tid;
    sx[tid] = conv_at<T>(p, b, c, xw);
    shift_in<T>(p, b, c);
  }
  float dt = dt_raw + dt_b;
  if (p.softplus) dt = softplus(dt);
  const float dA = __expf(dt * A_h);
  __syncthreads();
  // every read of this block's B/C conv history is done: take a ticket
  // (its result is first needed after the step: the atomic's round trip overlaps the step's math)
  if (!p.early && tid == 0) {
    __threadfence();
    ticket = atomicAdd(counter, 1);
  }
  float y = 0.f, xv = 0.f;
  if (row_ok) {
    xv = sx[r];
    const float dx = dt * xv;
#pragma unroll
    for (int j = 0; j < kPacks; ++j) {
      const int64_t n0 = (int64_t(j) * kTPR + lane) * 8;
      if (n0 >= N) continue;
      float sv[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        sv[e] = to_float(s[j][e / Pack<TS>::kN].e[e % Pack<TS>::kN]) * dA + dx * sBC[n0 + e];
        y += sv[e] * sBC[N + n0 + e];
      }
      store_floats<TS, 8>(st + n0, sv);
    }
  }
  const unsigned group = kTPR == 32 ? 0xffffffffu : ((1u << kTPR) - 1) << (threadIdx.x % 32 / kTPR * kTPR);
#pragma unroll
  for (int off = kTPR / 2; off > 0; off /= 2) y += __shfl_xor_sync(group, y, off, kTPR);
  if (row_ok && lane == 0) {
    y += D_hp * xv;
    if (has(p.z)) y *= silu(zv);
    ptr<T>(p.out)[b * p.out.stride[0] + h * p.out.stride[1] + hp * p.out.stride[2]] = from_float<T>(y);
  }
  if (tid == 0) s_last = ticket == total - 1;
  __syncthreads();
  if (!s_last) return;
  // the last block of the (batch row, group): every other has read the B/C history. A state of
  // exactly W entries becomes [window, new input], which this thread holds: stores only.
  const bool held = p.state_len == p.width && p.width <= 5;
#pragma unroll
  for (int j = 0; j < 2 * kMaxN / kThreads; ++j) {
    const int64_t i = tid + int64_t(j) * kThreads;
    if (i >= 2 * N) continue;
    const int64_t c = bc_channel(p, g, i);
    if (!held) {
      shift_in<T>(p, b, c);
      continue;
    }
    T* st = ptr<T>(p.conv_state) + b * p.conv_state.stride[0] + c * p.conv_state.stride[1];
    const int64_t ss = p.conv_state.stride[2];
#pragma unroll
    for (int k = 0; k < 4; ++k)
      if (k < p.width - 1) st[k * ss] = from_float<T>(win[j].v[k]);
    st[(p.width - 1) * ss] = from_float<T>(win[j].xin);
  }
  if (tid == 0) *counter = 0;
}

// Lanes per row (four packs of 8 states each, "narrow" rows: one block a head for P = 64, each recomputing the
// group's B/C conv once). The "wide" rows (one pack a lane, four times the blocks) were slower in every round that
// compared them (H200: mamba2-1.3b 1.644 vs 1.746 ms per token in session 6, mamba2-130m token span 336 vs 350 us
// in session 9) and were removed.
#define SSM_CONV_STEP_LANES_SWITCH(N, K, ...)                             \
  [&] {                                                                   \
    if (N <= 64) { constexpr int K = 2; return __VA_ARGS__(); }           \
    if (N <= 128) { constexpr int K = 4; return __VA_ARGS__(); }          \
    constexpr int K = 8; return __VA_ARGS__();                            \
  }()

template <typename TS, typename T>
void launch(const ConvStateStepParams& p, cudaStream_t stream) {
  SSM_CONV_STEP_LANES_SWITCH(p.dstate, kTPR, [&] {
    constexpr int kRows = kThreads / kTPR;
    const dim3 grid(ceil_div(p.headdim, kRows), unsigned(p.nheads), unsigned(p.batch));
    pdl_launch(conv_state_step_kernel<TS, T, kTPR>, grid, dim3(kThreads), 0, stream, p);
  });
}

}  // namespace

void conv_state_step(const ConvStateStepParams& p, cudaStream_t stream) {
  const char* op = "conv_state_step";
  SSM_CHECK(p.dstate >= 8 && p.dstate <= kMaxN && p.dstate % 8 == 0, op, "dstate must be a multiple of 8 in [8, ",
            kMaxN, "], got ", p.dstate);
  SSM_CHECK(p.ngroups >= 1 && p.nheads % p.ngroups == 0, op, "nheads ", p.nheads, " is not a multiple of ngroups ",
            p.ngroups);
  SSM_CHECK(p.width >= 1 && p.state_len >= p.width - 1 && p.state_len >= 1, op, "conv_state length ", p.state_len,
            " must be at least width - 1 = ", p.width - 1);
  SSM_CHECK(p.batch <= 65535 && p.nheads <= 65535, op, "batch and nheads must be at most 65535");
  SSM_CHECK(p.state.stride[3] == 1 && aligned(p.state.data, 16), op, "state must be contiguous along N and aligned");
  if (p.batch * p.nheads * p.headdim == 0) return;
  SSM_DTYPE_SWITCH(p.dtype, T, op, [&] {
    if (p.state_dtype == DType::f32) {
      SSM_CHECK(p.state.stride[0] % 4 == 0 && p.state.stride[1] % 4 == 0 && p.state.stride[2] % 4 == 0, op,
                "state rows must be 16-byte aligned");
      launch<float, T>(p, stream);
    } else {
      SSM_CHECK(p.state_dtype == p.dtype, op, "state dtype must be float32 or the activations' dtype");
      SSM_CHECK(p.state.stride[0] % 8 == 0 && p.state.stride[1] % 8 == 0 && p.state.stride[2] % 8 == 0, op,
                "state rows must be 16-byte aligned");
      launch<T, T>(p, stream);
    }
  });
  check_launch(op);
}

}  // namespace ssm::cuda
