// How fast one core reads float32 weight rows for a matrix-vector product, by access pattern: rows one
// at a time, S far-apart sequential streams (rows m, m + q, ... dotted in one loop: ssm/ops/cpu/gemv.cpp
// uses 4), adjacent rows in blocks, and a plain sum. Thread CPU time, median of 11 rounds, the caches
// flushed by a 128 MiB read before each. Standalone (no ssm, no torch):
//   g++ -O3 -mavx2 -mfma -o /tmp/read_streams benchmarks/read_streams_probe.cpp && /tmp/read_streams
#include <immintrin.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <vector>

namespace {

double thread_seconds() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

float hsum(__m256 v) {
  __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  a = _mm_hadd_ps(a, a);
  return _mm_cvtss_f32(_mm_hadd_ps(a, a));
}

// out[m + s * step] = w[m + s * step, :K] . x for s < S, m over the first rows (step = M / S), or over
// blocks of S adjacent rows (step = 1); K a multiple of 16.
template <int S>
void dot_streams(const float* w, const float* x, float* out, long M, long K, long step) {
  const long rows = step == 1 ? M : step, stride = step == 1 ? S : 1;
  for (long m = 0; m < rows; m += stride) {
    __m256 a[S], b[S];
    for (int s = 0; s < S; ++s) a[s] = b[s] = _mm256_setzero_ps();
    for (long k = 0; k < K; k += 16) {
      const __m256 x0 = _mm256_loadu_ps(x + k), x1 = _mm256_loadu_ps(x + k + 8);
      for (int s = 0; s < S; ++s) {
        const float* r = w + (m + s * step) * K + k;
        a[s] = _mm256_fmadd_ps(_mm256_loadu_ps(r), x0, a[s]);
        b[s] = _mm256_fmadd_ps(_mm256_loadu_ps(r + 8), x1, b[s]);
      }
    }
    for (int s = 0; s < S; ++s) out[m + s * step] = hsum(_mm256_add_ps(a[s], b[s]));
  }
}

float sum8(const float* w, long n) {
  __m256 a[8];
  for (int i = 0; i < 8; ++i) a[i] = _mm256_setzero_ps();
  for (long k = 0; k < n; k += 64)
    for (int i = 0; i < 8; ++i) a[i] = _mm256_add_ps(a[i], _mm256_loadu_ps(w + k + 8 * i));
  for (int i = 1; i < 8; ++i) a[0] = _mm256_add_ps(a[0], a[i]);
  return hsum(a[0]);
}

// 24 matrices of rows x K each (the decode step's in_proj: 3072 x 768; out_proj: 768 x 1536), by pattern
void per_matrix(int pattern, const float* w, const float* x, float* out, long rows, long K) {
  for (int i = 0; i < 24; ++i) {
    const float* wi = w + i * rows * K;
    float* oi = out + i * rows;
    if (pattern == 0) dot_streams<1>(wi, x, oi, rows, K, 1);
    if (pattern == 1) dot_streams<4>(wi, x, oi, rows, K, rows / 4);
    if (pattern == 2) dot_streams<4>(wi, x, oi, rows, K, 1);
  }
}

}  // namespace

int main() {
  const long total = 24L * 3072 * 768;  // 226 MB of float32
  float* w = static_cast<float*>(aligned_alloc(2 << 20, total * 4));
  for (long i = 0; i < total; ++i) w[i] = float(i % 7) * 0.1f;
  std::vector<float> x(1536, 1.f), out(24 * 3072), flush(32 << 20, 1.f);
  const char* names[] = {"73728 x 768, rows one at a time", "73728 x 768, 2 far streams",
                         "73728 x 768, 4 far streams", "73728 x 768, 8 far streams",
                         "73728 x 768, blocks of 2 adjacent rows", "226 MB, plain 8-accumulator sum",
                         "24 x (3072 x 768), one at a time", "24 x (3072 x 768), 4 far streams",
                         "24 x (768 x 1536), one at a time", "24 x (768 x 1536), 4 far streams",
                         "24 x (768 x 1536), blocks of 4 adjacent rows"};  // (113 MB)
  const int kinds = 11;
  std::vector<double> gbs[kinds];
  volatile float sink = 0;
  for (int round = 0; round < 11; ++round) {
    for (int v = 0; v < kinds; ++v) {
      float s = 0;
      for (size_t i = 0; i < flush.size(); i += 16) s += flush[i];
      const double t0 = thread_seconds();
      const long M = 24 * 3072, K = 768;
      switch (v) {
        case 0: dot_streams<1>(w, x.data(), out.data(), M, K, 1); break;
        case 1: dot_streams<2>(w, x.data(), out.data(), M, K, M / 2); break;
        case 2: dot_streams<4>(w, x.data(), out.data(), M, K, M / 4); break;
        case 3: dot_streams<8>(w, x.data(), out.data(), M, K, M / 8); break;
        case 4: dot_streams<2>(w, x.data(), out.data(), M, K, 1); break;
        case 5: s += sum8(w, total); break;
        default: {
          const int patterns[] = {0, 1, 0, 1, 2};  // kinds 6 .. 10
          per_matrix(patterns[v - 6], w, x.data(), out.data(), v < 8 ? 3072 : 768, v < 8 ? 768 : 1536);
        }
      }
      const double bytes = 4.0 * (v >= 8 ? 24L * 768 * 1536 : total);
      gbs[v].push_back(bytes / (thread_seconds() - t0) / 1e9);
      sink = sink + s + out[round];
    }
  }
  for (int v = 0; v < kinds; ++v) {
    std::sort(gbs[v].begin(), gbs[v].end());
    std::printf("%-44s %5.1f GB/s (best %.1f)\n", names[v], gbs[v][5], gbs[v][10]);
  }
  return sink == 12345.f;
}
