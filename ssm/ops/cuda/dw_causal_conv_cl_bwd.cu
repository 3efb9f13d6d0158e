// Depthwise causal conv, backward, channels-last (see dw_causal_conv_cl.cuh). A thread owns 4
// channels (8-byte words in bf16/f16: the windows stay in registers) and walks steps
// u = t0 .. t0 + 31 + (W-1): at u it recomputes the pre-activation from the W inputs ending at u,
// forms g = dy * silu'(pre), adds g * x to its partial dweight / dbias (u among its own steps) and
// emits dx at u - (W-1), which needs g at u-(W-1) .. u. The block sums its threads' partials along L
// into one workspace row per (batch, L tile); reduce_kernel sums those rows in a fixed order.
#include "cuda/dw_causal_conv_cl.cuh"

namespace ssm::cuda {
namespace conv_cl {
namespace {

constexpr int kU = 4, N = 4, S = 32;  // rows loaded per group, channels and steps per thread
constexpr int kTileL = kSub * S;  // steps per block (a workspace part per batch row and tile)

template <int kW, bool kSilu>
__device__ __forceinline__ float grad_of(float dy, float pre) {
  if (!kSilu) return dy;
  const float sg = sigmoid(pre);
  return dy * sg * (1.f + pre * (1.f - sg));
}

// g at step t (0 <= t < L) from memory, for the first steps' history gradient.
template <typename T, int kW, bool kSilu, bool kSeq>
__device__ void g_at(float (&g)[N], const ConvBwdParams& q, const Slot<N, S>& s, const float (&w)[kW][N],
                     const float (&bias)[N], int64_t t) {
  const ConvParams& p = q.fwd;
  const int st = kSeq ? seq_at(p, s.b, t) : 0;
  float pre[N], v[N];
#pragma unroll
  for (int i = 0; i < N; ++i) pre[i] = bias[i];
#pragma unroll
  for (int k = 0; k < kW; ++k) {
    input_row<T, N, S>(v, p, s, t - (kW - 1) + k, false);
    const bool on = !kSeq || seq_at(p, s.b, t - (kW - 1) + k) == st;
#pragma unroll
    for (int i = 0; i < N; ++i) pre[i] += on ? w[k][i] * v[i] : 0.f;
  }
  load_row<T, N>(v, ptr<T>(q.dout) + s.b * q.dout.stride[0] + t * q.dout.stride[2] + s.c0, s.n, false);
#pragma unroll
  for (int i = 0; i < N; ++i) g[i] = grad_of<kW, kSilu>(v[i], pre[i]);
}

// Gradient of the W-1 history inputs (steps -(W-1) .. -1): from the first outputs and from dfinal
// where L < W-1. By the thread of the row's first steps.
template <typename T, int kW, bool kSilu, bool kSeq>
__device__ void write_dinitial(const ConvBwdParams& q, const Slot<N, S>& s, const float (&w)[kW][N],
                               const float (&bias)[N]) {
  constexpr int H = kW - 1;
  const ConvParams& p = q.fwd;
  const int64_t L = p.seqlen;
  const int seq0 = kSeq ? seq_at(p, s.b, 0) : 0, last = kSeq ? seq_at(p, s.b, L - 1) : 0;
  float acc[H][N] = {};
#pragma unroll
  for (int t = 0; t < H; ++t) {
    if (t >= L || (kSeq && seq_at(p, s.b, t) != seq0)) continue;
    float g[N];
    g_at<T, kW, kSilu, kSeq>(g, q, s, w, bias, t);
#pragma unroll
    for (int j = t; j < H; ++j)
#pragma unroll
      for (int i = 0; i < N; ++i) acc[j][i] += w[j - t][i] * g[i];
  }
  const TensorArg& di = q.dinitial_states;
  const TensorArg& df = q.dfinal_states;
#pragma unroll
  for (int j = 0; j < H; ++j)
#pragma unroll
    for (int i = 0; i < N; ++i) {
      if (i >= s.n) continue;
      float v = acc[j][i];
      if (has(df) && j >= L && (!kSeq || last == seq0))
        v += to_float(ptr<T>(df)[s.b * df.stride[0] + (s.c0 + i) * df.stride[1] + (j - L) * df.stride[2]]);
      ptr<T>(di)[s.b * di.stride[0] + (s.c0 + i) * di.stride[1] + j * di.stride[2]] = from_float<T>(v);
    }
}

// Rows u0 .. u0 + kU - 1 of x and dy (zeros past L).
template <typename T, bool kFull>
__device__ __forceinline__ void load_group(RawRow<T, N> (&xr)[kU], RawRow<T, N> (&gr)[kU], const T* x, const T* dy,
                                           int64_t sx, int64_t sy, int64_t u0, int64_t L, int n) {
#pragma unroll
  for (int r = 0; r < kU; ++r) {
    xr[r].zero();
    gr[r].zero();
    if (u0 + r < L) {
      xr[r].template load<kFull>(x + (u0 + r) * sx, n);
      gr[r].template load<kFull>(dy + (u0 + r) * sy, n);
    }
  }
}

// The thread's walk: dx over its steps, its partial dweight (taps 0..W-1) and dbias. kFull: its N
// channels are whole words (vec and not the last partial pack).
template <typename T, int kW, bool kSilu, bool kSeq, bool kFull>
__device__ void walk(const ConvBwdParams& q, const Slot<N, S>& s, const float (&w)[kW][N],
                     const float (&bias)[N], float (&dw)[kW][N], float (&db)[N]) {
  constexpr int H = kW - 1;
  const ConvParams& p = q.fwd;
  const int64_t L = p.seqlen, own_end = s.t0 + S < L ? s.t0 + S : L, end = own_end + H;
  const int64_t L_hist = L - H;  // first step whose input the final states hold
  const int last = kSeq ? seq_at(p, s.b, L - 1) : 0;
  const T* x = ptr<T>(p.x) + s.b * p.x.stride[0] + s.c0;
  const T* dy = ptr<T>(q.dout) + s.b * q.dout.stride[0] + s.c0;
  T* dx = ptr<T>(q.dx) + s.b * q.dx.stride[0] + s.c0;
  const TensorArg& df = q.dfinal_states;
  // the halo rows (steps t0 - H .. t0 - 1 >= 0) and the first group, issued together
  RawRow<T, N> halo[H], xraw[kU], graw[kU];
#pragma unroll
  for (int k = 0; k < H; ++k)
    if (s.t0 - H + k >= 0) halo[k].template load<kFull>(x + (s.t0 - H + k) * p.x.stride[2], s.n);
  load_group<T, kFull>(xraw, graw, x, dy, p.x.stride[2], q.dout.stride[2], s.t0, L, s.n);
  // xw[k], gw[k], sw[k]: input, g, seq id at step u - H + k, for the next step u
  float xw[H][N], gw[H][N] = {};
  int sw[H];
#pragma unroll
  for (int k = 0; k < H; ++k) {
    if (s.t0 - H + k < 0) input_row<T, N, S>(xw[k], p, s, s.t0 - H + k, false);
    else
#pragma unroll
      for (int i = 0; i < N; ++i) xw[k][i] = halo[k][i];
    sw[k] = kSeq ? seq_at(p, s.b, s.t0 - H + k) : 0;
  }
  for (int64_t ug = s.t0; ug < end; ug += kU) {
    // the next group's rows load while this one computes
    RawRow<T, N> xnext[kU], gnext[kU];
    if (ug + kU < end) load_group<T, kFull>(xnext, gnext, x, dy, p.x.stride[2], q.dout.stride[2], ug + kU, L, s.n);
    int sr[kU];
#pragma unroll
    for (int r = 0; r < kU; ++r) sr[r] = kSeq ? seq_at(p, s.b, ug + r) : 0;
#pragma unroll
    for (int r = 0; r < kU; ++r) {
      const int64_t u = ug + r;
      bool on[H];
#pragma unroll
      for (int k = 0; k < H; ++k) on[k] = !kSeq || sw[k] == sr[r];
      float xr[N], gr[N];
#pragma unroll
      for (int i = 0; i < N; ++i) {
        xr[i] = xraw[r][i];
        float pre = bias[i] + w[H][i] * xr[i];
#pragma unroll
        for (int k = 0; k < H; ++k) pre += on[k] ? w[k][i] * xw[k][i] : 0.f;
        gr[i] = grad_of<kW, kSilu>(graw[r][i], pre);
      }
      if (u < own_end) {
#pragma unroll
        for (int i = 0; i < N; ++i) {
          dw[H][i] += gr[i] * xr[i];
#pragma unroll
          for (int k = 0; k < H; ++k) dw[k][i] += on[k] ? gr[i] * xw[k][i] : 0.f;
          db[i] += gr[i];
        }
      }
      const int64_t j = u - H;  // dx at j takes g at j .. u: w[0] g[u] + sum_k w[k] g[u - k]
      if (j >= s.t0 && j < own_end) {
        float d[N];
#pragma unroll
        for (int i = 0; i < N; ++i) {
          float a = on[0] ? w[0][i] * gr[i] : 0.f;
#pragma unroll
          for (int k = 1; k <= H; ++k) a += (!kSeq || sw[0] == sw[H - k]) ? w[k][i] * gw[H - k][i] : 0.f;
          d[i] = a;
        }
        if (has(df) && j >= L_hist && (!kSeq || sw[0] == last)) {
#pragma unroll
          for (int i = 0; i < N; ++i)
            if (i < s.n) d[i] += to_float(ptr<T>(df)[s.b * df.stride[0] + (s.c0 + i) * df.stride[1] + (j - L_hist) * df.stride[2]]);
        }
        store_row<T, N>(dx + j * q.dx.stride[2], d, s.n, kFull);
      }
#pragma unroll
      for (int k = 0; k < H; ++k) {
#pragma unroll
        for (int i = 0; i < N; ++i) {
          xw[k][i] = k + 1 < H ? xw[k + 1][i] : xr[i];
          gw[k][i] = k + 1 < H ? gw[k + 1][i] : gr[i];
        }
        sw[k] = k + 1 < H ? sw[k + 1] : sr[r];
      }
    }
#pragma unroll
    for (int r = 0; r < kU; ++r) xraw[r] = xnext[r], graw[r] = gnext[r];
  }
}

// red[y][k][c]: thread (c / N, y)'s partial of tap k (k = W: dbias) for channel c of the block;
// summed over y in order into workspace row (b, blockIdx.y).
template <int kW>
__device__ void write_partials(const ConvBwdClParams& q, const Slot<N, S>& s, const float (&dw)[kW][N],
                               const float (&db)[N]) {
  constexpr int kCols = kLanes * N;
  __shared__ float red[kSub][kW + 1][kCols];
#pragma unroll
  for (int i = 0; i < N; ++i) {
#pragma unroll
    for (int k = 0; k < kW; ++k) red[threadIdx.y][k][threadIdx.x * N + i] = dw[k][i];
    red[threadIdx.y][kW][threadIdx.x * N + i] = db[i];
  }
  __syncthreads();
  const int64_t D = q.bwd.fwd.dim, c_base = int64_t(blockIdx.x) * kCols;
  float* ws = ptr<float>(q.workspace) + (s.b * gridDim.y + blockIdx.y) * q.workspace.stride[0];
  for (int e = threadIdx.y * kLanes + threadIdx.x; e < (kW + 1) * kCols; e += kLanes * kSub) {
    const int k = e / kCols, c = e % kCols;
    if (c_base + c >= D) continue;
    float v = 0.f;
#pragma unroll
    for (int y = 0; y < kSub; ++y) v += red[y][k][c];
    ws[k * q.workspace.stride[1] + (c_base + c) * q.workspace.stride[2]] = v;
  }
}

template <typename T, int kW, bool kSilu, bool kSeq>
__global__ void __launch_bounds__(kLanes * kSub, 3) conv_cl_bwd_kernel(ConvBwdClParams q, bool vec, bool wvec) {
  const ConvBwdParams& qb = q.bwd;
  const Slot<N, S> s(qb.fwd.dim);
  float dw[kW][N] = {}, db[N] = {};
  if (s.n > 0 && s.t0 < qb.fwd.seqlen) {
    float w[kW][N], bias[N];
    load_params<kW, N, S>(w, bias, qb.fwd, s, wvec);
    if (vec && s.n == N) walk<T, kW, kSilu, kSeq, true>(qb, s, w, bias, dw, db);
    else walk<T, kW, kSilu, kSeq, false>(qb, s, w, bias, dw, db);
    if (has(qb.dinitial_states) && s.t0 == 0) write_dinitial<T, kW, kSilu, kSeq>(qb, s, w, bias);
  }
  write_partials<kW>(q, s, dw, db);
}

// dweight[d, k] (k < W) and dbias[d] (k = W): the sum over the workspace's parts, in order within
// each of 8 interleaved slices, then over the slices in order.
constexpr int kRedCols = 32, kRedSlices = 8;

__global__ void __launch_bounds__(kRedCols * kRedSlices) reduce_kernel(ConvBwdClParams q) {
  __shared__ float part[kRedSlices][kRedCols + 1];
  const ConvParams& p = q.bwd.fwd;
  const int64_t W = p.width, D = p.dim, col = int64_t(blockIdx.x) * kRedCols + threadIdx.x;
  const int64_t k = col / D, d = col % D;
  const bool valid = col < (W + 1) * D;
  const float* ws = ptr<float>(q.workspace) + k * q.workspace.stride[1] + d * q.workspace.stride[2];
  float acc = 0.f;
  if (valid) {
#pragma unroll 4
    for (int64_t r = threadIdx.y; r < q.parts; r += kRedSlices) acc += ws[r * q.workspace.stride[0]];
  }
  part[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y != 0 || !valid) return;
  float v = 0.f;
#pragma unroll
  for (int y = 0; y < kRedSlices; ++y) v += part[y][threadIdx.x];
  if (k < W) ptr<float>(q.bwd.dweight)[d * q.bwd.dweight.stride[0] + k * q.bwd.dweight.stride[1]] = v;
  else if (has(q.bwd.dbias)) ptr<float>(q.bwd.dbias)[d * q.bwd.dbias.stride[0]] = v;
}

template <typename T>
void launch(const ConvBwdClParams& q, cudaStream_t stream) {
  const ConvBwdParams& qb = q.bwd;
  const ConvParams& p = qb.fwd;
  const bool vec = words_ok<T>(p.x) && words_ok<T>(qb.dout) && words_ok<T>(qb.dx);
  SSM_WIDTH_SWITCH(int(p.width), KW, [&] {
    if constexpr (KW >= 2) {
      SSM_BOOL_SWITCH(p.silu, kSilu, [&] {
        SSM_BOOL_SWITCH(has(p.seq_idx), kSeq, [&] {
          conv_cl_bwd_kernel<T, KW, kSilu, kSeq><<<grid_of<N, S>(p), dim3(kLanes, kSub), 0, stream>>>(q, vec, params_vectorizable(p));
        });
      });
    }
  });
  reduce_kernel<<<ceil_div((p.width + 1) * p.dim, kRedCols), dim3(kRedCols, kRedSlices), 0, stream>>>(q);
}

}  // namespace
}  // namespace conv_cl

void dw_causal_conv_cl_bwd(const ConvBwdClParams& q, cudaStream_t stream) {
  const char* op = "dw_causal_conv_bwd_cl";
  const ConvBwdParams& qb = q.bwd;
  const ConvParams& p = qb.fwd;
  SSM_CHECK(dw_causal_conv_cl_fits(p, qb.dx) && qb.dout.stride[1] == 1, op, "not a channels-last call of width 2-4");
  SSM_CHECK(q.workspace.present() && q.parts == p.batch * ceil_div(p.seqlen, conv_cl::kTileL), op,
            "the workspace must have batch * ceil(L / ", conv_cl::kTileL, ") parts, got ", q.parts);
  SSM_DTYPE_SWITCH(p.dtype, T, op, [&] { conv_cl::launch<T>(q, stream); });
  check_launch(op);
}

}  // namespace ssm::cuda
