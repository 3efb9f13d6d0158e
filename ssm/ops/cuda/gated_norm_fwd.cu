// Gated RMSNorm / LayerNorm forward (Mamba-2) on the GPU. norm_before_gate:
// y = (norm(x) * w + b) * silu(z); otherwise y = norm(x * silu(z)) * w + b.
// Row kernel (groups of 8-feature packs, at most 4096 features): blocks of (Ts, R) threads take
// R rows of one group at a time (Ts = the group's packs, halved past 256, rounded up to a warp), rows
// stepping by gridDim.y * R, 8 or 16 features per thread in registers. Shared-memory kernel (any layout, the
// fallback): one block per (row, group), the normalized input in shared memory as float32.
#include "cuda/norm_common.cuh"

namespace ssm::cuda {
namespace {

using namespace norm;

template <int P>
__global__ void __launch_bounds__(kThreads) gated_norm_fwd_kernel(GatedNormParams p) {
  extern __shared__ float s[];
  __shared__ float scratch[kThreads / 32];
  const int64_t ngroups = p.cols / p.group, row = blockIdx.x / ngroups, c0 = (blockIdx.x % ngroups) * p.group;
  const int64_t G = p.group;
  const bool gate = has(p.z), pre_gate = gate && !p.norm_before_gate;
  float sum = 0.f;
  for (int64_t c = int64_t(threadIdx.x) * P; c < G; c += int64_t(blockDim.x) * P) {
    float v[P], z[P];
    load<P>(v, p.x, p.dtype, row, c0 + c);
    if (pre_gate) {
      load<P>(z, p.z, p.z_dtype, row, c0 + c);
#pragma unroll
      for (int e = 0; e < P; ++e) v[e] *= silu(z[e]);
    }
#pragma unroll
    for (int e = 0; e < P; ++e) s[c + e] = v[e], sum += v[e];
  }
  const float mean = p.is_rms ? 0.f : block_sum(sum, scratch) / float(G);
  float sq = 0.f;
  for (int64_t c = int64_t(threadIdx.x) * P; c < G; c += int64_t(blockDim.x) * P)
#pragma unroll
    for (int e = 0; e < P; ++e) sq += (s[c + e] - mean) * (s[c + e] - mean);
  const float rstd = rsqrtf(block_sum(sq, scratch) / float(G) + p.eps);
  const float* w = ptr<float>(p.weight) + c0;
  const float* b = has(p.bias) ? ptr<float>(p.bias) + c0 : nullptr;
  for (int64_t c = int64_t(threadIdx.x) * P; c < G; c += int64_t(blockDim.x) * P) {
    float y[P], z[P];
    if (gate && !pre_gate) load<P>(z, p.z, p.z_dtype, row, c0 + c);
#pragma unroll
    for (int e = 0; e < P; ++e) {
      y[e] = (s[c + e] - mean) * rstd * w[c + e] + (b ? b[c + e] : 0.f);
      if (gate && !pre_gate) y[e] *= silu(z[e]);
    }
    store<P>(p.out, p.dtype, row, c0 + c, y);
  }
}

constexpr int kSegThreads = 256;

// kPacks 8-feature packs a thread: pack k of thread t is the group's pack t + k * blockDim.x.
template <bool kGate, bool kPreGate, int kPacks>
__global__ void __launch_bounds__(kSegThreads) gated_norm_fwd_row_kernel(GatedNormParams p) {
  __shared__ float4 buf[2][kSegThreads / 32];
  const int64_t G = p.group;
  const int R = blockDim.y, warps = blockDim.x / 32;
  const int64_t nseg = int64_t(gridDim.y) * R;
  const float inv_g = 1.f / float(G);
  int64_t col[kPacks];
  bool active[kPacks];
  float w[kPacks][8], b[kPacks][8];
#pragma unroll
  for (int k = 0; k < kPacks; ++k) {
    const int64_t c = (int64_t(threadIdx.x) + int64_t(k) * blockDim.x) * 8;
    active[k] = c < G, col[k] = int64_t(blockIdx.x) * G + c;
#pragma unroll
    for (int e = 0; e < 8; ++e) w[k][e] = 0.f, b[k][e] = 0.f;
    if (active[k]) load_floats<float, 8>(w[k], ptr<float>(p.weight) + col[k]);
    if (active[k] && has(p.bias)) load_floats<float, 8>(b[k], ptr<float>(p.bias) + col[k]);
  }
  int n = 0;  // reductions so far (buffer parity)
  // the loop bound is the block's (its barriers need every segment), rows past the end idle
  for (int64_t base = int64_t(blockIdx.y) * R; base < p.rows; base += nseg) {
    const int64_t row = base + threadIdx.y;
    float v[kPacks][8], z[kPacks][8];
    bool live[kPacks];
#pragma unroll
    for (int k = 0; k < kPacks; ++k) {
      live[k] = active[k] && row < p.rows;
      const Raw8 rx = load_raw(p.x, p.dtype, row, col[k], live[k]);
      const Raw8 rz = load_raw(p.z, p.z_dtype, row, col[k], live[k] && kGate);
      to_floats(v[k], rx, p.dtype), to_floats(z[k], rz, p.z_dtype);
      if (kPreGate)
#pragma unroll
        for (int e = 0; e < 8; ++e) v[k][e] *= silu(z[k][e]);
    }
    float mean = 0.f;
    if (!p.is_rms) {
      float4 t = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
      for (int k = 0; k < kPacks; ++k)
#pragma unroll
        for (int e = 0; e < 8; ++e) t.x += v[k][e];
      mean = segment_sum4(t, buf[n++ & 1] + threadIdx.y * warps, warps).x * inv_g;
    }
    float4 t = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int k = 0; k < kPacks; ++k)
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const float d = live[k] ? v[k][e] - mean : 0.f;
        t.x += d * d;
      }
    const float rstd = rsqrtf(segment_sum4(t, buf[n++ & 1] + threadIdx.y * warps, warps).x * inv_g + p.eps);
#pragma unroll
    for (int k = 0; k < kPacks; ++k) {
      if (!live[k]) continue;
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        v[k][e] = (v[k][e] - mean) * rstd * w[k][e] + b[k][e];
        if (kGate && !kPreGate) v[k][e] *= silu(z[k][e]);
      }
      store<8>(p.out, p.dtype, row, col[k], v[k]);
    }
  }
}

