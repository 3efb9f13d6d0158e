// Gated RMSNorm / LayerNorm backward on the GPU. Blocks take (group, every gridDim.y-th row):
// the normalized input (recomputed from x and z) and dy go to shared memory, then
//   ds = rstd * (g - mean(g) - n * mean(g * n)), g = dy0 * w, n = norm(s),
// with dy0 = dy * silu(z) when the gate follows the norm; dx and dz follow by the chain rule.
// dweight / dbias accumulate per column over the block's rows and are added once per block into
// partial row 0 (the other partial rows are zeroed).
#include "cuda/norm_common.cuh"

namespace ssm::cuda {
namespace {

using namespace norm;

template <int P>
__global__ void __launch_bounds__(kThreads) gated_norm_bwd_kernel(GatedNormParams p) {
  extern __shared__ float smem[];
  __shared__ float scratch[kThreads / 32];
  const int64_t G = p.group, c0 = int64_t(blockIdx.x) * G;
  float* s = smem;
  float* dy0 = s + G;
  float* dw = dy0 + G;
  float* db = dw + G;
  const float* w = ptr<float>(p.weight) + c0;
  const bool gate = has(p.z), pre_gate = gate && !p.norm_before_gate, post_gate = gate && p.norm_before_gate;
  const bool bias = has(p.bias);
  for (int64_t c = threadIdx.x; c < G; c += blockDim.x) dw[c] = 0.f, db[c] = 0.f;
  for (int64_t row = blockIdx.y; row < p.rows; row += gridDim.y) {
    float sum = 0.f;
    for (int64_t c = int64_t(threadIdx.x) * P; c < G; c += int64_t(blockDim.x) * P) {
      float x[P], z[P];
      load<P>(x, p.x, p.dtype, row, c0 + c);
      load<P>(dy0 + c, p.dout, p.dout_dtype, row, c0 + c);
      if (pre_gate) load<P>(z, p.z, p.z_dtype, row, c0 + c);
#pragma unroll
      for (int e = 0; e < P; ++e) s[c + e] = pre_gate ? x[e] * silu(z[e]) : x[e], sum += s[c + e];
    }
    const float mean = p.is_rms ? 0.f : block_sum(sum, scratch) / float(G);
    float sq = 0.f;
    for (int64_t c = int64_t(threadIdx.x) * P; c < G; c += int64_t(blockDim.x) * P)
#pragma unroll
      for (int e = 0; e < P; ++e) sq += (s[c + e] - mean) * (s[c + e] - mean);
    const float rstd = rsqrtf(block_sum(sq, scratch) / float(G) + p.eps);
    float sg = 0.f, sgn = 0.f;
    for (int64_t c = int64_t(threadIdx.x) * P; c < G; c += int64_t(blockDim.x) * P) {
      float z[P], dz[P];
      if (post_gate) load<P>(z, p.z, p.z_dtype, row, c0 + c);
#pragma unroll
      for (int e = 0; e < P; ++e) {
        const float n = (s[c + e] - mean) * rstd;
        if (post_gate) {
          const float y0 = n * w[c + e] + (bias ? ptr<float>(p.bias)[c0 + c + e] : 0.f);
          dz[e] = dy0[c + e] * y0 * dsilu(z[e]);
          dy0[c + e] *= silu(z[e]);
        }
        const float g = dy0[c + e] * w[c + e];
        sg += g, sgn += g * n;
        dw[c + e] += dy0[c + e] * n;
        if (bias) db[c + e] += dy0[c + e];
      }
      if (post_gate) store<P>(p.dz, p.z_dtype, row, c0 + c, dz);
    }
    const float mg = p.is_rms ? 0.f : block_sum(sg, scratch) / float(G);
    const float mgn = block_sum(sgn, scratch) / float(G);
    for (int64_t c = int64_t(threadIdx.x) * P; c < G; c += int64_t(blockDim.x) * P) {
      float dx[P], x[P], z[P], dz[P];
      if (pre_gate) {
        load<P>(x, p.x, p.dtype, row, c0 + c);
        load<P>(z, p.z, p.z_dtype, row, c0 + c);
      }
#pragma unroll
      for (int e = 0; e < P; ++e) {
        const float n = (s[c + e] - mean) * rstd;
        const float ds = rstd * (dy0[c + e] * w[c + e] - mg - n * mgn);
        dx[e] = pre_gate ? ds * silu(z[e]) : ds;
        if (pre_gate) dz[e] = ds * x[e] * dsilu(z[e]);
      }
      store<P>(p.dx, p.dtype, row, c0 + c, dx);
      if (pre_gate) store<P>(p.dz, p.z_dtype, row, c0 + c, dz);
    }
    __syncthreads();
  }
  for (int64_t c = threadIdx.x; c < G; c += blockDim.x) {
    atomicAdd(ptr<float>(p.dweight_parts) + (c0 + c) * p.dweight_parts.stride[1], dw[c]);
    if (bias) atomicAdd(ptr<float>(p.dbias_parts) + (c0 + c) * p.dbias_parts.stride[1], db[c]);
  }
}

// Row kernel: blocks of (Ts, R) threads, Ts = 8-feature packs of a group rounded up to a warp,
// R = segments (rows of one group) at once; each segment's column sums stay in registers and go to
// their own partial row blockIdx.y * R + y (deterministic, no atomics).
constexpr int kSegThreads = 256;

template <bool kGate, bool kPreGate, bool kBias>
__global__ void __launch_bounds__(kSegThreads, 3) gated_norm_bwd_row_kernel(GatedNormParams p) {
  __shared__ float4 buf[2][kSegThreads / 32];
  const int64_t G = p.group, c = int64_t(threadIdx.x) * 8, col = int64_t(blockIdx.x) * G + c;
  const int R = blockDim.y, seg = blockIdx.y * R + threadIdx.y, nseg = gridDim.y * R;
  const int warps = blockDim.x / 32;
  const bool active = c < G, gate = kGate, pre_gate = kPreGate, post_gate = kGate && !kPreGate, bias = kBias;
  const float inv_g = 1.f / float(G);
  float w[8], dw[8], db[8];
#pragma unroll
  for (int e = 0; e < 8; ++e) w[e] = 0.f, dw[e] = 0.f, db[e] = 0.f;
  if (active) load_floats<float, 8>(w, ptr<float>(p.weight) + col);
  int k = 0;  // reductions so far (buffer parity)
  // the loop bound is the block's (its barriers need every segment), rows past the end idle
  for (int64_t base = int64_t(blockIdx.y) * R; base < p.rows; base += nseg) {
    const int64_t row = base + threadIdx.y;
    const bool live = active && row < p.rows;
    const Raw8 rx = load_raw(p.x, p.dtype, row, col, live), rdy = load_raw(p.dout, p.dout_dtype, row, col, live);
    const Raw8 rz = load_raw(p.z, p.z_dtype, row, col, live && gate);
    float x[8], z[8], dy[8], s[8];
    to_floats(x, rx, p.dtype), to_floats(dy, rdy, p.dout_dtype), to_floats(z, rz, p.z_dtype);
#pragma unroll
    for (int e = 0; e < 8; ++e) s[e] = pre_gate ? x[e] * silu(z[e]) : x[e];
    float mean = 0.f;
    if (!p.is_rms) {
      float4 t = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
      for (int e = 0; e < 8; ++e) t.x += s[e];
      mean = segment_sum4(t, buf[k++ & 1] + threadIdx.y * warps, warps).x * inv_g;
    }
    float4 t = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const float d = live ? s[e] - mean : 0.f;
      t.x += d * d;
    }
    const float rstd = rsqrtf(segment_sum4(t, buf[k++ & 1] + threadIdx.y * warps, warps).x * inv_g + p.eps);
    // dy0: the gradient reaching the normalized output (times silu(z) when the gate follows)
    float n[8], dz[8];
    t = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      n[e] = live ? (s[e] - mean) * rstd : 0.f;
      if (post_gate) {
        const float y0 = n[e] * w[e] + (bias && live ? ptr<float>(p.bias)[col + e] : 0.f);
        dz[e] = dy[e] * y0 * dsilu(z[e]);
        dy[e] *= silu(z[e]);
      }
      const float g = dy[e] * w[e];
      t.y += g, t.z += g * n[e];
      dw[e] += dy[e] * n[e], db[e] += dy[e];
    }
    t = segment_sum4(t, buf[k++ & 1] + threadIdx.y * warps, warps);
    const float mg = p.is_rms ? 0.f : t.y * inv_g, mgn = t.z * inv_g;
    if (!live) continue;
    float dx[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const float ds = rstd * (dy[e] * w[e] - mg - n[e] * mgn);
      dx[e] = pre_gate ? ds * silu(z[e]) : ds;
      if (pre_gate) dz[e] = ds * x[e] * dsilu(z[e]);
    }
    store<8>(p.dx, p.dtype, row, col, dx);
    if (gate) store<8>(p.dz, p.z_dtype, row, col, dz);
  }
  if (!active || seg >= p.parts) return;
  store<8>(p.dweight_parts, DType::f32, seg, col, dw);
  if (bias) store<8>(p.dbias_parts, DType::f32, seg, col, db);
  const float zero[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  for (int64_t r = seg + nseg; r < p.parts; r += nseg) {
    store<8>(p.dweight_parts, DType::f32, r, col, zero);
    if (bias) store<8>(p.dbias_parts, DType::f32, r, col, zero);
  }
}

// Switch: false sends every call to the shared-memory kernel.
constexpr bool kUseRowKernel = true;

bool row_kernel_fits(const GatedNormParams& p) {
  const bool vec = p.group % 8 == 0 && norm::packable(p.x, p.dtype) && norm::packable(p.z, p.z_dtype) &&
                   norm::packable(p.dout, p.dout_dtype) && norm::packable(p.dx, p.dtype) &&
                   norm::packable(p.dz, p.z_dtype) && aligned(p.weight.data, 16) &&
                   norm::packable(p.dweight_parts, DType::f32) && norm::packable(p.dbias_parts, DType::f32);
  return kUseRowKernel && vec && p.group <= 8 * kSegThreads && p.parts >= 1;
}

void launch_row_kernel(const GatedNormParams& p, cudaStream_t stream) {
  const int ts = int((p.group / 8 + 31) / 32 * 32), R = kSegThreads / ts;
  const int64_t ngroups = p.cols / p.group;
  SSM_CHECK(ngroups < (int64_t(1) << 31), "gated_norm_bwd", "too many groups: ", ngroups);
  const bool gate = has(p.z), pre_gate = gate && !p.norm_before_gate;
  SSM_BOOL_SWITCH(gate, kGate, [&] {
    SSM_BOOL_SWITCH(pre_gate, kPreGate, [&] {
      SSM_BOOL_SWITCH(has(p.bias), kBias, [&] {
        auto kernel = gated_norm_bwd_row_kernel<kGate, kGate && kPreGate, kBias>;
        const int64_t resident = norm::resident_blocks(kernel, kSegThreads, int64_t(1) << 30);
        int64_t rowblocks = (resident + ngroups - 1) / ngroups;
        if (rowblocks * R > p.parts) rowblocks = p.parts / R;
        if (rowblocks < 1) rowblocks = 1;
        kernel<<<dim3(unsigned(ngroups), unsigned(rowblocks)), dim3(ts, R), 0, stream>>>(p);
      });
    });
  });
}

}  // namespace

