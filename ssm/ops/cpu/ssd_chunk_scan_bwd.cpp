// Mamba-2 SSD scan, backward, on the CPU. One task per (batch, head):
//  1. a forward pass keeps the state entering every segment of `seg` blocks of kBlock tokens;
//  2. segments are visited last to first: a forward pass over the segment keeps the state entering
//     each of its blocks;
//  3. the segment's blocks are visited last to first: the block's states are recomputed from its
//     checkpoint, then the state gradient S_t = a_{t+1} S_{t+1} + g_t ⊗ C_t (+ dfinal, dvarlen) runs
//     back over the block, row by row in column groups held in registers, accumulating each token's
//     dx, dΔ, dB, dC and dA (through Σ S_t ⊙ H_{t-1}) on the way.
// When the workspace holds a state per block (Python gives it that up to a size), the whole sequence
// is one segment and step 1 is empty; else segments of kSegBlocks (two-level checkpoints: L / 512 + 32
// states instead of L / 16, for one more forward pass over all but the last segment).
// g_t = dy_t silu(z_t) is the gradient of the ungated output. dA, dD are per head and dB, dC per
// thread (accumulated over its heads); Python sums them.
#include "cpu/ssd_common.h"

namespace ssm::cpu::SSM_ISA {
namespace {
using namespace ssd;

constexpr int64_t kSegBlocks = 32;  // blocks per segment of the two-level checkpoints (512 tokens)

// Slices of the workspace beyond the forward's (Workspace::extra), for segments of `seg` blocks.
struct BwdWorkspace {
  float* seg_ckpt;  // (nsegs, P, Np): state entering each segment
  float* ckpt;      // (min(nblocks, seg), P, Np): state entering each block of the current segment
  float* states;    // (kBlock + 1, P, Np): state before the block, then after each token
  float* dstate;    // (P, Np): the running state gradient S
  float* g;         // (kBlock, P): gradient of the ungated output
  float* dB;        // (kBlock, Np): Σ_q S[q, :] u[q]
  float* dC;        // (kBlock, Np): Σ_q g[q] H[q, :]
  float* acc_da;    // (kBlock, kVec): Σ S_t ⊙ H_{t-1}
  int32_t* seg_cursor;  // (nsegs, 2): HeadCursor (prev_seq, next_end) at each segment start
  int32_t* cursor;      // (seg, 2): the same at each block start of the current segment
  int64_t seg;

  static int64_t nblocks(int64_t L) { return (L + kBlock - 1) / kBlock; }
  static int64_t nsegs(int64_t L, int64_t seg) { return (nblocks(L) + seg - 1) / seg; }

  static int64_t floats(int64_t P, int64_t Np, int64_t L, int64_t seg) {
    const int64_t fine = std::min(nblocks(L), seg);
    return round_up(nsegs(L, seg) * P * Np, 16) + round_up(fine * P * Np, 16) + round_up((kBlock + 1) * P * Np, 16) +
           round_up(P * Np, 16) + round_up(kBlock * P, 16) + 2 * round_up(kBlock * Np, 16) +
           round_up(kBlock * kVec, 16) + round_up(2 * nsegs(L, seg), 16) + round_up(2 * seg, 16);
  }

  // One segment (a checkpoint per block) when the workspace after the forward's has room for it.
  static int64_t segment_blocks(int64_t P, int64_t Np, int64_t L, int64_t floats_given) {
    const int64_t one = std::max<int64_t>(1, nblocks(L));
    return floats_given >= floats(P, Np, L, one) ? one : kSegBlocks;
  }