// Switch: false sends every call to the shared-memory kernel.
constexpr bool kUseRowKernel = true;

bool row_kernel_fits(const GatedNormParams& p) {
  const bool vec = p.group % 8 == 0 && norm::packable(p.x, p.dtype) && norm::packable(p.z, p.z_dtype) &&
                   norm::packable(p.out, p.dtype) && aligned(p.weight.data, 16) &&
                   (!has(p.bias) || aligned(p.bias.data, 16));
  return kUseRowKernel && vec && p.group <= 2 * 8 * kSegThreads;
}

void launch_row_kernel(const GatedNormParams& p, cudaStream_t stream) {
  const int64_t packs = p.group / 8;
  const bool two = packs > kSegThreads;  // groups of 2049..4096 features: two packs a thread
  const int ts = int(((two ? (packs + 1) / 2 : packs) + 31) / 32 * 32), R = kSegThreads / ts;
  const int64_t ngroups = p.cols / p.group;
  SSM_CHECK(ngroups < (int64_t(1) << 31), "gated_norm_fwd", "too many groups: ", ngroups);
  const bool gate = has(p.z), pre_gate = gate && !p.norm_before_gate;
  SSM_BOOL_SWITCH(gate, kGate, [&] {
    SSM_BOOL_SWITCH(pre_gate, kPreGate, [&] {
      SSM_BOOL_SWITCH(two, kTwo, [&] {
        auto kernel = gated_norm_fwd_row_kernel<kGate, kGate && kPreGate, kTwo ? 2 : 1>;
        const int64_t resident = norm::resident_blocks(kernel, kSegThreads, int64_t(1) << 30);
        const int64_t need = (p.rows + R - 1) / R, want = (resident + ngroups - 1) / ngroups;
        const int64_t rowblocks = need < want ? need : (want < 65535 ? want : 65535);
        kernel<<<dim3(unsigned(ngroups), unsigned(rowblocks)), dim3(ts, R), 0, stream>>>(p);
      });
    });
  });
}

}  // namespace

void gated_norm_fwd(const GatedNormParams& p, cudaStream_t stream) {
  const char* op = "gated_norm_fwd";
  SSM_CHECK(p.group >= 1 && p.cols % p.group == 0, op, "group size ", p.group, " must divide ", p.cols);
  const size_t smem = size_t(p.group) * sizeof(float);
  SSM_CHECK(smem <= 200 * 1024, op, "the CUDA kernel takes groups of at most 51200 features, got ", p.group);
  const int64_t blocks = p.rows * (p.cols / p.group);
  SSM_CHECK(blocks < (int64_t(1) << 31), op, "too many rows: ", p.rows);
  if (blocks == 0) return;
  if (row_kernel_fits(p)) {
    launch_row_kernel(p, stream);
    return check_launch(op);
  }
  const bool vec = p.group % 8 == 0 && norm::packable(p.x, p.dtype) && norm::packable(p.z, p.z_dtype) &&
                   norm::packable(p.out, p.dtype);
  SSM_BOOL_SWITCH(vec, kVec, [&] {
    auto kernel = gated_norm_fwd_kernel<kVec ? 8 : 1>;
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    kernel<<<unsigned(blocks), norm::threads_for(p.group, kVec), smem, stream>>>(p);
  });
  check_launch(op);
}

}  // namespace ssm::cuda
