// Pieces shared by the SSD scan kernels (forward and backward) on the CPU: the 8-float vector
// type, the per-thread workspace layout, and the preparation of a block of tokens of one head
// (Δ, decay, B/C/x rows widened to float32 and zero-padded to a multiple of 8).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "cpu/kernels.h"
#include "cpu/runtime/parallel.h"
#include "cpu/vec.h"

// Vectors of 8 floats cross inline helpers only; the ABI note for non-AVX builds does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace ssm::cpu::SSM_ISA::ssd {

constexpr int64_t kBlock = 16;  // tokens per block: B/C rows of a block stay in L1
constexpr int kVec = 8;

typedef float vf __attribute__((vector_size(kVec * sizeof(float))));
typedef float vf_unaligned __attribute__((vector_size(kVec * sizeof(float)), aligned(4), may_alias));

inline vf load(const float* p) { return *reinterpret_cast<const vf_unaligned*>(p); }
inline void store(float* p, vf v) { *reinterpret_cast<vf_unaligned*>(p) = v; }
inline vf splat(float s) { return vf{} + s; }
inline float hsum(vf v) {
  float s = 0.f;
  for (int i = 0; i < kVec; ++i) s += v[i];
  return s;
}
inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// [Σ v[0], ..., Σ v[7]]: the lane sums of 8 vectors as one vector (pairwise shuffles).
inline vf hsum8(const vf* v) {
  auto pairs = [](vf a, vf b) {
    return __builtin_shufflevector(a, b, 0, 2, 8, 10, 4, 6, 12, 14) +
           __builtin_shufflevector(a, b, 1, 3, 9, 11, 5, 7, 13, 15);
  };
  vf u0 = pairs(pairs(v[0], v[1]), pairs(v[2], v[3])), u1 = pairs(pairs(v[4], v[5]), pairs(v[6], v[7]));
  return __builtin_shufflevector(u0, u1, 0, 1, 2, 3, 8, 9, 10, 11) +
         __builtin_shufflevector(u0, u1, 4, 5, 6, 7, 12, 13, 14, 15);
}

constexpr int64_t kRows = 8;  // state rows whose per-token sums are reduced together

// Slices of one thread's float32 workspace row; sizes in floats, each rounded to 16.
struct Workspace {
  float* state;     // (P, Np): the running state H
  float* B;         // (kBlock, Np)
  float* C;         // (kBlock, Np)
  float* x;         // (kBlock, P)
  float* u;         // (kBlock, P): Δ x
  float* delta;     // (kBlock,)
  float* decay;     // (kBlock,): a_t = exp(Δ_t A)
  int32_t* seq_end; // (kBlock,): index of the sequence ending at the token, or -1
  int32_t* reset;   // (kBlock,): -1, or the sequence whose start state replaces the state before the token
  float* acc;       // (kRows, kBlock, kVec): per-(row of a group of 8, token) vector accumulators
  float* red;       // (kBlock, P): per-token reductions over N
  float* extra;     // backward only: see ssd_chunk_scan_bwd.cpp

  static int64_t floats(int64_t P, int64_t Np) {
    return round_up(P * Np, 16) + 2 * round_up(kBlock * Np, 16) + 3 * round_up(kBlock * P, 16) +
           4 * 16 + round_up(kRows * kBlock * kVec, 16);
  }

  Workspace(float* base, int64_t P, int64_t Np) {
    float* p = base;
    auto take = [&](int64_t n) { float* r = p; p += round_up(n, 16); return r; };
    state = take(P * Np), B = take(kBlock * Np), C = take(kBlock * Np);
    x = take(kBlock * P), u = take(kBlock * P), red = take(kBlock * P);
    delta = take(kBlock), decay = take(kBlock);
    seq_end = reinterpret_cast<int32_t*>(take(kBlock)), reset = reinterpret_cast<int32_t*>(take(kBlock));
    acc = take(kRows * kBlock * kVec);
    extra = p;
    std::fill(acc, acc + kRows * kBlock * kVec, 0.f);
  }

  float* row_acc(int64_t q) const { return acc + (q % kRows) * kBlock * kVec; }