  BwdWorkspace(float* base, int64_t P, int64_t Np, int64_t L, int64_t seg_blocks) : seg(seg_blocks) {
    float* p = base;
    auto take = [&](int64_t n) { float* r = p; p += round_up(n, 16); return r; };
    seg_ckpt = take(nsegs(L, seg) * P * Np), ckpt = take(std::min(nblocks(L), seg) * P * Np);
    states = take((kBlock + 1) * P * Np), dstate = take(P * Np);
    g = take(kBlock * P), dB = take(kBlock * Np), dC = take(kBlock * Np), acc_da = take(kBlock * kVec);
    seg_cursor = reinterpret_cast<int32_t*>(take(2 * nsegs(L, seg)));
    cursor = reinterpret_cast<int32_t*>(take(2 * seg));
  }
};

// Advances w.state over blocks [j0, j1), keeping the state and cursor entering every block whose
// index is a multiple of `every` at ckpt / cursor[(j - j0) / every] (the last block is not advanced
// over: nothing needs the state after it).
template <typename T>
void checkpoint_pass(const SsdParams& p, HeadCursor cur, Workspace& w, float* ckpt, int32_t* cursor, int64_t j0,
                     int64_t j1, int64_t every, int64_t Np) {
  const int64_t PN = p.headdim * Np;
  for (int64_t j = j0; j < j1; ++j) {
    if ((j - j0) % every == 0) {
      const int64_t slot = (j - j0) / every;
      std::copy(w.state, w.state + PN, ckpt + slot * PN);
      cursor[2 * slot] = cur.prev_seq, cursor[2 * slot + 1] = int32_t(cur.next_end);
    }
    if (j + 1 == j1) break;
    const int64_t t0 = j * kBlock, k = std::min(kBlock, p.seqlen - t0);
    prepare_block<T>(p, cur, t0, k, Np, w);
    scan_block<ScanMode::advance>(p, w, cur.h, k, Np, nullptr);
  }
}

// g = dy silu(z), dz = dy ypre silu'(z) with ypre = red + D x (red = H C from the recompute).
template <typename T>
void output_grads(const SsdParams& p, const Workspace& w, BwdWorkspace& bw, const HeadCursor& cur, int64_t t0,
                  int64_t k, float* dD) {
  const int64_t P = p.headdim;
  const float* D = p.D.present() ? ptr<float>(p.D) + cur.h * p.D.stride[0] : nullptr;
  for (int64_t i = 0; i < k; ++i) {
    const int64_t t = t0 + i;
    const T* dy = ptr<T>(p.dout) + cur.b * p.dout.stride[0] + t * p.dout.stride[1] + cur.h * p.dout.stride[2];
    float* g = bw.g + i * P;
    load_row(g, dy, p.dout.stride[3], P);
    if (p.z.present()) {
      const T* z = ptr<T>(p.z) + cur.b * p.z.stride[0] + t * p.z.stride[1] + cur.h * p.z.stride[2];
      T* dz = mut_ptr<T>(p.dz) + cur.b * p.dz.stride[0] + t * p.dz.stride[1] + cur.h * p.dz.stride[2];
      for (int64_t q = 0; q < P; ++q) {
        float zv = to_float(z[q * p.z.stride[3]]), sig = 1.f / (1.f + std::exp(-zv));
        float ypre = w.red[i * P + q] + (D ? D[q * p.D.stride[1]] * w.x[i * P + q] : 0.f);
        dz[q * p.dz.stride[3]] = from_float<T>(g[q] * ypre * sig * (1.f + zv * (1.f - sig)));
        g[q] *= zv * sig;
      }
    }
    if (D)
      for (int64_t q = 0; q < P; ++q) dD[q] += g[q] * w.x[i * P + q];
  }
}

// S += dvarlen[seq, h, q, n0 : n0 + 8] (columns below N).
inline vf varlen_grad(const SsdParams& p, int64_t seq, int64_t h, int64_t q, int64_t n0) {
  const TensorArg& v = p.dvarlen;
  const float* src = ptr<float>(v) + seq * v.stride[0] + h * v.stride[1] + q * v.stride[2];
  vf r{};
  for (int l = 0; l < kVec && n0 + l < p.dstate; ++l) r[l] = src[(n0 + l) * v.stride[3]];
  return r;
}

// dinitial[seq, h, q, n0 : n0 + 8] = v (columns below N): a sequence's start state gradient.
inline void store_start_grad(const SsdParams& p, int64_t seq, int64_t h, int64_t q, int64_t n0, vf v) {
  const TensorArg& d = p.dinitial;
  float* dst = mut_ptr<float>(d) + seq * d.stride[0] + h * d.stride[1] + q * d.stride[2];
  for (int l = 0; l < kVec && n0 + l < p.dstate; ++l) dst[(n0 + l) * d.stride[3]] = v[l];
}

// One token's sums over a column group: dB += S u, dC += g H_t, da += S ⊙ H_{t-1}, x += S ⊙ B.
template <int NV>
inline void token_sums(const vf* s, const vf* prev, const vf* hc, vf u, vf g, const float* Bi, float* dB, float* dC,
                       vf& da, vf& x) {
#pragma GCC unroll 4
  for (int j = 0; j < NV; ++j) {
    store(dB + j * kVec, load(dB + j * kVec) + s[j] * u);
    store(dC + j * kVec, load(dC + j * kVec) + g * hc[j]);
    da += s[j] * prev[j], x += s[j] * load(Bi + j * kVec);
  }
}

// Reverse scan of state row q, columns [n0, n0 + 8 NV), over the block; next_carry is the factor
// of this block's last state in the next token's state (a_{t0 + k}, 0 at a reset). H_t comes
// from the recomputed states; H_{t-1} is carried to the next (earlier) token.
template <int NV>
void reverse_row_cols(const SsdParams& p, const Workspace& w, BwdWorkspace& bw, int64_t h, int64_t q, int64_t n0,
                      int64_t k, int64_t Np, float next_carry) {
  const int64_t P = p.headdim, PN = P * Np;
  float* row = bw.dstate + q * Np + n0;
  const float* H = bw.states + q * Np + n0;
  float* acc = w.row_acc(q);
  vf s[NV], hc[NV];
#pragma GCC unroll 4
  for (int j = 0; j < NV; ++j) s[j] = load(row + j * kVec), hc[j] = load(H + k * PN + j * kVec);
  for (int64_t i = k - 1; i >= 0; --i) {
    const vf carry = splat(next_carry), g = splat(bw.g[i * P + q]), u = splat(w.u[i * P + q]);
    const float *Ci = w.C + i * Np + n0, *Bi = w.B + i * Np + n0;
    float *dB = bw.dB + i * Np + n0, *dC = bw.dC + i * Np + n0;
    vf hp[NV], da{}, x{};
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) hp[j] = load(H + i * PN + j * kVec);
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) s[j] = s[j] * carry + g * load(Ci + j * kVec);
    if (p.dvarlen.present() && w.seq_end[i] >= 0)
      for (int j = 0; j < NV; ++j) s[j] += varlen_grad(p, w.seq_end[i], h, q, n0 + j * kVec);
    if (w.reset[i] >= 0) {
      vf start[NV];
      for (int j = 0; j < NV; ++j) start[j] = reset_cols(p, w.reset[i], h, q, n0 + j * kVec);
      token_sums<NV>(s, start, hc, u, g, Bi, dB, dC, da, x);
    } else {
      token_sums<NV>(s, hp, hc, u, g, Bi, dB, dC, da, x);
    }
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) hc[j] = hp[j];
    store(bw.acc_da + i * kVec, load(bw.acc_da + i * kVec) + da);
    store(acc + i * kVec, load(acc + i * kVec) + x);
    next_carry = w.reset[i] >= 0 ? 0.f : w.decay[i];
    if (w.reset[i] >= 0 && p.dinitial.present() && p.cu_seqlens.present())
      for (int j = 0; j < NV; ++j) store_start_grad(p, w.reset[i], h, q, n0 + j * kVec, s[j] * splat(w.decay[i]));
  }
