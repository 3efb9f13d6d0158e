// One decoded token through a Mamba-1 layer's inner part on the CPU, in one call (three passes,
// each threaded): (1) the conv update + silu, 8 channels per vector, conv_state shifted in place;
// (2) x_proj, blocks of 4 weight rows each read once for the whole batch; (3) per 8 channels: dt_proj
// rows dotted with x_dbl's first R entries, + dt_bias, softplus across lanes, then each channel's
// state row h = exp(dt A) h + dt x B updated in place (vectorized along N), y = (C . h + D x) silu(z).
// xc, x_dbl and dt are rounded to dtype between passes, as the separate ops' outputs are.
#include <algorithm>
#include <type_traits>
#include <vector>

#include "cpu/dot_rows.h"
#include "cpu/kernels.h"
#include "cpu/runtime/parallel.h"
#include "cpu/scan_math.h"
#include "cpu/vec.h"

namespace ssm::cpu::SSM_ISA {
namespace {
using namespace scan;
using rowdot::dot_rows;

template <typename T>
inline float round_to(float v) { return to_float(from_float<T>(v)); }

inline int threads_for(int nthreads, int64_t work) {
  return int(std::max<int64_t>(1, std::min<int64_t>(nthreads, work / 16384)));
}

// Pass 1, channels d0 .. d0 + nl - 1 of batch row b: xc = silu?(conv(window)), state shifted in place.
// Scalar taps per channel into a float array, then silu across the lanes (no per-lane vector inserts).
template <typename T>
void conv_lanes(const Mamba1DecodeParams& p, int64_t b, int64_t d0, int nl, float* xc) {
  const int64_t W = p.width, S = p.state_len, sd = p.conv_state.stride[1], ss = p.conv_state.stride[2];
  const int64_t xd = p.x.stride[1], wd = p.conv_weight.stride[0], wk = p.conv_weight.stride[1];
  T* st = mut_ptr<T>(p.conv_state) + b * p.conv_state.stride[0] + d0 * sd;
  const T* x = ptr<T>(p.x) + b * p.x.stride[0] + d0 * xd;
  const float* w = ptr<float>(p.conv_weight) + d0 * wd;
  alignas(32) float out[kLanes] = {};
  for (int l = 0; l < nl; ++l) {
    T* row = st + l * sd;
    const float* wl = w + l * wd;
    float acc = p.conv_bias.present() ? ptr<float>(p.conv_bias)[(d0 + l) * p.conv_bias.stride[0]] : 0.f;
    for (int64_t k = 0; k + 1 < W; ++k) acc += wl[k * wk] * to_float(row[(S - W + 1 + k) * ss]);
    acc += wl[(W - 1) * wk] * to_float(x[l * xd]);
    out[l] = acc;
    for (int64_t i = 0; i + 1 < S; ++i) row[i * ss] = row[(i + 1) * ss];  // the token enters last
    row[(S - 1) * ss] = x[l * xd];
  }
  vf v = vload(out);
  if (p.silu) v *= sigmoidv(v);
  vstore(out, v);
  for (int l = 0; l < nl; ++l) xc[d0 + l] = round_to<T>(out[l]);
}

// Pass 2: x_dbl rows m0 .. m0 + R - 1 of every batch row.
template <typename T, int R>
void xproj_block(const Mamba1DecodeParams& p, const float* xc, float* xdbl, int64_t M, int64_t m0) {
  const T* w = ptr<T>(p.x_proj_weight) + m0 * p.x_proj_weight.stride[0];
  for (int64_t b = 0; b < p.batch; ++b) {
    float s[R];
    dot_rows<T, R>(w, p.x_proj_weight.stride[0], xc + b * p.dim, p.dim, s);
    for (int r = 0; r < R; ++r) xdbl[b * M + m0 + r] = round_to<T>(s[r]);
  }
}

// Scratch of pass 3: B, C, one state row and A, N rounded up to whole vectors (zero padding).
struct RowScratch {
  int64_t npad;
  std::vector<float> B, C, h, A;
  explicit RowScratch(int64_t N)
      : npad((N + kLanes - 1) / kLanes * kLanes), B(npad, 0.f), C(npad, 0.f), h(npad, 0.f), A(npad, 0.f) {}
};

static_assert(kLanes == 8, "hsum8 reduces 8 vectors of 8 lanes");

// The 8 sums of a[0..7]'s lanes, as one vector (a transpose-and-add tree instead of 8 scalar sums).
inline vf hsum8(const vf* a) {
  auto pair = [](vf u, vf v) {
    return __builtin_shufflevector(u, v, 0, 8, 2, 10, 4, 12, 6, 14) + __builtin_shufflevector(u, v, 1, 9, 3, 11, 5, 13, 7, 15);
  };
  auto quad = [](vf u, vf v) {
    return __builtin_shufflevector(u, v, 0, 1, 8, 9, 4, 5, 12, 13) + __builtin_shufflevector(u, v, 2, 3, 10, 11, 6, 7, 14, 15);
  };
  const vf lo = quad(pair(a[0], a[1]), pair(a[2], a[3])), hi = quad(pair(a[4], a[5]), pair(a[6], a[7]));
  return __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 8, 9, 10, 11) + __builtin_shufflevector(lo, hi, 4, 5, 6, 7, 12, 13, 14, 15);
}

// h = exp2(dt2 A) h + dtx B in place over npad entries; returns the lanes of C * h summed over vectors.
inline vf update_row(float* __restrict h, const float* __restrict A, const float* __restrict B,
                     const float* __restrict C, int64_t npad, float dt2, float dtx) {
  const vf dtv = splat(dt2), dtxv = splat(dtx);
  vf acc = splat(0.f);
  for (int64_t n = 0; n < npad; n += kLanes) {
    const vf v = exp2v(dtv * vload(A + n)) * vload(h + n) + dtxv * vload(B + n);
    vstore(h + n, v);
    acc += v * vload(C + n);
  }
  return acc;
}

// One channel's state row (stride ss, N entries) in the state's dtype; dt2 = dt log2(e).
template <typename S>
vf step_channel(S* st, int64_t ss, const float* A, int64_t as, RowScratch& s, int64_t N, float dt2, float dtx) {
  const bool whole = as == 1 && N == s.npad;  // A read in place
  if (!whole)
    for (int64_t n = 0; n < N; ++n) s.A[n] = A[n * as];
  const float* a = whole ? A : s.A.data();
  if constexpr (std::is_same_v<S, float>) {
    if (ss == 1 && N == s.npad) return update_row(st, a, s.B.data(), s.C.data(), N, dt2, dtx);
  }
  for (int64_t n = 0; n < N; ++n) s.h[n] = to_float(st[n * ss]);
  const vf y = update_row(s.h.data(), a, s.B.data(), s.C.data(), s.npad, dt2, dtx);
  for (int64_t n = 0; n < N; ++n) st[n * ss] = from_float<S>(s.h[n]);
  return y;
}

// dt_proj rows d0 .. d0 + nl - 1 dotted with x_dbl's first R entries, one lane each.
template <typename T>
vf dt_lanes(const Mamba1DecodeParams& p, const float* xdbl, int64_t d0, int nl) {
  const int64_t R = p.dt_rank, ldw = p.dt_proj_weight.stride[0], Rv = R / kLanes * kLanes;
  vf acc[kLanes], tail = splat(0.f);
  for (int l = 0; l < kLanes; ++l) {
    acc[l] = splat(0.f);
    if (l >= nl) continue;
    const T* w = ptr<T>(p.dt_proj_weight) + (d0 + l) * ldw;
    for (int64_t k = 0; k < Rv; k += kLanes) acc[l] += rowdot::load_lanes(w + k) * vload(xdbl + k);
    for (int64_t k = Rv; k < R; ++k) tail[l] += to_float(w[k]) * xdbl[k];
  }
  return hsum8(acc) + tail;
}

// Requests the cache lines of [p, p + bytes) (a read that overlaps the arithmetic of the blocks before).
inline void prefetch_bytes(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t i = 0; i < bytes; i += 64) __builtin_prefetch(c + i);
}