  // red[i, q0 + r] = lane sum of row_acc(q0 + r)[i] for r < rows, i < k; then clears acc.
  void reduce_rows(int64_t k, int64_t P, int64_t q0, int64_t rows) const {
    for (int64_t i = 0; i < k; ++i) {
      vf v[kRows];
      for (int64_t r = 0; r < kRows; ++r) v[r] = load(acc + (r * kBlock + i) * kVec);
      if (rows == kRows) {
        store(red + i * P + q0, hsum8(v));
      } else {
        for (int64_t r = 0; r < rows; ++r) red[i * P + q0 + r] = hsum(v[r]);
      }
    }
    std::fill(acc, acc + kRows * kBlock * kVec, 0.f);
  }
};

// Δ = clamp(softplus?(v), lo, hi), softplus with torch's threshold 20.
inline float delta_of(float v, bool softplus, float lo, float hi) {
  if (softplus) v = v > 20.f ? v : std::log1p(std::exp(v));
  return std::min(std::max(v, lo), hi);
}

// dΔ/dv of delta_of (0 where the clamp is active, as torch.clamp's gradient).
inline float delta_grad(float v, bool softplus, float lo, float hi) {
  float s = softplus ? (v > 20.f ? v : std::log1p(std::exp(v))) : v;
  if (s < lo || s > hi) return 0.f;
  return softplus && v <= 20.f ? 1.f / (1.f + std::exp(-v)) : 1.f;
}

// Walks one head's tokens block by block, tracking the state resets and the sequence ends.
// Resets: where seq_idx changes (to zero), or with cu_seqlens at every sequence start (to that
// sequence's initial state, or zero).
struct HeadCursor {
  int64_t b, h, g;
  int32_t prev_seq = 0;  // seq_idx of the previous token (that of token 0 before the first)
  int64_t next_end = 0;  // cu_seqlens cursor: first sequence whose end is not passed

  HeadCursor(const SsdParams& p, int64_t task) : b(task / p.nheads), h(task % p.nheads) {
    g = h / (p.nheads / p.ngroups);
    if (p.seq_idx.present() && p.seqlen > 0) prev_seq = ptr<int32_t>(p.seq_idx)[b * p.seq_idx.stride[0]];
  }
};

// Columns [n0, n0 + 8) of row q of the state a reset to sequence `seq` starts from.
inline vf reset_cols(const SsdParams& p, int32_t seq, int64_t h, int64_t q, int64_t n0) {
  vf r{};
  if (!p.cu_seqlens.present() || !p.initial_states.present()) return r;
  const TensorArg& is = p.initial_states;
  const float* src = ptr<float>(is) + seq * is.stride[0] + h * is.stride[1] + q * is.stride[2];
  for (int l = 0; l < kVec && n0 + l < p.dstate; ++l) r[l] = src[(n0 + l) * is.stride[3]];
  return r;
}

template <typename T>
void load_padded(float* dst, const T* src, int64_t stride, int64_t n, int64_t np) {
  load_row(dst, src, stride, n);
  std::fill(dst + n, dst + np, 0.f);
}

