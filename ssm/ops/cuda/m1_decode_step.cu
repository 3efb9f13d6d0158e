// One Mamba-1 decode step for small batches (M1DecodeStepParams): dt_proj folded in, kLanes threads per
// (channel, batch row blockIdx.y), each taking a quarter of the dt_proj dot and of the states (sums by two
// shuffles). Launched with PDL (pdl.cuh): the channel's dt_proj row, A row and parameters (and with
// p.early its state row) are loaded before the wait, while x_proj still runs; after it, one round trip
// brings the x_proj row (dt_in, B, C) into shared memory, with x and z.
#include "cuda/kernels.h"
#include "cuda/pdl.cuh"
#include "cuda/vec.cuh"

namespace ssm::cuda {
namespace {

constexpr int kThreads = 128, kLanes = 4, kChannels = kThreads / kLanes, kMaxN = 16, kMaxRank = 128;
constexpr int kStates = kMaxN / kLanes;  // states a thread: n = part + kLanes * k

__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// kPacks: 16-byte packs of the dt_proj row a thread takes (packs part, part + kLanes, ...).
template <typename TS, typename T, int kPacks>
__global__ void __launch_bounds__(kThreads) m1_decode_step_kernel(M1DecodeStepParams p) {
  constexpr int kN = Pack<T>::kN;
  __shared__ float s_dt[kMaxRank], s_B[kMaxN], s_C[kMaxN];
  const int64_t b = blockIdx.y;
  const int part = int(threadIdx.x) % kLanes, d = int(blockIdx.x) * kChannels + int(threadIdx.x) / kLanes;
  const int N = int(p.dstate), R = int(p.rank);
  const bool ok = d < p.dim;
  const int64_t dc = ok ? d : 0;  // loads of a thread past the channels stay in bounds
  // before the wait: parameters no kernel writes
  Pack<T> w[kPacks];
  const T* wrow = ptr<T>(p.dt_proj) + dc * p.dt_proj.stride[0];
#pragma unroll
  for (int j = 0; j < kPacks; ++j)
    if ((j * kLanes + part) * kN < R) w[j].load(wrow + (j * kLanes + part) * kN);
  float a[kStates];
  const float* arow = ptr<float>(p.A) + dc * p.A.stride[0];
#pragma unroll
  for (int k = 0; k < kStates; ++k) a[k] = part + kLanes * k < N ? arow[(part + kLanes * k) * p.A.stride[1]] : 0.f;
  const float Dd = has(p.D) ? ptr<float>(p.D)[dc * p.D.stride[0]] : 0.f;
  const float dtb = has(p.dt_bias) ? ptr<float>(p.dt_bias)[dc * p.dt_bias.stride[0]] : 0.f;
  TS* srow = ptr<TS>(p.state) + b * p.state.stride[0] + dc * p.state.stride[1];
  TS sv[kStates];
  const auto load_state = [&] {
#pragma unroll
    for (int k = 0; k < kStates; ++k)
      if (part + kLanes * k < N) sv[k] = srow[(part + kLanes * k) * p.state.stride[2]];
  };
  if (p.early) load_state();
  pdl_wait();  // everything below may depend on the previous kernel (x_proj's output)
  pdl_release();
  if (!p.early) load_state();
  for (int i = threadIdx.x; i < R + 2 * N; i += kThreads) {
    if (i < R)
      s_dt[i] = to_float(ptr<T>(p.dt_in)[b * p.dt_in.stride[0] + i * p.dt_in.stride[1]]);
    else if (i < R + N)
      s_B[i - R] = to_float(ptr<T>(p.B)[b * p.B.stride[0] + (i - R) * p.B.stride[1]]);
    else
      s_C[i - R - N] = to_float(ptr<T>(p.C)[b * p.C.stride[0] + (i - R - N) * p.C.stride[1]]);
  }
  const float xv = to_float(ptr<T>(p.x)[b * p.x.stride[0] + dc * p.x.stride[1]]);
  const float zv = has(p.z) ? to_float(ptr<T>(p.z)[b * p.z.stride[0] + dc * p.z.stride[1]]) : 0.f;
  __syncthreads();
  float dt = 0.f;
#pragma unroll
  for (int j = 0; j < kPacks; ++j) {
    const int c0 = (j * kLanes + part) * kN;
#pragma unroll
    for (int e = 0; e < kN; ++e)
      if (c0 + e < R) dt += to_float(w[j].e[e]) * s_dt[c0 + e];
  }
  dt = to_float(from_float<T>(quad_sum(dt))) + dtb;  // rounded as a separate projection's output
  if (p.softplus) dt = softplus(dt);
  const float dx = dt * xv;
  float y = 0.f;
#pragma unroll
  for (int k = 0; k < kStates; ++k) {
    const int n = part + kLanes * k;
    if (n >= N) continue;
    const float s = to_float(sv[k]) * __expf(dt * a[k]) + dx * s_B[n];
    y += s * s_C[n];
    if (ok) srow[n * p.state.stride[2]] = from_float<TS>(s);
  }
  y = quad_sum(y) + Dd * xv;
  if (has(p.z)) y *= silu(zv);
  if (ok && part == 0) ptr<T>(p.out)[b * p.out.stride[0] + dc * p.out.stride[1]] = from_float<T>(y);
}

template <typename TS, typename T>
void launch(const M1DecodeStepParams& p, cudaStream_t stream) {
  constexpr int kN = Pack<T>::kN;
  const dim3 grid(unsigned(ceil_div(p.dim, kChannels)), unsigned(p.batch));
  if (p.rank <= 64)
    return pdl_launch(m1_decode_step_kernel<TS, T, 64 / kN / kLanes>, grid, dim3(kThreads), 0, stream, p);
  pdl_launch(m1_decode_step_kernel<TS, T, kMaxRank / kN / kLanes>, grid, dim3(kThreads), 0, stream, p);
}

}  // namespace

void m1_decode_step(const M1DecodeStepParams& p, cudaStream_t stream) {
  const char* op = "m1_decode_step";
  SSM_CHECK(p.dstate >= 1 && p.dstate <= kMaxN, op, "dstate must be in [1, ", kMaxN, "], got ", p.dstate);
  SSM_CHECK(p.rank >= 1 && p.rank <= kMaxRank, op, "rank must be in [1, ", kMaxRank, "], got ", p.rank);
  SSM_CHECK(p.batch <= 65535 && p.dim < (int64_t(1) << 31), op, "batch must be at most 65535");
  if (p.batch * p.dim == 0) return;
  SSM_DTYPE_SWITCH(p.dtype, T, op, [&] {
    constexpr int64_t kN = Pack<T>::kN;
    SSM_CHECK(p.rank % kN == 0 && p.dt_proj.stride[1] == 1 && p.dt_proj.stride[0] % kN == 0 &&
                  aligned(p.dt_proj.data, 16),
              op, "dt_proj rows must be contiguous and 16-byte aligned, rank a multiple of ", kN);
    if (p.state_dtype == DType::f32) {
      launch<float, T>(p, stream);
    } else {
      SSM_CHECK(p.state_dtype == p.dtype, op, "state dtype must be float32 or the activations' dtype");
      launch<T, T>(p, stream);
    }
  });
  check_launch(op);
}

}  // namespace ssm::cuda
