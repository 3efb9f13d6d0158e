// Pieces shared by the selective-scan forward and backward kernels: the task layout
// (batch, group, slice of the group's channels; 8 channels per vector), per-token segment
// tables (state restarts and last-state rows) and the loads of one time chunk.
#pragma once
#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "cpu/scan_math.h"
#include "cpu/vec.h"

namespace ssm::cpu::SSM_ISA::scan {

constexpr int64_t kChunk = 64;  // time steps loaded and transposed at a time

// Task i = ((b * G) + g) * S + s covers vectors [v0, v1) of group g; vector v holds
// channels g * cpg + v * 8 + lane.
struct Layout {
  int64_t groups, cpg, vecs, slices;
  explicit Layout(const SelectiveScanParams& p)
      : groups(p.ngroups), cpg(p.dim / p.ngroups), vecs((cpg + kLanes - 1) / kLanes), slices(p.nslices) {}
  int64_t tasks(int64_t batch) const { return batch * groups * slices; }
  int64_t max_vecs() const { return (vecs + slices - 1) / slices; }
  struct Task { int64_t b, g, s, v0, v1; };
  Task task(int64_t i) const {
    int64_t s = i % slices, bg = i / slices;
    return {bg / groups, bg % groups, s, s * vecs / slices, (s + 1) * vecs / slices};
  }
  int64_t channel(const Task& t, int64_t v) const { return t.g * cpg + v * kLanes; }
  int lanes(int64_t v) const { return int(std::min<int64_t>(kLanes, cpg - v * kLanes)); }
};

// Per token of one batch row: reset[t] = -2 (carry on), -1 (restart from zeros) or the
// initial-state row to restart from (zeros when there is no initial_state); last[t] = the
// last-state row that ends at token t, or -1. Rows of empty sequences have no token.
struct Segments {
  std::vector<int32_t> reset, last, empty_rows;

  void build(const SelectiveScanParams& p, int64_t b) {
    const int64_t L = p.seqlen;
    reset.assign(L, -2);
    last.assign(L, -1);
    empty_rows.clear();
    if (p.cu_seqlens.present()) {
      const int32_t* cu = ptr<int32_t>(p.cu_seqlens);
      const int64_t st = p.cu_seqlens.stride[0];
      for (int64_t i = 0; i < p.nrows; ++i) {
        int32_t a = cu[i * st], e = cu[(i + 1) * st];
        if (a == e) {
          empty_rows.push_back(int32_t(i));
        } else {
          reset[a] = int32_t(i);
          last[e - 1] = int32_t(i);
        }
      }
      return;
    }
    if (L == 0) {
      empty_rows.push_back(int32_t(b));
      return;
    }
    reset[0] = int32_t(b);
    last[L - 1] = int32_t(b);
    if (p.seq_idx.present()) {
      const int32_t* si = ptr<int32_t>(p.seq_idx) + b * p.seq_idx.stride[0];
      const int64_t st = p.seq_idx.stride[1];
      for (int64_t t = 1; t < L; ++t)
        if (si[t * st] != si[(t - 1) * st]) reset[t] = -1;
    }
  }
};

#ifdef __AVX2__
// bfloat16 rows in 8 float lanes without a conversion per element: 8 values widened at a time, an
// 8 x 8 block of (channel, step) values transposed in registers.
inline __m256 widen8(const bfloat16_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

// 8 floats -> 8 bfloat16, rounded to nearest even, NaN kept quiet (as from_float<bfloat16_t>).
inline void narrow8(bfloat16_t* p, __m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
  const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)),
                                         _mm256_set1_epi32(0x7f800000));
  r = _mm256_blendv_epi8(r, _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40)), nan);
  const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
}