// Fills the workspace rows for tokens [t0, t0 + k) of head (cur.b, cur.h).
template <typename T>
void prepare_block(const SsdParams& p, HeadCursor& cur, int64_t t0, int64_t k, int64_t Np, Workspace& w) {
  const int64_t P = p.headdim, N = p.dstate;
  const float A = ptr<float>(p.A)[cur.h * p.A.stride[0]];
  const float bias = p.dt_bias.present() ? ptr<float>(p.dt_bias)[cur.h * p.dt_bias.stride[0]] : 0.f;
  const int32_t* cu = p.cu_seqlens.present() ? ptr<int32_t>(p.cu_seqlens) : nullptr;
  for (int64_t i = 0; i < k; ++i) {
    const int64_t t = t0 + i;
    float v = ptr<float>(p.dt)[cur.b * p.dt.stride[0] + t * p.dt.stride[1] + cur.h * p.dt.stride[2]] + bias;
    float d = delta_of(v, p.dt_softplus, p.dt_lo, p.dt_hi);
    w.delta[i] = d, w.decay[i] = std::exp(d * A);
    w.seq_end[i] = -1, w.reset[i] = -1;
    if (cu) {
      const int64_t cs = p.cu_seqlens.stride[0];
      while (cur.next_end < p.nseq && cu[(cur.next_end + 1) * cs] <= t) ++cur.next_end;
      if (cur.next_end < p.nseq && cu[(cur.next_end + 1) * cs] == t + 1) w.seq_end[i] = int32_t(cur.next_end);
      if (cur.next_end < p.nseq && cu[cur.next_end * cs] == t) w.reset[i] = int32_t(cur.next_end);
    } else if (p.seq_idx.present()) {
      int32_t s = ptr<int32_t>(p.seq_idx)[cur.b * p.seq_idx.stride[0] + t * p.seq_idx.stride[1]];
      if (s != cur.prev_seq) w.reset[i] = 0;
      cur.prev_seq = s;
    }
    const int64_t bg = cur.b * p.B.stride[0] + t * p.B.stride[1] + cur.g * p.B.stride[2];
    const int64_t cg = cur.b * p.C.stride[0] + t * p.C.stride[1] + cur.g * p.C.stride[2];
    load_padded(w.B + i * Np, ptr<T>(p.B) + bg, p.B.stride[3], N, Np);
    load_padded(w.C + i * Np, ptr<T>(p.C) + cg, p.C.stride[3], N, Np);
    const int64_t xo = cur.b * p.x.stride[0] + t * p.x.stride[1] + cur.h * p.x.stride[2];
    load_row(w.x + i * P, ptr<T>(p.x) + xo, p.x.stride[3], P);
    for (int64_t q = 0; q < P; ++q) w.u[i * P + q] = d * w.x[i * P + q];
  }
}

// Loads a float32 (P, N) state (strides s2, s3) into a (P, Np) row block, zero-padded.
inline void load_state(float* dst, const float* src, int64_t s2, int64_t s3, int64_t P, int64_t N, int64_t Np) {
  for (int64_t q = 0; q < P; ++q) load_padded(dst + q * Np, src + q * s2, s3, N, Np);
}

inline void store_state(float* dst, int64_t s2, int64_t s3, const float* src, int64_t P, int64_t N, int64_t Np) {
  for (int64_t q = 0; q < P; ++q) store_row(dst + q * s2, s3, src + q * Np, N);
}

// varlen_states[seq, h, q, n0 : n0 + 8 NV] = s (columns below N only).
template <int NV>
void save_state_cols(const SsdParams& p, int64_t seq, int64_t h, int64_t q, int64_t n0, const vf* s) {
  const TensorArg& v = p.varlen_states;
  float* dst = mut_ptr<float>(v) + seq * v.stride[0] + h * v.stride[1] + q * v.stride[2];
  for (int j = 0; j < NV; ++j)
    for (int l = 0; l < kVec && n0 + j * kVec + l < p.dstate; ++l) dst[(n0 + j * kVec + l) * v.stride[3]] = s[j][l];
}

// What a block scan produces besides the advanced state.
enum class ScanMode {
  forward,  // y sums, varlen states
  states,   // y sums, every token's state in states[i + 1] (rows of P x Np): the backward's recompute
  advance,  // nothing else: the backward's checkpoint pass
};

// State rows [q, q + R), columns [n0, n0 + 8 NV), over the block's k tokens: H = a H + u B;
// acc += H C. R rows share the loads of B and C.
template <int R, int NV, ScanMode kMode>
void scan_rows_cols(const SsdParams& p, const Workspace& w, int64_t h, int64_t q, int64_t n0, int64_t k,
                    int64_t Np, float* states) {
  const int64_t P = p.headdim;
  vf s[R][NV];
#pragma GCC unroll 2
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) s[r][j] = load(w.state + (q + r) * Np + n0 + j * kVec);
  for (int64_t i = 0; i < k; ++i) {
    const vf a = splat(w.decay[i]);
    const float* Bi = w.B + i * Np + n0;
    const float* Ci = w.C + i * Np + n0;
    if (w.reset[i] >= 0)
      for (int r = 0; r < R; ++r)
        for (int j = 0; j < NV; ++j) s[r][j] = reset_cols(p, w.reset[i], h, q + r, n0 + j * kVec);
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) {
      const vf b = load(Bi + j * kVec);
#pragma GCC unroll 2
      for (int r = 0; r < R; ++r) s[r][j] = s[r][j] * a + splat(w.u[i * P + q + r]) * b;
    }
    if constexpr (kMode == ScanMode::advance) continue;
    vf y[R];
