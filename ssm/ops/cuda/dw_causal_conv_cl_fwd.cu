// Depthwise causal conv, forward, channels-last (see dw_causal_conv_cl.cuh): each thread loads its
// 8 steps of 8 channels (one 16-byte word per row in bf16/f16) and the W-1 rows before them (the
// previous thread's along L: L1 hits), convolves them in registers and stores 8 rows. Short
// threads make many blocks (9 waves at the mamba2-130m xBC shape), so the last wave's tail is small.
#include "cuda/dw_causal_conv_cl.cuh"

namespace ssm::cuda {
namespace conv_cl {
namespace {

constexpr int N = 8, S = 8;  // channels and steps per thread

// The last W-1 inputs of the row (zero where not in the last token's sequence), by the thread
// whose steps hold L-1.
template <typename T, int kW, bool kSeq>
__device__ void write_final_states(const ConvParams& p, const Slot<N, S>& s) {
  const int64_t L = p.seqlen;
  const int last = kSeq ? seq_at(p, s.b, L - 1) : 0;
  const TensorArg& f = p.final_states;
#pragma unroll
  for (int k = 0; k < kW - 1; ++k) {
    const int64_t j = L - (kW - 1) + k;
    float v[N];
    input_row<T, N, S>(v, p, s, j, false);
    const bool keep = !kSeq || seq_at(p, s.b, j) == last;
#pragma unroll
    for (int i = 0; i < N; ++i)
      if (i < s.n) ptr<T>(f)[s.b * f.stride[0] + (s.c0 + i) * f.stride[1] + k * f.stride[2]] = from_float<T>(keep ? v[i] : 0.f);
  }
}

// The thread's steps; kFull: its N channels are whole words (vec and not the last partial pack).
// Every row load (the W-1 halo rows and the S own rows) is issued before any is used, with no
// branch between them: one memory latency per thread.
template <typename T, int kW, bool kSilu, bool kSeq, bool kFull>
__device__ void convolve(const ConvParams& p, const Slot<N, S>& s, bool wvec) {
  constexpr int H = kW - 1;
  const int64_t L = p.seqlen, end = s.t0 + S < L ? s.t0 + S : L;
  const T* x = ptr<T>(p.x) + s.b * p.x.stride[0] + s.c0;
  // rows[r]: input at step t0 - H + r
  RawRow<T, N> rows[H + S];
#pragma unroll
  for (int r = 0; r < H + S; ++r) {
    const int64_t t = s.t0 - H + r;
    if (t >= 0 && t < end) rows[r].template load<kFull>(x + t * p.x.stride[2], s.n);
  }
  int sq[H + S];
#pragma unroll
  for (int r = 0; r < H + S; ++r) sq[r] = kSeq ? seq_at(p, s.b, s.t0 - H + r) : 0;
  float w[kW][N], bias[N];
  load_params<kW, N, S>(w, bias, p, s, wvec);
  // xw[k] = input at step t - H + k for the next step t; before step 0 the initial states (or zeros)
  float xw[H][N];
#pragma unroll
  for (int k = 0; k < H; ++k) {
    if (s.t0 - H + k < 0) input_row<T, N, S>(xw[k], p, s, s.t0 - H + k, false);
    else
#pragma unroll
      for (int i = 0; i < N; ++i) xw[k][i] = rows[k][i];
  }
  T* y = ptr<T>(p.out) + s.b * p.out.stride[0] + s.c0;
#pragma unroll
  for (int u = 0; u < S; ++u) {
    float cur[N], acc[N];
#pragma unroll
    for (int i = 0; i < N; ++i) {
      cur[i] = rows[H + u][i];
      float a = bias[i] + w[H][i] * cur[i];
#pragma unroll
      for (int k = 0; k < H; ++k)
        if (!kSeq || sq[u + k] == sq[u + H]) a += w[k][i] * xw[k][i];
      acc[i] = kSilu ? silu(a) : a;
    }
    if (s.t0 + u < end) store_row<T, N>(y + (s.t0 + u) * p.out.stride[2], acc, s.n, kFull);
#pragma unroll
    for (int k = 0; k < H; ++k)
#pragma unroll
      for (int i = 0; i < N; ++i) xw[k][i] = k + 1 < H ? xw[k + 1][i] : cur[i];
  }
  if (has(p.final_states) && end == L) write_final_states<T, kW, kSeq>(p, s);
}

template <typename T, int kW, bool kSilu, bool kSeq>
__global__ void __launch_bounds__(kLanes * kSub) conv_cl_fwd_kernel(ConvParams p, bool vec, bool wvec) {
  const Slot<N, S> s(p.dim);
  if (s.n == 0 || s.t0 >= p.seqlen) return;
  if (vec && s.n == N) convolve<T, kW, kSilu, kSeq, true>(p, s, wvec);
  else convolve<T, kW, kSilu, kSeq, false>(p, s, wvec);
}

template <typename T>
void launch(const ConvParams& p, cudaStream_t stream) {
  const bool vec = words_ok<T>(p.x) && words_ok<T>(p.out);
  SSM_WIDTH_SWITCH(int(p.width), KW, [&] {
    if constexpr (KW >= 2) {
      SSM_BOOL_SWITCH(p.silu, kSilu, [&] {
        SSM_BOOL_SWITCH(has(p.seq_idx), kSeq, [&] {
          conv_cl_fwd_kernel<T, KW, kSilu, kSeq><<<grid_of<N, S>(p), dim3(kLanes, kSub), 0, stream>>>(p, vec, params_vectorizable(p));
        });
      });
    }
  });
}

}  // namespace
}  // namespace conv_cl

bool dw_causal_conv_cl_fits(const ConvParams& p, const TensorArg& y) {
  return p.x.stride[1] == 1 && y.stride[1] == 1 && p.width >= 2 && p.width <= 4 && p.batch > 0 && p.dim > 0 &&
         p.seqlen > 0 && p.batch <= 65535 && p.seqlen <= int64_t(conv_cl::kSub) * 32 * 65535;
}

void dw_causal_conv_cl_fwd(const ConvParams& p, cudaStream_t stream) {
  const char* op = "dw_causal_conv_fwd";
  SSM_CHECK(dw_causal_conv_cl_fits(p, p.out), op, "not a channels-last call of width 2-4");
  SSM_DTYPE_SWITCH(p.dtype, T, op, [&] { conv_cl::launch<T>(p, stream); });
  check_launch(op);
}

}  // namespace ssm::cuda
