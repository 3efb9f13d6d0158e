// Small-batch linear layer (decoding): out[b, m] = weight[m, :] . x[b, :] (+ bias[m]). At batch 1 to
// a few rows this is a read of the weights: blocks of 4 weight rows stream once, each dotted with
// every batch row (float32, 2 accumulators per row so the adds overlap), threads over row blocks.
// bfloat16 / float16 weights widen to float32 in registers (half the bytes of a float32 weight).
#include <algorithm>
#include <type_traits>
#include <vector>

#include "cpu/kernels.h"
#include "cpu/runtime/parallel.h"
#include "cpu/scan_math.h"
#include "cpu/vec.h"

namespace ssm::cpu::SSM_ISA {
namespace {
using namespace scan;

typedef uint16_t vu16 __attribute__((vector_size(kLanes * sizeof(uint16_t))));
typedef uint32_t vu32 __attribute__((vector_size(kLanes * sizeof(uint32_t))));

// kLanes consecutive elements as floats.
template <typename T>
inline vf load_lanes(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    return vload(p);
  } else if constexpr (std::is_same_v<T, bfloat16_t>) {
    vu16 h;
    std::memcpy(&h, p, sizeof h);
    return (vf)(__builtin_convertvector(h, vu32) << 16);
  } else {
#if defined(__F16C__)
    static_assert(kLanes == 8, "F16C converts 8 halves");
    return (vf)_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
#else
    vf v;
    for (int l = 0; l < kLanes; ++l) v[l] = to_float(p[l]);
    return v;
#endif
  }
}

constexpr int kRows = 4;

// s[r] = w[r * ldw + :K] . x for r < R (x float32, K entries).
template <typename T, int R>
inline void dot_rows(const T* w, int64_t ldw, const float* __restrict x, int64_t K, float* s) {
  vf a[R], b[R];
  for (int r = 0; r < R; ++r) a[r] = b[r] = splat(0.f);
  int64_t k = 0;
  for (; k + 2 * kLanes <= K; k += 2 * kLanes) {
    const vf x0 = vload(x + k), x1 = vload(x + k + kLanes);
    for (int r = 0; r < R; ++r) {
      a[r] += load_lanes(w + r * ldw + k) * x0;
      b[r] += load_lanes(w + r * ldw + k + kLanes) * x1;
    }
  }
  if (k + kLanes <= K) {
    const vf x0 = vload(x + k);
    for (int r = 0; r < R; ++r) a[r] += load_lanes(w + r * ldw + k) * x0;
    k += kLanes;
  }
  for (int r = 0; r < R; ++r) {
    s[r] = hsum(a[r] + b[r]);
    for (int64_t j = k; j < K; ++j) s[r] += to_float(w[r * ldw + j]) * x[j];
  }
}

// Rows m0 .. m0 + R - 1 of the output, for every batch row (xs: the batch's x rows in float32).
template <typename T, int R>
void rows_block(const GemvParams& p, const float* xs, int64_t m0) {
  const int64_t K = p.in_features, ldw = p.weight.stride[0];
  const T* w = ptr<T>(p.weight) + m0 * ldw;
  T* out = mut_ptr<T>(p.out);
  for (int64_t b = 0; b < p.batch; ++b) {
    float s[R];
    dot_rows<T, R>(w, ldw, xs + b * K, K, s);
    for (int r = 0; r < R; ++r) {
      const float bias = p.bias.present() ? ptr<float>(p.bias)[(m0 + r) * p.bias.stride[0]] : 0.f;
      out[b * p.out.stride[0] + (m0 + r) * p.out.stride[1]] = from_float<T>(s[r] + bias);
    }
  }
}

template <typename T>
void gemv_rows(const GemvParams& p, int64_t begin, int64_t end) {
  const int64_t K = p.in_features, M = p.out_features;
  std::vector<float> xs(p.batch * K + 1);  // x in float32, once per task
  for (int64_t b = 0; b < p.batch; ++b)
    load_row(xs.data() + b * K, ptr<T>(p.x) + b * p.x.stride[0], p.x.stride[1], K);
  for (int64_t blk = begin; blk < end; ++blk) {
    const int64_t m0 = blk * kRows;
    if (m0 + kRows <= M) {
      rows_block<T, kRows>(p, xs.data(), m0);
    } else {
      for (int64_t m = m0; m < M; ++m) rows_block<T, 1>(p, xs.data(), m);
    }
  }
}

}  // namespace

void gemv(const GemvParams& p, int nthreads) {
  if (p.batch == 0 || p.out_features == 0) return;
  SSM_DTYPE_SWITCH(p.dtype, T, "gemv", [&] {
    const int64_t blocks = (p.out_features + kRows - 1) / kRows;
    parallel_for(blocks, nthreads, [&](int64_t begin, int64_t end) { gemv_rows<T>(p, begin, end); });
  });
}

}  // namespace ssm::cpu::SSM_ISA