#pragma GCC unroll 2
    for (int r = 0; r < R; ++r) y[r] = load(w.row_acc(q + r) + i * kVec);
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) {
      const vf c = load(Ci + j * kVec);
#pragma GCC unroll 2
      for (int r = 0; r < R; ++r) y[r] += s[r][j] * c;
    }
#pragma GCC unroll 2
    for (int r = 0; r < R; ++r) store(w.row_acc(q + r) + i * kVec, y[r]);
    if constexpr (kMode == ScanMode::states) {
      for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
        for (int j = 0; j < NV; ++j) store(states + (i + 1) * P * Np + (q + r) * Np + n0 + j * kVec, s[r][j]);
    } else if (w.seq_end[i] >= 0) {
      for (int r = 0; r < R; ++r) save_state_cols<NV>(p, w.seq_end[i], h, q + r, n0, s[r]);
    }
  }
#pragma GCC unroll 2
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) store(w.state + (q + r) * Np + n0 + j * kVec, s[r][j]);
}

// Rows [q, q + R) over all columns, in groups of up to 4 vectors.
template <int R, ScanMode kMode>
void scan_rows(const SsdParams& p, const Workspace& w, int64_t h, int64_t q, int64_t k, int64_t Np, float* states) {
  int64_t n0 = 0;
  for (; n0 + 4 * kVec <= Np; n0 += 4 * kVec) scan_rows_cols<R, 4, kMode>(p, w, h, q, n0, k, Np, states);
  for (; n0 + 2 * kVec <= Np; n0 += 2 * kVec) scan_rows_cols<R, 2, kMode>(p, w, h, q, n0, k, Np, states);
  for (; n0 < Np; n0 += kVec) scan_rows_cols<R, 1, kMode>(p, w, h, q, n0, k, Np, states);
}

// Scans every state row over the block; w.red[i, q] = H_t[q, :] · C_t (not when advancing).
// w.acc starts and ends zero.
template <ScanMode kMode>
void scan_block(const SsdParams& p, const Workspace& w, int64_t h, int64_t k, int64_t Np, float* states) {
  const int64_t P = p.headdim;
  for (int64_t q0 = 0; q0 < P; q0 += kRows) {
    const int64_t rows = std::min(kRows, P - q0);
    int64_t q = q0;
    for (; q + 2 <= q0 + rows; q += 2) scan_rows<2, kMode>(p, w, h, q, k, Np, states);
    for (; q < q0 + rows; ++q) scan_rows<1, kMode>(p, w, h, q, k, Np, states);
    if constexpr (kMode != ScanMode::advance) w.reduce_rows(k, P, q0, rows);
  }
}

// Runs fn(task, workspace_row, part) for tasks [0, ntasks) on nthreads threads; part < workspace_rows
// numbers the thread's slice of the workspace (and of per-thread outputs).
template <typename Fn>
void for_each_task(const SsdParams& p, int64_t ntasks, int nthreads, Fn&& fn) {
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>({int64_t(nthreads), ntasks, p.workspace_rows}));
  const int64_t per = (ntasks + parts - 1) / parts;
  parallel_for(parts, int(parts), [&](int64_t begin, int64_t end) {
    for (int64_t part = begin; part < end; ++part) {
      float* row = mut_ptr<float>(p.workspace) + part * p.workspace.stride[0];
      for (int64_t task = part * per; task < std::min(ntasks, (part + 1) * per); ++task) fn(task, row, part);
    }
  });
}

}  // namespace ssm::cpu::SSM_ISA::ssd
