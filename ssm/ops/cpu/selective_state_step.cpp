// One decode step of the selective SSM on the CPU, state updated in place (float32 compute from
// the stored state, written back in the state's dtype). Mamba-2 layout: one task per (batch, head)
// row, each of the head's P channels updating its N states in vectors of 8 (in place when float32;
// the decay exp(dt A) once per head when A and dt are tied across it). Mamba-1 layout (P = 1):
// 8 channels per vector, lanes across channels, so dt's softplus and the gate vectorize too (a
// float32 state contiguous along N is then updated row by row in place, vectorized along N).
// Strides are read as given: tied per-head A / dt / D / dt_bias (stride-0 views) work as they are.
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "cpu/kernels.h"
#include "cpu/runtime/parallel.h"
#include "cpu/scan_math.h"
#include "cpu/vec.h"

namespace ssm::cpu::SSM_ISA {
namespace {
using namespace scan;

float softplus_scalar(float x) { return x > 20.f ? x : std::log1p(std::exp(x)); }

// Scratch for one row, N rounded up to whole vectors (padding lanes hold zeros).
struct StepScratch {
  int64_t npad;
  std::vector<float> B, C, A, h, dA;
  explicit StepScratch(int64_t N)
      : npad((N + kLanes - 1) / kLanes * kLanes), B(npad), C(npad), A(npad), h(npad), dA(npad) {}
};

template <typename E>
void load_padded(float* dst, const E* src, int64_t stride, int64_t n, int64_t npad, float scale = 1.f) {
  for (int64_t i = 0; i < n; ++i) dst[i] = scale * to_float(src[i * stride]);
  std::fill(dst + n, dst + npad, 0.f);
}

float at2(const TensorArg& t, int64_t i, int64_t j, float absent) {
  return t.present() ? ptr<float>(t)[i * t.stride[0] + j * t.stride[1]] : absent;
}

// A, dt and dt_bias tied across a head's P channels (Mamba-2's per-head forms, stride 0 along P):
// the decay exp(dt A) is then the same for every channel of the head, computed once per head.
bool tied_heads(const StateStepParams& p) {
  return p.headdim > 1 && p.A.stride[1] == 0 && p.dt.stride[2] == 0 &&
         (!p.dt_bias.present() || p.dt_bias.stride[1] == 0);
}

// One channel: h = decay h + dt x B in place (npad entries), returns C . h; decay = exp(dt A), or
// the head's decays dA when it is tied. Restrict pointers: the loop keeps its bases in registers.
template <bool kTied>
float update_lanes(float* __restrict hp, const float* __restrict decay_or_A, const float* __restrict B,
                   const float* __restrict C, int64_t npad, float dt, float dtx) {
  const vf dtv = splat(dt), dtxv = splat(dtx);
  auto step = [&](int64_t n) {
    const vf decay = kTied ? vload(decay_or_A + n) : exp2v(dtv * vload(decay_or_A + n));
    const vf h = decay * vload(hp + n) + dtxv * vload(B + n);
    vstore(hp + n, h);
    return h * vload(C + n);
  };
  vf acc0 = splat(0.f), acc1 = splat(0.f);  // two sums: the adds do not wait on each other
  int64_t n = 0;
  for (; n + 2 * kLanes <= npad; n += 2 * kLanes) {
    acc0 += step(n);
    acc1 += step(n + kLanes);
  }
  if (n < npad) acc0 += step(n);
  return hsum(acc0 + acc1);
}

float update_channel(float* hp, const StepScratch& s, float dt, float dtx, bool tied) {
  return tied ? update_lanes<true>(hp, s.dA.data(), s.B.data(), s.C.data(), s.npad, dt, dtx)
              : update_lanes<false>(hp, s.A.data(), s.B.data(), s.C.data(), s.npad, dt, dtx);
}

// The state row of one channel, updated in place when it is float32, unit-stride and whole vectors.
template <typename S>
float update_state(S* st, int64_t ss, StepScratch& s, int64_t N, float dt, float dtx, bool tied) {
  if constexpr (std::is_same_v<S, float>) {
    if (ss == 1 && N == s.npad) return update_channel(st, s, dt, dtx, tied);
  }
  load_padded(s.h.data(), st, ss, N, s.npad);
  const float y = update_channel(s.h.data(), s, dt, dtx, tied);
  for (int64_t n = 0; n < N; ++n) st[n * ss] = from_float<S>(s.h[n]);
  return y;
}

template <typename S, typename T>
void step_row(const StateStepParams& p, StepScratch& s, int64_t b, int64_t h) {
  const int64_t N = p.dstate, P = p.headdim, g = h / (p.nheads / p.ngroups);
  const bool tied = tied_heads(p);
  T* out = mut_ptr<T>(p.out) + b * p.out.stride[0] + h * p.out.stride[1];
  const int32_t row = p.state_batch_indices.present()
                          ? ptr<int32_t>(p.state_batch_indices)[b * p.state_batch_indices.stride[0]] : int32_t(b);
  if (row < 0) {  // padding: zeros out, no state touched
    for (int64_t i = 0; i < P; ++i) out[i * p.out.stride[2]] = from_float<T>(0.f);
    return;
  }
  load_padded(s.B.data(), ptr<T>(p.B) + b * p.B.stride[0] + g * p.B.stride[1], p.B.stride[2], N, s.npad);
  load_padded(s.C.data(), ptr<T>(p.C) + b * p.C.stride[0] + g * p.C.stride[1], p.C.stride[2], N, s.npad);
  float dt = 0.f;
  for (int64_t i = 0; i < P; ++i) {
    const float x = to_float(ptr<T>(p.x)[b * p.x.stride[0] + h * p.x.stride[1] + i * p.x.stride[2]]);
    if (i == 0 || !tied) {  // a tied head's dt (and its softplus) once for its P channels
      dt = to_float(ptr<T>(p.dt)[b * p.dt.stride[0] + h * p.dt.stride[1] + i * p.dt.stride[2]]);
      dt += at2(p.dt_bias, h, i, 0.f);
      if (p.softplus) dt = softplus_scalar(dt);
    }
    if (i == 0 || p.A.stride[1] != 0)
      load_padded(s.A.data(), ptr<float>(p.A) + h * p.A.stride[0] + i * p.A.stride[1], p.A.stride[2], N, s.npad, kLog2e);
    if (tied && i == 0)
      for (int64_t n = 0; n < s.npad; n += kLanes) vstore(&s.dA[n], exp2v(splat(dt) * vload(&s.A[n])));
    S* st = mut_ptr<S>(p.state) + row * p.state.stride[0] + h * p.state.stride[1] + i * p.state.stride[2];
    float y = update_state(st, p.state.stride[3], s, N, dt, dt * x, tied) + at2(p.D, h, i, 0.f) * x;
    if (p.z.present()) {
      const float z = to_float(ptr<T>(p.z)[b * p.z.stride[0] + h * p.z.stride[1] + i * p.z.stride[2]]);
      y *= z / (1.f + std::exp(-z));
    }
    out[i * p.out.stride[2]] = from_float<T>(y);
  }
}

// Lane-transposed scratch of the P = 1 path: (N x 8) state, A, B, C.
struct LaneScratch {
  std::vector<float> h, A, B, C;
  explicit LaneScratch(int64_t N) : h(N * kLanes), A(N * kLanes), B(N * kLanes), C(N * kLanes) {}
};

template <typename E>
float lane_value(const TensorArg& t, int64_t b, int64_t h, float absent) {
  return t.present() ? to_float(ptr<E>(t)[b * t.stride[0] + h * t.stride[1]]) : absent;
}

// The P = 1 state rows are float32 and unit-stride along N, like A, in whole vectors: each lane's
// row is then updated in place, vectorized along N, without the lane-transposed gather and scatter.
template <typename S>
bool rows_in_place(const StateStepParams& p) {
  return std::is_same_v<S, float> && p.state.stride[3] == 1 && p.A.stride[2] == 1 && p.dstate % kLanes == 0;
}

// C . h of each lane after h = exp(dt A) h + dt x B, updating the lanes' state rows in place.
template <typename T>
vf update_rows(const StateStepParams& p, LaneScratch& s, int64_t b, int64_t row, int64_t h0, int nl, vf dt, vf dtx) {
  const int64_t N = p.dstate, hpg = p.nheads / p.ngroups;
  vf y = splat(0.f);
  int64_t loaded = -1;  // the group whose B and C sit in s.B, s.C
  for (int l = 0; l < nl; ++l) {
    const int64_t h = h0 + l, g = h / hpg;
    if (g != loaded) {
      load_padded(s.B.data(), ptr<T>(p.B) + b * p.B.stride[0] + g * p.B.stride[1], p.B.stride[2], N, N);
      load_padded(s.C.data(), ptr<T>(p.C) + b * p.C.stride[0] + g * p.C.stride[1], p.C.stride[2], N, N);
      loaded = g;
    }
    float* st = mut_ptr<float>(p.state) + row * p.state.stride[0] + h * p.state.stride[1];
    const float* A = ptr<float>(p.A) + h * p.A.stride[0];
    y[l] = update_lanes<false>(st, A, s.B.data(), s.C.data(), N, dt[l] * kLog2e, dtx[l]);
  }
  return y;
}

// Channels (heads of size 1) h0 .. h0 + 7 of batch row b.
template <typename S, typename T>
void step_lanes(const StateStepParams& p, LaneScratch& s, int64_t b, int64_t h0) {
  const int64_t N = p.dstate, hpg = p.nheads / p.ngroups;
  const int nl = int(std::min<int64_t>(kLanes, p.nheads - h0));
  T* out = mut_ptr<T>(p.out) + b * p.out.stride[0];
  const int32_t row = p.state_batch_indices.present()
                          ? ptr<int32_t>(p.state_batch_indices)[b * p.state_batch_indices.stride[0]] : int32_t(b);
  if (row < 0) {  // padding: zeros out, no state touched
    for (int l = 0; l < nl; ++l) out[(h0 + l) * p.out.stride[1]] = from_float<T>(0.f);
    return;
  }
  const bool in_place = rows_in_place<S>(p);
  vf x = splat(0.f), dt = splat(0.f), z = splat(0.f), D = splat(0.f);
  for (int l = 0; l < nl; ++l) {
    const int64_t h = h0 + l, g = h / hpg;
    x[l] = lane_value<T>(p.x, b, h, 0.f);
    dt[l] = lane_value<T>(p.dt, b, h, 0.f) + at2(p.dt_bias, h, 0, 0.f);
    z[l] = lane_value<T>(p.z, b, h, 0.f);
    D[l] = at2(p.D, h, 0, 0.f);
    if (in_place) continue;
    const S* st = ptr<S>(p.state) + row * p.state.stride[0] + h * p.state.stride[1];
    const float* A = ptr<float>(p.A) + h * p.A.stride[0];
    const T* Bp = ptr<T>(p.B) + b * p.B.stride[0] + g * p.B.stride[1];
    const T* Cp = ptr<T>(p.C) + b * p.C.stride[0] + g * p.C.stride[1];
    for (int64_t n = 0; n < N; ++n) {
      s.h[n * kLanes + l] = to_float(st[n * p.state.stride[3]]);
      s.A[n * kLanes + l] = kLog2e * A[n * p.A.stride[2]];
      s.B[n * kLanes + l] = to_float(Bp[n * p.B.stride[2]]);
      s.C[n * kLanes + l] = to_float(Cp[n * p.C.stride[2]]);
    }
  }
  if (p.softplus) dt = softplusv(dt);
  const vf dtx = dt * x;
  vf acc = splat(0.f);
  if (in_place) {
    acc = update_rows<T>(p, s, b, row, h0, nl, dt, dtx);
  } else {
    for (int64_t n = 0; n < N; ++n) {
      const vf h = exp2v(dt * vload(&s.A[n * kLanes])) * vload(&s.h[n * kLanes]) + dtx * vload(&s.B[n * kLanes]);
      vstore(&s.h[n * kLanes], h);
      acc += h * vload(&s.C[n * kLanes]);
    }
  }
  vf y = acc + D * x;
  if (p.z.present()) y *= z * sigmoidv(z);
  for (int l = 0; l < nl; ++l) {
    S* st = mut_ptr<S>(p.state) + row * p.state.stride[0] + (h0 + l) * p.state.stride[1];
    if (!in_place)
      for (int64_t n = 0; n < N; ++n) st[n * p.state.stride[3]] = from_float<S>(s.h[n * kLanes + l]);
    out[(h0 + l) * p.out.stride[1]] = from_float<T>(y[l]);
  }
}

}  // namespace

void selective_state_step(const StateStepParams& p, int nthreads) {
  SSM_DTYPE_SWITCH(p.state_dtype, S, "selective_state_step", [&] {
    SSM_DTYPE_SWITCH(p.dtype, T, "selective_state_step", [&] {
      if (p.headdim == 1) {
        const int64_t vecs = (p.nheads + kLanes - 1) / kLanes;
        parallel_for(p.batch * vecs, nthreads, [&](int64_t begin, int64_t end) {
          LaneScratch s(p.dstate);
          for (int64_t r = begin; r < end; ++r) step_lanes<S, T>(p, s, r / vecs, r % vecs * kLanes);
        });
        return;
      }
      parallel_for(p.batch * p.nheads, nthreads, [&](int64_t begin, int64_t end) {
        StepScratch s(p.dstate);
        for (int64_t r = begin; r < end; ++r) step_row<S, T>(p, s, r / p.nheads, r % p.nheads);
      });
    });
  });
}

}  // namespace ssm::cpu::SSM_ISA