void gated_norm_bwd(const GatedNormParams& p, cudaStream_t stream) {
  const char* op = "gated_norm_bwd";
  SSM_CHECK(p.group >= 1 && p.cols % p.group == 0, op, "group size ", p.group, " must divide ", p.cols);
  const size_t smem = 4 * size_t(p.group) * sizeof(float);
  SSM_CHECK(smem <= 200 * 1024, op, "the CUDA kernel takes groups of at most 12800 features, got ", p.group);
  if (row_kernel_fits(p)) {
    launch_row_kernel(p, stream);
    return check_launch(op);
  }
  norm::zero_rows<<<ceil_div(p.parts * p.cols, 256), 256, 0, stream>>>(p.dweight_parts, p.dbias_parts, p.parts,
                                                                          p.cols);
  const int64_t ngroups = p.cols / p.group;
  if (p.rows > 0) {
    int sms = 0, dev = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    const bool vec = p.group % 8 == 0 && norm::packable(p.x, p.dtype) && norm::packable(p.z, p.z_dtype) &&
                     norm::packable(p.dout, p.dout_dtype) && norm::packable(p.dx, p.dtype) &&
                     norm::packable(p.dz, p.z_dtype);
    // about 16 blocks of kThreads per SM in all, whatever the block size (rows in flight)
    const int threads = norm::threads_for(p.group, vec);
    const int64_t want = (16 * int64_t(sms) * (norm::kThreads / threads) + ngroups - 1) / ngroups;
    const int64_t rowblocks = p.rows < want ? p.rows : (want > 65535 ? 65535 : want);
    SSM_BOOL_SWITCH(vec, kVec, [&] {
      auto kernel = gated_norm_bwd_kernel<kVec ? 8 : 1>;
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
      kernel<<<dim3(unsigned(ngroups), unsigned(rowblocks)), threads, smem, stream>>>(p);
    });
  }
  check_launch(op);
}

}  // namespace ssm::cuda
