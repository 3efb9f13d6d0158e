// SSD steps 2 and 3: the state entering each chunk (a short sequential loop over chunks,
// elementwise over P x N), the final states, and the per-sequence states of cu_seqlens batches.
// With Layout::split the state pass also writes H_in's rounding residue (H_in - hi in T) for the chunk output.
#pragma once
#include "cuda/ssd_common.cuh"

namespace ssm::cuda::ssd {

// The state a sequence starts from: its initial state with cu_seqlens, else zero.
__device__ __forceinline__ float fresh(const SsdParams& p, int seg, int h, int pp, int nn) {
  if (!has(p.cu_seqlens) || !has(p.initial_states)) return 0.f;
  return at4<float>(p.initial_states, seg, h, pp, nn);
}

// V values of T as one vector access.
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

// V consecutive elements e0.. of one head's P x N state per thread (V = 4 when P N allows). The chunks' records (two
// 16-byte loads each) are loaded with their states, kAhead at a time (session 9; after each chunk's stores they
// cost a dependent L2 round trip per chunk).
template <typename T, int V>
__global__ void __launch_bounds__(kThreads) state_passing_kernel(SsdParams p, Layout w) {
  const int64_t PN = p.headdim * p.dstate, e0 = (int64_t(blockIdx.x) * kThreads + threadIdx.x) * V;
  if (e0 >= PN) return;
  const int h = blockIdx.y;
  const int64_t b = blockIdx.z, nc = w.nchunks;
  const bool cu = has(p.cu_seqlens), keep_fp32 = has(p.varlen_states);
  float* ws = ptr<float>(p.workspace);
  const float* rec = ws + w.record + (b * p.nheads + h) * nc * kRecord;
  float* states = ws + w.states + h * PN + e0;
  T* hin = reinterpret_cast<T*>(ws + w.hin) + h * PN + e0;
  T* hinlo = reinterpret_cast<T*>(ws + w.hinlo) + h * PN + e0;  // w.split: H_in's rounding residue
  int pp[V], nn[V];
  float H[V];  // the state after the previous chunk's last token
#pragma unroll
  for (int v = 0; v < V; ++v) {
    pp[v] = int((e0 + v) / p.dstate), nn[v] = int((e0 + v) % p.dstate);
    H[v] = !cu && has(p.initial_states) ? at4<float>(p.initial_states, b, h, pp[v], nn[v]) : 0.f;
  }
  const int64_t step = p.nheads * PN;  // from one chunk's state to the next
  constexpr int kAhead = 4;            // chunk states loaded together (in flight at once)
  for (int64_t c0 = 0; c0 < nc; c0 += kAhead) {
    Pack<float, V> S[kAhead];
    Pack<float, kRecord> R[kAhead];
#pragma unroll
    for (int u = 0; u < kAhead; ++u)
      if (c0 + u < nc) {
        S[u] = *reinterpret_cast<const Pack<float, V>*>(states + (b * nc + c0 + u) * step);
        R[u] = *reinterpret_cast<const Pack<float, kRecord>*>(rec + (c0 + u) * kRecord);
      }
#pragma unroll
    for (int u = 0; u < kAhead; ++u) {
      const int64_t c = c0 + u, off = (b * nc + c) * step;
      if (c >= nc) break;
      const float* r = R[u].v;
      const bool continues = c == 0 ? !cu : __float_as_int(r[kContinues]) != 0;
      const bool reset = __float_as_int(r[kHasReset]) != 0;
      Pack<float, V> h_in;
      Pack<T, V> h_out, h_lo;
#pragma unroll
      for (int v = 0; v < V; ++v) {
        h_in.v[v] = continues ? H[v] : fresh(p, __float_as_int(r[kSegFirst]), h, pp[v], nn[v]);
        h_out.v[v] = from_float<T>(h_in.v[v]);
        h_lo.v[v] = from_float<T>(h_in.v[v] - to_float(h_out.v[v]));
        H[v] = S[u].v[v] + (reset ? fresh(p, __float_as_int(r[kSegLast]), h, pp[v], nn[v]) * r[kDecayLastRun]
                                  : h_in.v[v] * r[kDecayAll]);
      }
      *reinterpret_cast<Pack<T, V>*>(hin + off) = h_out;
      if (w.split) *reinterpret_cast<Pack<T, V>*>(hinlo + off) = h_lo;
      if (keep_fp32) *reinterpret_cast<Pack<float, V>*>(states + off) = h_in;
    }
  }
  if (!has(p.final_states)) return;
  const TensorArg& f = p.final_states;
#pragma unroll
  for (int v = 0; v < V; ++v)
    ptr<float>(f)[b * f.stride[0] + h * f.stride[1] + pp[v] * f.stride[2] + nn[v] * f.stride[3]] = H[v];
}

template <typename T>
void launch_state_passing(const SsdParams& p, const Layout& w, cudaStream_t s) {
  const int64_t PN = p.headdim * p.dstate;
  if (PN % 4 == 0) {  // four elements per thread: 16-byte state loads
    const dim3 grid(ceil_div(PN, 4 * kThreads), unsigned(p.nheads), unsigned(p.batch));
    launch(state_passing_kernel<T, 4>, grid, 0, s, p, w);
    return;
  }
  const dim3 grid(ceil_div(PN, kThreads), unsigned(p.nheads), unsigned(p.batch));
  launch(state_passing_kernel<T, 1>, grid, 0, s, p, w);
}

// The state at the last token of cu_seqlens sequence blockIdx.x (its initial state or zero when
// empty): the state entering its last chunk decayed, plus that chunk's partial sum.
template <typename T>
__global__ void __launch_bounds__(kThreads) varlen_states_kernel(SsdParams p, Layout w) {
  __shared__ ChunkTokens tok;
  const int s = blockIdx.x, h = blockIdx.y, g = h / int(p.nheads / p.ngroups);
  const int64_t PN = p.headdim * p.dstate, e = int64_t(blockIdx.z) * kThreads + threadIdx.x;
  const int pp = int(e / p.dstate), nn = int(e % p.dstate);
  const int* cu = ptr<int>(p.cu_seqlens);
  const int64_t start = cu[s * p.cu_seqlens.stride[0]], end = cu[(s + 1) * p.cu_seqlens.stride[0]];
  const TensorArg& out = p.varlen_states;
  float* dst = ptr<float>(out) + s * out.stride[0] + h * out.stride[1] + pp * out.stride[2] + nn * out.stride[3];
  if (start == end) {
    if (e < PN) *dst = has(p.initial_states) ? at4<float>(p.initial_states, s, h, pp, nn) : 0.f;
    return;
  }
  const int64_t c = (end - 1) / p.chunk, c0 = c * p.chunk;
  load_chunk(p, 0, h, c0, int(p.chunk), tok);
  if (e >= PN) return;
  const int last = int(end - 1 - c0), first = int(max(start - c0, int64_t(0)));
  float v;
  if (start < c0)  // H_in(c) in float32 (the state pass kept it)
    v = ptr<float>(p.workspace)[w.states + (c * p.nheads + h) * PN + e] * __expf(tok.cs[last]);
  else
    v = fresh(p, s, h, pp, nn) * __expf(tok.cs[last] - cs_before(tok, first));
  for (int i = first; i <= last; ++i)
    v += __expf(tok.cs[last] - tok.cs[i]) * tok.dt[i] * at4<T>(p.x, 0, c0 + i, h, pp) * at4<T>(p.B, 0, c0 + i, g, nn);
  *dst = v;
  if (end == p.seqlen && has(p.final_states))  // the same figure as the last sequence's state
    ptr<float>(p.final_states)[h * p.final_states.stride[1] + pp * p.final_states.stride[2] +
                               nn * p.final_states.stride[3]] = v;
}

template <typename T>
void launch_varlen_states(const SsdParams& p, const Layout& w, cudaStream_t s) {
  const dim3 grid(unsigned(p.nseq), unsigned(p.nheads), ceil_div(p.headdim * p.dstate, kThreads));
  launch(varlen_states_kernel<T>, grid, 0, s, p, w);
}

}  // namespace ssm::cuda::ssd
