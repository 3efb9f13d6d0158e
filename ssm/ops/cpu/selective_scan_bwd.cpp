// Mamba-1 selective scan, backward, on the CPU: the reverse-time adjoint recurrence.
// Same tasks and vectors as the forward. Pass 1 runs the recurrence forward and keeps the state
// entering every chunk; pass 2 walks the chunks backwards, recomputes the chunk's states and
// decays from there, and runs g_t = C_t dy_t + exp(dt_{t+1} A) g_{t+1} (g = dL/dh_t) down the chunk.
// dA, dD, ddt_bias and constant dB/dC are summed per vector in lanes and written per batch row;
// variable dB/dC are summed lane-wide per chunk and written per slice: the op layer adds the parts.
#include "cpu/kernels.h"
#include "cpu/runtime/parallel.h"
#include "cpu/selective_scan_common.h"

namespace ssm::cpu::SSM_ISA {
namespace {
using namespace scan;

// Per-thread scratch, allocated once per range of tasks. Per vector of the task (x max_vecs):
// states entering each chunk (hs), the adjoint carried between chunks (gc) and gradient sums.
struct BwdScratch {
  int64_t N, nvec;
  std::vector<float> hs, h, gc, dA, dBc, dCc, dD, ddb;          // per vector
  std::vector<float> Bt, Ct, dBt, dCt;                           // per chunk
  std::vector<float> A2, Aln, Bc, Cc, hprev, decay;              // per vector and chunk
  std::vector<float> u, dt, dtu, slope, z, dy, y, du, ddt, dz;   // (T x 8)
  BwdScratch(const Layout& lay, int64_t N_, int64_t nchunks)
      : N(N_), nvec(lay.max_vecs()), hs(nchunks * nvec * N * kLanes), h(N * kLanes), gc(nvec * N * kLanes),
        dA(nvec * N * kLanes), dBc(nvec * N * kLanes), dCc(nvec * N * kLanes), dD(nvec * kLanes),
        ddb(nvec * kLanes), Bt(kChunk * N), Ct(kChunk * N), dBt(kChunk * N * kLanes), dCt(kChunk * N * kLanes),
        A2(N * kLanes), Aln(N * kLanes), Bc(N * kLanes), Cc(N * kLanes), hprev(kChunk * N * kLanes),
        decay(kChunk * N * kLanes), u(kChunk * kLanes), dt(kChunk * kLanes), dtu(kChunk * kLanes),
        slope(kChunk * kLanes), z(kChunk * kLanes), dy(kChunk * kLanes), y(kChunk * kLanes),
        du(kChunk * kLanes), ddt(kChunk * kLanes), dz(kChunk * kLanes) {}
  float* vec(std::vector<float>& a, int64_t i) { return &a[i * N * kLanes]; }
};

template <typename T>
T* at(const TensorArg& a, int64_t b, int64_t c, int64_t t) {
  return static_cast<T*>(a.data) + b * a.stride[0] + c * a.stride[1] + t * a.stride[2];
}

// One vector's inputs of chunk [t0, t0 + T) in lanes; dt transformed, with its slope.
template <typename T, bool kBVar, bool kCVar>
void load_vector_chunk(const SelectiveScanParams& p, BwdScratch& s, int64_t b, int64_t c0, int nl, int64_t t0,
                       int64_t T_, bool grads) {
  const int64_t N = p.dstate;
  load_lanes(s.u.data(), at<T>(p.u, b, c0, t0), p.u.stride[1], p.u.stride[2], nl, T_);
  load_lanes(s.dt.data(), at<T>(p.delta, b, c0, t0), p.delta.stride[1], p.delta.stride[2], nl, T_);
  load_const_lanes(s.A2.data(), p.A, c0, nl, N, kLog2e);
  if (!kBVar) load_const_lanes(s.Bc.data(), p.B, c0, nl, N);
  transform_dt(s.dt.data(), s.dtu.data(), s.slope.data(), s.u.data(), load_vector_lanes(p.dt_bias, c0, nl, 0.f),
               p.softplus, T_);
  if (!grads) return;
  load_lanes(s.dy.data(), at<T>(p.dout, b, c0, t0), p.dout.stride[1], p.dout.stride[2], nl, T_);
  if (p.z.present()) load_lanes(s.z.data(), at<T>(p.z, b, c0, t0), p.z.stride[1], p.z.stride[2], nl, T_);
  load_const_lanes(s.Aln.data(), p.A, c0, nl, N);
  if (!kCVar) load_const_lanes(s.Cc.data(), p.C, c0, nl, N);
}

// Forward over one chunk from h: with `keep`, stores the state entering each step (after a
// restart) and each step's decay, and y_t = C_t . h_t.
template <bool kBVar, bool kCVar, bool kKeep>
void forward_chunk(const SelectiveScanParams& p, const Segments& seg, BwdScratch& s, float* h, int64_t c0, int nl,
                   int64_t t0, int64_t T_) {
  const int64_t N = p.dstate;
  for (int64_t t = 0; t < T_; ++t) {
    if (seg.reset[t0 + t] != -2) reset_state(h, p, seg.reset[t0 + t], c0, nl, N);
    const vf dtv = vload(&s.dt[t * kLanes]), duv = vload(&s.dtu[t * kLanes]);
    vf acc = splat(0.f);
    for (int64_t n = 0; n < N; ++n) {
      const vf a = exp2v(dtv * vload(&s.A2[n * kLanes]));
      const vf b = kBVar ? splat(s.Bt[t * N + n]) : vload(&s.Bc[n * kLanes]);
      const vf hp = vload(h + n * kLanes);
      const vf hn = a * hp + duv * b;
      vstore(h + n * kLanes, hn);
      if (kKeep) {
        vstore(&s.hprev[(t * N + n) * kLanes], hp);
        vstore(&s.decay[(t * N + n) * kLanes], a);
        acc += hn * (kCVar ? splat(s.Ct[t * N + n]) : vload(&s.Cc[n * kLanes]));
      }
    }
    if (kKeep) vstore(&s.y[t * kLanes], acc);
  }
}

// Gradient at the scan output: dy <- dout * silu(z) (the gradient of y + D u), dz, and the D terms.
void output_grads(BwdScratch& s, vf Dv, bool has_z, float* dD, int64_t T_) {
  vf dDsum = vload(dD);
  for (int64_t t = 0; t < T_; ++t) {
    const vf u = vload(&s.u[t * kLanes]);
    vf dy = vload(&s.dy[t * kLanes]);
    if (has_z) {
      const vf z = vload(&s.z[t * kLanes]), sg = sigmoidv(z);
      const vf out = vload(&s.y[t * kLanes]) + Dv * u;
      vstore(&s.dz[t * kLanes], dy * out * sg * (splat(1.f) + z * (splat(1.f) - sg)));
      dy *= z * sg;
    }
    vstore(&s.dy[t * kLanes], dy);
    dDsum += dy * u;
  }
  vstore(dD, dDsum);
}

// The adjoint recurrence down one chunk for one vector: du, ddt (s.du, s.ddt), dA and dB/dC sums.
template <bool kBVar, bool kCVar>
void reverse_chunk(const SelectiveScanParams& p, const Segments& seg, BwdScratch& s, int64_t i, vf Dv, int64_t c0,
                   int nl, int64_t t0, int64_t T_) {
  const int64_t N = p.dstate;
  float *gc = s.vec(s.gc, i), *dA = s.vec(s.dA, i), *dBc = s.vec(s.dBc, i), *dCc = s.vec(s.dCc, i);
  for (int64_t t = T_ - 1; t >= 0; --t) {
    const int32_t last = seg.last[t0 + t];
    if (last >= 0 && p.dlast.present()) {
      load_matrix_lanes(s.h.data(), p.dlast, last, c0, nl, N);
      for (int64_t k = 0; k < N * kLanes; ++k) gc[k] += s.h[k];
    }
    const vf dtv = vload(&s.dt[t * kLanes]), duv = vload(&s.dtu[t * kLanes]), dyv = vload(&s.dy[t * kLanes]);
    vf sum_gb = splat(0.f), sum_ddt = splat(0.f);
    for (int64_t n = 0; n < N; ++n) {
      const int64_t k = (t * N + n) * kLanes;
      const vf hp = vload(&s.hprev[k]), a = vload(&s.decay[k]);
      const vf b = kBVar ? splat(s.Bt[t * N + n]) : vload(&s.Bc[n * kLanes]);
      const vf c = kCVar ? splat(s.Ct[t * N + n]) : vload(&s.Cc[n * kLanes]);
      const vf h = a * hp + duv * b;
      const vf g = vload(gc + n * kLanes) + dyv * c;
      if (kCVar) vstore(&s.dCt[k], vload(&s.dCt[k]) + dyv * h);
      else vstore(dCc + n * kLanes, vload(dCc + n * kLanes) + dyv * h);
      if (kBVar) vstore(&s.dBt[k], vload(&s.dBt[k]) + g * duv);
      else vstore(dBc + n * kLanes, vload(dBc + n * kLanes) + g * duv);
      sum_gb += g * b;
      const vf w = g * a * hp;
      sum_ddt += w * vload(&s.Aln[n * kLanes]);
      vstore(dA + n * kLanes, vload(dA + n * kLanes) + w * dtv);
      vstore(gc + n * kLanes, g * a);
    }
    vstore(&s.ddt[t * kLanes], (vload(&s.u[t * kLanes]) * sum_gb + sum_ddt) * vload(&s.slope[t * kLanes]));
    vstore(&s.du[t * kLanes], dyv * Dv + dtv * sum_gb);
    const int32_t reset = seg.reset[t0 + t];
    if (reset != -2) {  // the state entering t was a restart: its gradient leaves here
      if (reset >= 0 && p.dinitial_state.present()) store_state(p.dinitial_state, reset, c0, nl, N, gc);
      std::fill(gc, gc + N * kLanes, 0.f);
    }
  }
}

// dst[t] = sum of the lanes of the chunk's lane-wide sums: the slice's part of variable dB or dC.
void write_bc_grad(const TensorArg& dst, int64_t row, int64_t g, const float* sums, int64_t N, int64_t t0, int64_t T_) {
  float* base = mut_ptr<float>(dst) + row * dst.stride[0] + g * dst.stride[1] + t0 * dst.stride[3];
  for (int64_t t = 0; t < T_; ++t)
    for (int64_t n = 0; n < N; ++n) base[n * dst.stride[2] + t * dst.stride[3]] = hsum(vload(&sums[(t * N + n) * kLanes]));
}

// Per-vector sums -> per-batch-row workspaces (B, D, N) and (B, D).
void write_vector_sums(const SelectiveScanParams& p, BwdScratch& s, int64_t i, int64_t b, int64_t c0, int nl) {
  store_state(p.dA, int32_t(b), c0, nl, p.dstate, s.vec(s.dA, i));
  if (!p.B_var) store_state(p.dB, int32_t(b), c0, nl, p.dstate, s.vec(s.dBc, i));
  if (!p.C_var) store_state(p.dC, int32_t(b), c0, nl, p.dstate, s.vec(s.dCc, i));
  for (int l = 0; l < nl; ++l) {
    if (p.dD.present()) mut_ptr<float>(p.dD)[b * p.dD.stride[0] + (c0 + l) * p.dD.stride[1]] = s.dD[i * kLanes + l];
    if (p.ddt_bias.present())
      mut_ptr<float>(p.ddt_bias)[b * p.ddt_bias.stride[0] + (c0 + l) * p.ddt_bias.stride[1]] = s.ddb[i * kLanes + l];
  }
}

// Pass 1: hs[c] = the state entering chunk c, for every vector of the task.
template <typename T, bool kBVar, bool kCVar>
void pass_forward(const SelectiveScanParams& p, const Layout& lay, const Layout::Task& tk, BwdScratch& s,
                  const Segments& seg) {
  const int64_t N = p.dstate, nv = tk.v1 - tk.v0, nchunks = (p.seqlen + kChunk - 1) / kChunk;
  for (int64_t i = 0; i < nv; ++i) std::fill(s.vec(s.hs, i), s.vec(s.hs, i) + N * kLanes, 0.f);
  for (int64_t c = 0; c + 1 < nchunks; ++c) {
    const int64_t t0 = c * kChunk;
    if (kBVar) load_bc_chunk<T>(s.Bt.data(), p.B, tk.b, tk.g, N, t0, kChunk);
    for (int64_t i = 0; i < nv; ++i) {
      const int64_t c0 = lay.channel(tk, tk.v0 + i);
      const int nl = lay.lanes(tk.v0 + i);
      float* h = s.vec(s.hs, (c + 1) * nv + i);
      std::copy(s.vec(s.hs, c * nv + i), s.vec(s.hs, c * nv + i) + N * kLanes, h);
      load_vector_chunk<T, kBVar, kCVar>(p, s, tk.b, c0, nl, t0, kChunk, false);
      forward_chunk<kBVar, kCVar, false>(p, seg, s, h, c0, nl, t0, kChunk);
    }
  }
}

// du, ddelta, dz of one vector's chunk, and its ddt_bias sum.
template <typename T>
void store_chunk_grads(const SelectiveScanParams& p, BwdScratch& s, int64_t i, int64_t b, int64_t c0, int nl,
                       int64_t t0, int64_t T_) {
  vf db = vload(&s.ddb[i * kLanes]);
  for (int64_t t = 0; t < T_; ++t) db += vload(&s.ddt[t * kLanes]);
  vstore(&s.ddb[i * kLanes], db);
  store_lanes(at<T>(p.du, b, c0, t0), p.du.stride[1], p.du.stride[2], s.du.data(), nl, T_);
  store_lanes(at<T>(p.ddelta, b, c0, t0), p.ddelta.stride[1], p.ddelta.stride[2], s.ddt.data(), nl, T_);
  if (p.dz.present()) store_lanes(at<T>(p.dz, b, c0, t0), p.dz.stride[1], p.dz.stride[2], s.dz.data(), nl, T_);
}

// Pass 2: chunks in reverse; per chunk recompute, output gradients, then the adjoint recurrence.
template <typename T, bool kBVar, bool kCVar>
void pass_backward(const SelectiveScanParams& p, const Layout& lay, const Layout::Task& tk, BwdScratch& s,
                   const Segments& seg) {
  const int64_t N = p.dstate, nv = tk.v1 - tk.v0, nchunks = (p.seqlen + kChunk - 1) / kChunk;
  for (auto* a : {&s.gc, &s.dA, &s.dBc, &s.dCc, &s.dD, &s.ddb}) std::fill(a->begin(), a->end(), 0.f);
  for (int64_t c = nchunks - 1; c >= 0; --c) {
    const int64_t t0 = c * kChunk, T_ = std::min(kChunk, p.seqlen - t0);
    if (kBVar) load_bc_chunk<T>(s.Bt.data(), p.B, tk.b, tk.g, N, t0, T_);
    if (kCVar) load_bc_chunk<T>(s.Ct.data(), p.C, tk.b, tk.g, N, t0, T_);
    std::fill(s.dBt.begin(), s.dBt.end(), 0.f);
    std::fill(s.dCt.begin(), s.dCt.end(), 0.f);
    for (int64_t i = 0; i < nv; ++i) {
      const int64_t c0 = lay.channel(tk, tk.v0 + i);
      const int nl = lay.lanes(tk.v0 + i);
      load_vector_chunk<T, kBVar, kCVar>(p, s, tk.b, c0, nl, t0, T_, true);
      const vf Dv = load_vector_lanes(p.D, c0, nl, 0.f);
      std::copy(s.vec(s.hs, c * nv + i), s.vec(s.hs, c * nv + i) + N * kLanes, s.h.data());
      forward_chunk<kBVar, kCVar, true>(p, seg, s, s.h.data(), c0, nl, t0, T_);
      output_grads(s, Dv, p.z.present(), &s.dD[i * kLanes], T_);
      reverse_chunk<kBVar, kCVar>(p, seg, s, i, Dv, c0, nl, t0, T_);
      store_chunk_grads<T>(p, s, i, tk.b, c0, nl, t0, T_);
    }
    if (kBVar) write_bc_grad(p.dB, tk.s * p.batch + tk.b, tk.g, s.dBt.data(), N, t0, T_);
    if (kCVar) write_bc_grad(p.dC, tk.s * p.batch + tk.b, tk.g, s.dCt.data(), N, t0, T_);
  }
  for (int64_t i = 0; i < nv; ++i)
    write_vector_sums(p, s, i, tk.b, lay.channel(tk, tk.v0 + i), lay.lanes(tk.v0 + i));
}

// A sequence without tokens passes its last-state gradient straight to its initial state.
void empty_rows_grads(const SelectiveScanParams& p, const Layout& lay, const Layout::Task& tk, BwdScratch& s,
                      const Segments& seg) {
  if (!p.dinitial_state.present()) return;
  for (int64_t v = tk.v0; v < tk.v1; ++v) {
    const int64_t c0 = lay.channel(tk, v);
    for (int32_t row : seg.empty_rows) {
      if (p.dlast.present()) load_matrix_lanes(s.h.data(), p.dlast, row, c0, lay.lanes(v), p.dstate);
      else std::fill(s.h.begin(), s.h.end(), 0.f);
      store_state(p.dinitial_state, row, c0, lay.lanes(v), p.dstate, s.h.data());
    }
  }
}

}  // namespace

void selective_scan_bwd(const SelectiveScanParams& p, int nthreads) {
  const Layout lay(p);
  const int64_t nchunks = (p.seqlen + kChunk - 1) / kChunk;
  SSM_DTYPE_SWITCH(p.dtype, T, "selective_scan_bwd", [&] {
    SSM_BOOL_SWITCH(p.B_var, kBVar, [&] {
      SSM_BOOL_SWITCH(p.C_var, kCVar, [&] {
        parallel_for(lay.tasks(p.batch), nthreads, [&](int64_t begin, int64_t end) {
          BwdScratch s(lay, p.dstate, std::max<int64_t>(nchunks, 1));
          Segments seg;
          for (int64_t i = begin; i < end; ++i) {
            const Layout::Task tk = lay.task(i);
            seg.build(p, tk.b);
            empty_rows_grads(p, lay, tk, s, seg);
            pass_forward<T, kBVar, kCVar>(p, lay, tk, s, seg);
            pass_backward<T, kBVar, kCVar>(p, lay, tk, s, seg);
          }
        });
      });
    });
  });
}

}  // namespace ssm::cpu::SSM_ISA