#pragma GCC unroll 4
  for (int j = 0; j < NV; ++j) store(row + j * kVec, s[j]);
}

// Runs the state gradient back over the block; w.red[i, q] = Σ_n S_t[q, n] B_t[n].
void reverse_block(const SsdParams& p, const Workspace& w, BwdWorkspace& bw, int64_t h, int64_t k, int64_t Np,
                   float next_carry) {
  std::fill(bw.acc_da, bw.acc_da + k * kVec, 0.f);
  std::fill(bw.dB, bw.dB + k * Np, 0.f);
  std::fill(bw.dC, bw.dC + k * Np, 0.f);
  const int64_t P = p.headdim;
  for (int64_t q0 = 0; q0 < P; q0 += kRows) {
    const int64_t rows = std::min(kRows, P - q0);
    for (int64_t q = q0; q < q0 + rows; ++q) {
      int64_t n0 = 0;
      for (; n0 + 4 * kVec <= Np; n0 += 4 * kVec) reverse_row_cols<4>(p, w, bw, h, q, n0, k, Np, next_carry);
      for (; n0 + 2 * kVec <= Np; n0 += 2 * kVec) reverse_row_cols<2>(p, w, bw, h, q, n0, k, Np, next_carry);
      for (; n0 < Np; n0 += kVec) reverse_row_cols<1>(p, w, bw, h, q, n0, k, Np, next_carry);
    }
    w.reduce_rows(k, P, q0, rows);
  }
}

