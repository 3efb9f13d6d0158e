// Mamba-2 SSD scan, forward, on the CPU. One task per (batch, head); the recurrence runs
// token by token over the (P, N) state, vectorized over N (see ssd_common.h): on a CPU this
// does fewer flops than the chunked matrix form and keeps the state in registers for a block.
#include "cpu/ssd_common.h"

namespace ssm::cpu::SSM_ISA {
namespace {
using namespace ssd;

// out[t] = (red + D x) * silu(z) for the block's tokens.
template <typename T>
void write_block(const SsdParams& p, const Workspace& w, const HeadCursor& cur, int64_t t0, int64_t k) {
  const int64_t P = p.headdim;
  const float* D = p.D.present() ? ptr<float>(p.D) + cur.h * p.D.stride[0] : nullptr;
  for (int64_t i = 0; i < k; ++i) {
    float* y = w.red + i * P;
    if (D)
      for (int64_t q = 0; q < P; ++q) y[q] += D[q * p.D.stride[1]] * w.x[i * P + q];
    if (p.z.present()) {
      const T* z = ptr<T>(p.z) + cur.b * p.z.stride[0] + (t0 + i) * p.z.stride[1] + cur.h * p.z.stride[2];
      for (int64_t q = 0; q < P; ++q) y[q] *= silu(to_float(z[q * p.z.stride[3]]));
    }
    T* out = mut_ptr<T>(p.out) + cur.b * p.out.stride[0] + (t0 + i) * p.out.stride[1] + cur.h * p.out.stride[2];
    store_row(out, p.out.stride[3], y, P);
  }
}

// Empty sequences of a varlen batch keep their start state.
void empty_sequence_states(const SsdParams& p, int64_t h) {
  const int32_t* cu = ptr<int32_t>(p.cu_seqlens);
  for (int64_t s = 0; s < p.nseq; ++s) {
    if (cu[(s + 1) * p.cu_seqlens.stride[0]] != cu[s * p.cu_seqlens.stride[0]]) continue;
    for (int64_t q = 0; q < p.headdim; ++q)
      for (int64_t n0 = 0; n0 < p.dstate; n0 += kVec) {
        vf r = reset_cols(p, int32_t(s), h, q, n0);
        save_state_cols<1>(p, s, h, q, n0, &r);
      }
  }
}

template <typename T>
void scan_head(const SsdParams& p, int64_t task, float* ws) {
  const int64_t P = p.headdim, N = p.dstate, Np = round_up(N, kVec);
  Workspace w(ws, P, Np);
  HeadCursor cur(p, task);
  const TensorArg& is = p.initial_states;
  if (is.present() && !p.cu_seqlens.present())
    load_state(w.state, ptr<float>(is) + cur.b * is.stride[0] + cur.h * is.stride[1], is.stride[2], is.stride[3], P, N, Np);
  else
    std::fill(w.state, w.state + P * Np, 0.f);
  if (p.varlen_states.present()) empty_sequence_states(p, cur.h);
  for (int64_t t0 = 0; t0 < p.seqlen; t0 += kBlock) {
    const int64_t k = std::min(kBlock, p.seqlen - t0);
    prepare_block<T>(p, cur, t0, k, Np, w);
    scan_block<ScanMode::forward>(p, w, cur.h, k, Np, nullptr);
    write_block<T>(p, w, cur, t0, k);
  }
  const TensorArg& fs = p.final_states;
  if (fs.present())
    store_state(mut_ptr<float>(fs) + cur.b * fs.stride[0] + cur.h * fs.stride[1], fs.stride[2], fs.stride[3], w.state, P, N, Np);
}

}  // namespace

void ssd_chunk_scan_fwd(const SsdParams& p, int nthreads) {
  SSM_CHECK(p.workspace_floats >= ssd::Workspace::floats(p.headdim, ssd::round_up(p.dstate, ssd::kVec)),
            "ssd_chunk_scan_fwd", "workspace too small");
  SSM_DTYPE_SWITCH(p.dtype, T, "ssd_chunk_scan_fwd", [&] {
    ssd::for_each_task(p, p.batch * p.nheads, nthreads, [&](int64_t task, float* ws, int64_t) { scan_head<T>(p, task, ws); });
  });
}

}  // namespace ssm::cpu::SSM_ISA
