// Small-batch linear layer (decoding): out[b, m] = weight[m, :] . x[b, :] (+ bias[m]). At batch 1 to
// a few rows this is a read of the weights: blocks of weight rows stream once, each dotted with every
// batch row (float32, 2 accumulators per row so the adds overlap), threads over row blocks. Rows of up
// to 4 KB go one at a time (the weights then stream as one sequential read: on the 2-core EPYC, 768-wide
// float32 rows read at 20.7-22.5 GB/s that way against 14.2-18.7 in blocks of 4), longer ones 4 at a time
// (6 KB rows: 21.5-22.1 against 20.0-21.5 GB/s one at a time).
// bfloat16 / float16 weights widen to float32 in registers (half the bytes of a float32 weight).
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

constexpr int64_t kShortRowBytes = 4096;

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

// Output rows of blocks [begin, end) of kRows rows each.
template <typename T, int kRows>
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

template <typename T, int kRows>
void gemv_blocks(const GemvParams& p, int nthreads) {
  const int64_t blocks = (p.out_features + kRows - 1) / kRows;
  parallel_for(blocks, nthreads, [&](int64_t begin, int64_t end) { gemv_rows<T, kRows>(p, begin, end); });
}

}  // namespace

void gemv(const GemvParams& p, int nthreads) {
  if (p.batch == 0 || p.out_features == 0) return;
  SSM_DTYPE_SWITCH(p.dtype, T, "gemv", [&] {
    if (p.in_features * int64_t(sizeof(T)) <= kShortRowBytes) {
      gemv_blocks<T, 1>(p, nthreads);
    } else {
      gemv_blocks<T, 4>(p, nthreads);
    }
  });
}

}  // namespace ssm::cpu::SSM_ISA