// dx, ddt (wrt dt + dt_bias), dB, dC of the block's tokens; returns the block's share of dA.
template <typename T>
float write_block_grads(const SsdParams& p, const Workspace& w, const BwdWorkspace& bw, const HeadCursor& cur,
                        int64_t t0, int64_t k, int64_t part) {
  const int64_t P = p.headdim, N = p.dstate, Np = round_up(N, kVec);
  const float A = ptr<float>(p.A)[cur.h * p.A.stride[0]];
  const float bias = p.dt_bias.present() ? ptr<float>(p.dt_bias)[cur.h * p.dt_bias.stride[0]] : 0.f;
  const float* D = p.D.present() ? ptr<float>(p.D) + cur.h * p.D.stride[0] : nullptr;
  float dA = 0.f;
  for (int64_t i = 0; i < k; ++i) {
    const int64_t t = t0 + i;
    const float d = w.delta[i], da = hsum(load(bw.acc_da + i * kVec)) * w.decay[i];
    float ddelta = da * A;
    dA += da * d;
    T* dx = mut_ptr<T>(p.dx) + cur.b * p.dx.stride[0] + t * p.dx.stride[1] + cur.h * p.dx.stride[2];
    for (int64_t q = 0; q < P; ++q) {
      const float sb = w.red[i * P + q];
      ddelta += sb * w.x[i * P + q];
      dx[q * p.dx.stride[3]] = from_float<T>(d * sb + (D ? D[q * p.D.stride[1]] * bw.g[i * P + q] : 0.f));
    }
    const float v = ptr<float>(p.dt)[cur.b * p.dt.stride[0] + t * p.dt.stride[1] + cur.h * p.dt.stride[2]] + bias;
    mut_ptr<float>(p.ddt)[cur.b * p.ddt.stride[0] + t * p.ddt.stride[1] + cur.h * p.ddt.stride[2]] =
        ddelta * delta_grad(v, p.dt_softplus, p.dt_lo, p.dt_hi);
    const int64_t row = part * p.batch + cur.b;
    float* dB = mut_ptr<float>(p.dB) + row * p.dB.stride[0] + t * p.dB.stride[1] + cur.g * p.dB.stride[2];
    float* dC = mut_ptr<float>(p.dC) + row * p.dC.stride[0] + t * p.dC.stride[1] + cur.g * p.dC.stride[2];
    for (int64_t n = 0; n < N; ++n) dB[n * p.dB.stride[3]] += bw.dB[i * Np + n];
    for (int64_t n = 0; n < N; ++n) dC[n * p.dC.stride[3]] += bw.dC[i * Np + n];
  }
  return dA;
}

// The start state of an empty sequence is its varlen state: its gradient is dvarlen (or 0).
void empty_sequence_grads(const SsdParams& p, int64_t h) {
  const int32_t* cu = ptr<int32_t>(p.cu_seqlens);
  for (int64_t s = 0; s < p.nseq; ++s) {
    if (cu[(s + 1) * p.cu_seqlens.stride[0]] != cu[s * p.cu_seqlens.stride[0]]) continue;
    for (int64_t q = 0; q < p.headdim; ++q)
      for (int64_t n0 = 0; n0 < p.dstate; n0 += kVec)
        store_start_grad(p, s, h, q, n0, p.dvarlen.present() ? varlen_grad(p, s, h, q, n0) : vf{});
  }
}