// r[i] (row i) -> r[j] (column j) of an 8 x 8 block.
inline void transpose8(__m256 r[8]) {
  __m256 t[8], q[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    q[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    q[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xee);
    q[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    q[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xee);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm256_permute2f128_ps(q[i], q[i + 4], 0x20);
    r[i + 4] = _mm256_permute2f128_ps(q[i], q[i + 4], 0x31);
  }
}

// load_lanes of 8 bfloat16 channels: steps contiguous (st 1) or channels contiguous (ld 1); false
// for other layouts.
inline bool load_lanes_bf16(float* dst, const bfloat16_t* src, int64_t ld, int64_t st, int64_t len) {
  if (ld == 1) {
    for (int64_t t = 0; t < len; ++t) _mm256_storeu_ps(dst + t * kLanes, widen8(src + t * st));
    return true;
  }
  if (st != 1 || len % 8) return false;
  for (int64_t t0 = 0; t0 < len; t0 += 8) {
    __m256 r[8];
    for (int l = 0; l < kLanes; ++l) r[l] = widen8(src + l * ld + t0);
    transpose8(r);
    for (int j = 0; j < 8; ++j) _mm256_storeu_ps(dst + (t0 + j) * kLanes, r[j]);
  }
  return true;
}
#endif

// dst[t * 8 + l] = float(src[l * ld + t * st]) for t < len; lanes l >= nl are zero.
template <typename E>
inline void load_lanes(float* dst, const E* src, int64_t ld, int64_t st, int nl, int64_t len) {
#ifdef __AVX2__
  if constexpr (std::is_same_v<E, bfloat16_t>) {
    if (nl == kLanes && load_lanes_bf16(dst, src, ld, st, len)) return;
  }
#endif
  if (ld == 1 && nl == kLanes) {  // channels contiguous (e.g. delta from a projection): 8 lanes per step
    for (int64_t t = 0; t < len; ++t)
      for (int l = 0; l < kLanes; ++l) dst[t * kLanes + l] = to_float(src[t * st + l]);
    return;
  }
  for (int l = 0; l < kLanes; ++l) {
    const E* s = src + l * ld;
    if (l < nl) {
      for (int64_t t = 0; t < len; ++t) dst[t * kLanes + l] = to_float(s[t * st]);
    } else {
      for (int64_t t = 0; t < len; ++t) dst[t * kLanes + l] = 0.f;
    }
  }
}

// dst[l * ld + t * st] = E(src[t * 8 + l]) for lanes l < nl, t < len.
template <typename E>
inline void store_lanes(E* dst, int64_t ld, int64_t st, const float* src, int nl, int64_t len) {
#ifdef __AVX2__
  if constexpr (std::is_same_v<E, bfloat16_t>) {
    if (ld == 1 && nl == kLanes) {
      for (int64_t t = 0; t < len; ++t) narrow8(dst + t * st, _mm256_loadu_ps(src + t * kLanes));
      return;
    }
  }
#endif
  if (ld == 1 && nl == kLanes) {  // channels contiguous (an output like delta): 8 lanes per step
    for (int64_t t = 0; t < len; ++t)
      for (int l = 0; l < kLanes; ++l) dst[t * st + l] = from_float<E>(src[t * kLanes + l]);
    return;
  }
  for (int l = 0; l < nl; ++l)
    for (int64_t t = 0; t < len; ++t) dst[l * ld + t * st] = from_float<E>(src[t * kLanes + l]);
}

// dst[n * 8 + l] = m[row, c0 + l, n] of a (rows, D, N) float32 tensor; lanes >= nl are zero.
inline void load_matrix_lanes(float* dst, const TensorArg& m, int64_t row, int64_t c0, int nl, int64_t N) {
  const float* base = ptr<float>(m) + row * m.stride[0];
  for (int64_t n = 0; n < N; ++n)
    for (int l = 0; l < kLanes; ++l)
      dst[n * kLanes + l] = l < nl ? base[(c0 + l) * m.stride[1] + n * m.stride[2]] : 0.f;
}

// dst[n * 8 + l] = scale * m[c0 + l, n] of a (D, N) float32 tensor (A, constant B or C); lanes >= nl are zero.
inline void load_const_lanes(float* dst, const TensorArg& m, int64_t c0, int nl, int64_t N, float scale = 1.f) {
  const float* base = ptr<float>(m);
  for (int64_t n = 0; n < N; ++n)
    for (int l = 0; l < kLanes; ++l)
      dst[n * kLanes + l] = l < nl ? scale * base[(c0 + l) * m.stride[0] + n * m.stride[1]] : 0.f;
}

// A (D,) float32 vector in lanes.
inline vf load_vector_lanes(const TensorArg& v, int64_t c0, int nl, float absent) {
  vf out = splat(absent);
  if (!v.present()) return out;
  for (int l = 0; l < nl; ++l) out[l] = ptr<float>(v)[(c0 + l) * v.stride[0]];
  return out;
}

// dst[t * N + n] = float(B[b, g, n, t0 + t]): one time chunk of a variable B or C, transposed.
template <typename E>
inline void load_bc_chunk(float* dst, const TensorArg& m, int64_t b, int64_t g, int64_t N, int64_t t0, int64_t len) {
  const E* base = ptr<E>(m) + b * m.stride[0] + g * m.stride[1] + t0 * m.stride[3];
  for (int64_t n = 0; n < N; ++n)
    for (int64_t t = 0; t < len; ++t) dst[t * N + n] = to_float(base[n * m.stride[2] + t * m.stride[3]]);
}

// dt = delta + dt_bias, softplus'd when asked (slope = d dt / d delta when wanted); dtu = dt * u.
inline void transform_dt(float* dt, float* dtu, float* slope, const float* u, vf bias, bool softplus, int64_t T) {
  for (int64_t t = 0; t < T; ++t) {
    vf x = vload(dt + t * kLanes) + bias;
    vf d = softplus ? softplusv(x) : x;
    if (slope) vstore(slope + t * kLanes, softplus ? sigmoidv(x) : splat(1.f));
    vstore(dt + t * kLanes, d);
    vstore(dtu + t * kLanes, d * vload(u + t * kLanes));
  }
}

// h (N x 8) = initial_state[row] for channels c0.., or zeros (row < 0 or no initial state).
inline void reset_state(float* h, const SelectiveScanParams& p, int32_t row, int64_t c0, int nl, int64_t N) {
  if (row >= 0 && p.initial_state.present()) {
    load_matrix_lanes(h, p.initial_state, row, c0, nl, N);
  } else {
    std::fill(h, h + N * kLanes, 0.f);
  }
}

// dst[row, c0 + l, n] = h[n * 8 + l] for lanes l < nl ((rows, D, N) float32).
inline void store_state(const TensorArg& dst, int32_t row, int64_t c0, int nl, int64_t N, const float* h) {
  float* base = mut_ptr<float>(dst) + row * dst.stride[0];
  for (int l = 0; l < nl; ++l)
    for (int64_t n = 0; n < N; ++n) base[(c0 + l) * dst.stride[1] + n * dst.stride[2]] = h[n * kLanes + l];
}

}  // namespace ssm::cpu::SSM_ISA::scan