constexpr int64_t kAhead = 2 * kLanes;  // pass 3 prefetches the rows of the block 2 blocks on

// The dt_proj, A and state rows of channels d .. d + kLanes - 1 (those that exist) of batch row b.
template <typename S, typename T>
void prefetch_rows(const Mamba1DecodeParams& p, int64_t b, int64_t d) {
  for (int64_t e = d; e < std::min(d + kLanes, p.dim); ++e) {
    prefetch_bytes(ptr<T>(p.dt_proj_weight) + e * p.dt_proj_weight.stride[0], p.dt_rank * int64_t(sizeof(T)));
    if (p.A.stride[1] == 1) prefetch_bytes(ptr<float>(p.A) + e * p.A.stride[0], p.dstate * 4);
    if (p.ssm_state.stride[2] == 1)
      prefetch_bytes(ptr<S>(p.ssm_state) + b * p.ssm_state.stride[0] + e * p.ssm_state.stride[1],
                     p.dstate * int64_t(sizeof(S)));
  }
}

// Pass 3, channels d0 .. d0 + nl - 1 of batch row b (s.B, s.C hold the row's B and C).
template <typename S, typename T>
void step_lanes(const Mamba1DecodeParams& p, RowScratch& s, const float* xc, const float* xdbl, int64_t b,
                int64_t d0, int nl) {
  prefetch_rows<S, T>(p, b, d0 + kAhead);
  alignas(32) float dtb[kLanes], xb[kLanes] = {}, zb[kLanes] = {}, Db[kLanes] = {};
  vstore(dtb, dt_lanes<T>(p, xdbl, d0, nl));
  for (int l = 0; l < nl; ++l) {  // per-lane values through arrays (no per-lane vector inserts)
    const int64_t d = d0 + l;
    dtb[l] = round_to<T>(dtb[l]) + (p.dt_bias.present() ? ptr<float>(p.dt_bias)[d * p.dt_bias.stride[0]] : 0.f);
    xb[l] = xc[d];
    if (p.z.present()) zb[l] = to_float(ptr<T>(p.z)[b * p.z.stride[0] + d * p.z.stride[1]]);
    if (p.D.present()) Db[l] = ptr<float>(p.D)[d * p.D.stride[0]];
  }
  vf dt = vload(dtb);
  const vf x = vload(xb), z = vload(zb), D = vload(Db);
  dt = softplusv(dt);
  alignas(32) float dtx[kLanes], dt2[kLanes];
  vstore(dtx, dt * x);
  vstore(dt2, dt * kLog2e);
  vf acc[kLanes];
  for (int l = 0; l < kLanes; ++l) {
    acc[l] = splat(0.f);
    if (l >= nl) continue;
    const int64_t d = d0 + l;
    S* st = mut_ptr<S>(p.ssm_state) + b * p.ssm_state.stride[0] + d * p.ssm_state.stride[1];
    acc[l] = step_channel(st, p.ssm_state.stride[2], ptr<float>(p.A) + d * p.A.stride[0], p.A.stride[1], s,
                          p.dstate, dt2[l], dtx[l]);
  }
  vf y = hsum8(acc) + D * x;
  if (p.z.present()) y *= z * sigmoidv(z);
  T* out = mut_ptr<T>(p.out) + b * p.out.stride[0];
  for (int l = 0; l < nl; ++l) out[(d0 + l) * p.out.stride[1]] = from_float<T>(y[l]);
}