template <typename T>
void backward_head(const SsdParams& p, int64_t task, float* ws, int64_t part) {
  const int64_t P = p.headdim, N = p.dstate, Np = round_up(N, kVec), PN = P * Np;
  Workspace w(ws, P, Np);
  BwdWorkspace bw(w.extra, P, Np, p.seqlen,
                  BwdWorkspace::segment_blocks(P, Np, p.seqlen, p.workspace_floats - Workspace::floats(P, Np)));
  const HeadCursor start(p, task);
  const TensorArg& is = p.initial_states;
  if (is.present() && !p.cu_seqlens.present())
    load_state(w.state, ptr<float>(is) + start.b * is.stride[0] + start.h * is.stride[1], is.stride[2], is.stride[3], P, N, Np);
  else
    std::fill(w.state, w.state + PN, 0.f);
  const int64_t seg = bw.seg, nblocks = BwdWorkspace::nblocks(p.seqlen), nsegs = BwdWorkspace::nsegs(p.seqlen, seg);
  // (up to the last segment's first block: its blocks are advanced over by the segment's own pass)
  checkpoint_pass<T>(p, start, w, bw.seg_ckpt, bw.seg_cursor, 0, std::min(nblocks, (nsegs - 1) * seg + 1), seg, Np);

  const TensorArg& df = p.dfinal;
  if (df.present())
    load_state(bw.dstate, ptr<float>(df) + start.b * df.stride[0] + start.h * df.stride[1], df.stride[2], df.stride[3], P, N, Np);
  else
    std::fill(bw.dstate, bw.dstate + PN, 0.f);
  float* dD = p.dD.present() ? mut_ptr<float>(p.dD) + start.b * p.dD.stride[0] + start.h * p.dD.stride[1] : nullptr;
  if (dD) std::fill(dD, dD + P, 0.f);
  if (p.dinitial.present() && p.cu_seqlens.present()) empty_sequence_grads(p, start.h);
  float dA = 0.f, next_carry = 1.f;
  for (int64_t s = nsegs - 1; s >= 0; --s) {
    const int64_t j0 = s * seg, j1 = std::min(nblocks, j0 + seg);
    HeadCursor seg = start;
    seg.prev_seq = bw.seg_cursor[2 * s], seg.next_end = bw.seg_cursor[2 * s + 1];
    std::copy(bw.seg_ckpt + s * PN, bw.seg_ckpt + (s + 1) * PN, w.state);
    checkpoint_pass<T>(p, seg, w, bw.ckpt, bw.cursor, j0, j1, 1, Np);
    for (int64_t j = j1 - 1; j >= j0; --j) {
      const int64_t t0 = j * kBlock, k = std::min(kBlock, p.seqlen - t0), slot = j - j0;
      HeadCursor cur = start;
      cur.prev_seq = bw.cursor[2 * slot], cur.next_end = bw.cursor[2 * slot + 1];
      prepare_block<T>(p, cur, t0, k, Np, w);
      std::copy(bw.ckpt + slot * PN, bw.ckpt + (slot + 1) * PN, w.state);
      std::copy(bw.ckpt + slot * PN, bw.ckpt + (slot + 1) * PN, bw.states);
      scan_block<ScanMode::states>(p, w, start.h, k, Np, bw.states);
      output_grads<T>(p, w, bw, start, t0, k, dD);
      reverse_block(p, w, bw, start.h, k, Np, next_carry);
      dA += write_block_grads<T>(p, w, bw, start, t0, k, part);
      next_carry = w.reset[0] >= 0 ? 0.f : w.decay[0];
    }
  }
  mut_ptr<float>(p.dA)[start.b * p.dA.stride[0] + start.h * p.dA.stride[1]] = dA;
  const TensorArg& di = p.dinitial;
  if (di.present() && !p.cu_seqlens.present()) {
    for (int64_t e = 0; e < PN; ++e) bw.dstate[e] *= next_carry;
    store_state(mut_ptr<float>(di) + start.b * di.stride[0] + start.h * di.stride[1], di.stride[2], di.stride[3],
                bw.dstate, P, N, Np);
  }
}

}  // namespace

void ssd_chunk_scan_bwd(const SsdParams& p, int nthreads) {
  const int64_t Np = ssd::round_up(p.dstate, ssd::kVec);
  const int64_t one = std::max<int64_t>(1, BwdWorkspace::nblocks(p.seqlen));  // (see segment_blocks)
  SSM_CHECK(p.workspace_floats >= ssd::Workspace::floats(p.headdim, Np) +
                std::min(BwdWorkspace::floats(p.headdim, Np, p.seqlen, one),
                         BwdWorkspace::floats(p.headdim, Np, p.seqlen, kSegBlocks)),
            "ssd_chunk_scan_bwd", "workspace too small");
  SSM_DTYPE_SWITCH(p.dtype, T, "ssd_chunk_scan_bwd", [&] {
    ssd::for_each_task(p, p.batch * p.nheads, nthreads, [&](int64_t task, float* ws, int64_t part) { backward_head<T>(p, task, ws, part); });
  });
}

}  // namespace ssm::cpu::SSM_ISA
