// Small-batch linear layer (decoding): out[b, m] = weight[m, :] . x[b, :] (+ bias[m]). At batch 1 to
// a few rows this is a read of the weights: each thread's rows stream once as kStreams far-apart
// sequential streams (rows m, m + q, m + 2q, m + 3q of its q * kStreams rows dotted in one loop),
// each dotted with every batch row (float32, 2 accumulators per row so the adds overlap). One core
// reads several distant streams faster than one (benchmarks/read_streams_probe.cpp, 2-core EPYC,
// float32: 24 in_proj-shaped 3072 x 768 matrices 22.6 GB/s against 11.7 for rows one at a time; 768 x
// 1536: 21.5 against 16.5 in blocks of 4 adjacent rows). bfloat16 / float16 weights widen to float32.
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

constexpr int kStreams = 4;

// Rows m0 + r * step (r < R) of the output, for every batch row (xs: the batch's x rows in float32).
template <typename T, int R>
void rows_block(const GemvParams& p, const float* xs, int64_t m0, int64_t step) {
  const int64_t K = p.in_features, ldw = p.weight.stride[0];
  const T* w = ptr<T>(p.weight) + m0 * ldw;
  T* out = mut_ptr<T>(p.out);
  for (int64_t b = 0; b < p.batch; ++b) {
    float s[R];
    dot_rows<T, R>(w, step * ldw, xs + b * K, K, s);
    for (int r = 0; r < R; ++r) {
      const int64_t m = m0 + r * step;
      const float bias = p.bias.present() ? ptr<float>(p.bias)[m * p.bias.stride[0]] : 0.f;
      out[b * p.out.stride[0] + m * p.out.stride[1]] = from_float<T>(s[r] + bias);
    }
  }
}

// Output rows [begin, end): kStreams streams of q rows, then the last rows one at a time.
template <typename T>
void gemv_rows(const GemvParams& p, int64_t begin, int64_t end) {
  const int64_t K = p.in_features;
  std::vector<float> xs(p.batch * K + 1);  // x in float32, once per task
  for (int64_t b = 0; b < p.batch; ++b)
    load_row(xs.data() + b * K, ptr<T>(p.x) + b * p.x.stride[0], p.x.stride[1], K);
  const int64_t q = (end - begin) / kStreams;
  for (int64_t m = begin; m < begin + q; ++m) rows_block<T, kStreams>(p, xs.data(), m, q);
  for (int64_t m = begin + kStreams * q; m < end; ++m) rows_block<T, 1>(p, xs.data(), m, 1);
}

}  // namespace

void gemv(const GemvParams& p, int nthreads) {
  if (p.batch == 0 || p.out_features == 0) return;
  SSM_DTYPE_SWITCH(p.dtype, T, "gemv", [&] {
    parallel_for(p.out_features, nthreads, [&](int64_t begin, int64_t end) { gemv_rows<T>(p, begin, end); });
  });
}

}  // namespace ssm::cpu::SSM_ISA