template <typename S, typename T>
void decode(const Mamba1DecodeParams& p, int nthreads) {
  const int64_t Dm = p.dim, N = p.dstate, M = p.dt_rank + 2 * N, vecs = (Dm + kLanes - 1) / kLanes;
  std::vector<float> xc(p.batch * Dm), xdbl(p.batch * M);  // once per call: the passes' float32 outputs
  parallel_for(p.batch * vecs, threads_for(nthreads, p.batch * Dm * (p.width + p.state_len)), [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const int64_t b = r / vecs, d0 = r % vecs * kLanes;
      conv_lanes<T>(p, b, d0, int(std::min<int64_t>(kLanes, Dm - d0)), xc.data() + b * Dm);
    }
  });
  const int64_t blocks = (M + 3) / 4;
  parallel_for(blocks, threads_for(nthreads, p.batch * M * Dm), [&](int64_t lo, int64_t hi) {
    for (int64_t blk = lo; blk < hi; ++blk) {
      if (blk * 4 + 4 <= M) {
        xproj_block<T, 4>(p, xc.data(), xdbl.data(), M, blk * 4);
      } else {
        for (int64_t m = blk * 4; m < M; ++m) xproj_block<T, 1>(p, xc.data(), xdbl.data(), M, m);
      }
    }
  });
  parallel_for(p.batch * vecs, threads_for(nthreads, p.batch * Dm * (p.dt_rank + 4 * N)), [&](int64_t lo, int64_t hi) {
    RowScratch s(N);
    int64_t loaded = -1;  // the batch row whose B and C sit in s
    for (int64_t r = lo; r < hi; ++r) {
      const int64_t b = r / vecs, d0 = r % vecs * kLanes;
      const float* row = xdbl.data() + b * M;
      if (b != loaded) {
        std::copy(row + p.dt_rank, row + p.dt_rank + N, s.B.begin());
        std::copy(row + p.dt_rank + N, row + M, s.C.begin());
        loaded = b;
      }
      step_lanes<S, T>(p, s, xc.data() + b * Dm, row, b, d0, int(std::min<int64_t>(kLanes, Dm - d0)));
    }
  });
}

}  // namespace

void mamba1_decode(const Mamba1DecodeParams& p, int nthreads) {
  if (p.batch == 0) return;
  SSM_DTYPE_SWITCH(p.state_dtype, S, "mamba1_decode", [&] {
    SSM_DTYPE_SWITCH(p.dtype, T, "mamba1_decode", [&] { decode<S, T>(p, nthreads); });
  });
}

}  // namespace ssm::cpu::SSM_ISA
