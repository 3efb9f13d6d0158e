// Matrix product c = a @ b (per batch item) in float32, BLIS-style: b's block of kc rows x nc columns
// packed into panels of 16 columns, a's block of mc x kc into panels of 6 rows (bfloat16 / float16
// widened to float32 as they are packed: no separate widening pass), and a 6 x 16 register tile (12
// vectors of 8 accumulators, one broadcast of a and two loads of b per step) over each panel pair.
// Products over K in several kc blocks keep their partial sums in c (float32 output with unit column
// stride) or in a float32 scratch of the block's rows (other outputs; nc capped so that it stays under
// 16 MB a thread), rounded once at the last block. While a block's tiles run, the next b panel is
// prefetched a share per tile (the packed b block, 12.6 MB for in_proj at 8 x 512 tokens, is out of L2).
// Packing buffers and scratch are kept per thread across calls.
#include <algorithm>
#include <type_traits>
#include <vector>

#include "cpu/dot_rows.h"
#include "cpu/kernels.h"
#include "cpu/runtime/parallel.h"
#include "cpu/scan_math.h"
#include "cpu/selective_scan_common.h"
#include "cpu/vec.h"

namespace ssm::cpu::SSM_ISA {
namespace {
using namespace scan;
using rowdot::load_lanes;

constexpr int MR = 6, NR = 16;
constexpr int64_t kKc = 768, kMc = 72, kNc = 4096;  // defaults: a block of a (216 KB at kc 768) in L2
constexpr int64_t kScratch = int64_t(4) << 20;      // floats of partial sums a thread keeps (M x nc at most)

struct Blocks { int64_t kc, mc, nc; };

#ifdef __AVX2__
// rows[l][k0 .. k0 + 8) for l < 8 (rows past nrows zero) as 8 vectors v[j] = (rows[0][k0 + j], ..):
// a block of a k-contiguous operand transposed in registers.
template <typename T>
inline void transposed8(const T* p, int64_t ld, int nrows, int64_t k0, __m256 v[8]) {
  for (int l = 0; l < 8; ++l) v[l] = l < nrows ? (__m256)load_lanes(p + l * ld + k0) : _mm256_setzero_ps();
  transpose8(v);
}
#endif

// b's rows [0, kc) x columns [0, nc) (element (k, n) at b[k * sk + n * sn]) as panels bp[n / NR][k][NR],
// zero past nc.
template <typename T>
void pack_b(const T* b, int64_t sk, int64_t sn, int64_t kc, int64_t nc, float* bp) {
  for (int64_t j = 0; j < nc; j += NR, bp += kc * NR) {
    const int64_t nr = std::min<int64_t>(NR, nc - j);
    const T* col = b + j * sn;
    if (nr == NR && sn == 1) {
      for (int64_t k = 0; k < kc; ++k) {
        vstore(bp + k * NR, load_lanes(col + k * sk));
        vstore(bp + k * NR + kLanes, load_lanes(col + k * sk + kLanes));
      }
      continue;
    }
    int64_t k = 0;
#ifdef __AVX2__
    for (; sk == 1 && nr == NR && k + 8 <= kc; k += 8)
      for (int h = 0; h < 2; ++h) {
        __m256 v[8];
        transposed8(col + h * 8 * sn, sn, 8, k, v);
        for (int t = 0; t < 8; ++t) _mm256_storeu_ps(bp + (k + t) * NR + h * 8, v[t]);
      }
#endif
    for (int64_t c = 0; c < NR; ++c)
      for (int64_t kk = k; kk < kc; ++kk) bp[kk * NR + c] = c < nr ? to_float(col[c * sn + kk * sk]) : 0.f;
  }
}

// a's rows [0, mc) x columns [0, kc) (element (m, k) at a[m * sm + k * sk]) as panels ap[m / MR][k][MR],
// zero past mc. The vector path stores 8 floats per k (the 2 past MR overwritten by the next k), so
// ap needs 2 floats of slack at its end.
template <typename T>
void pack_a(const T* a, int64_t sm, int64_t sk, int64_t mc, int64_t kc, float* ap) {
  for (int64_t i = 0; i < mc; i += MR, ap += kc * MR) {
    const int64_t mr = std::min<int64_t>(MR, mc - i);
    int64_t k = 0;
#ifdef __AVX2__
    for (; sk == 1 && k + 8 <= kc; k += 8) {
      __m256 v[8];
      transposed8(a + i * sm, sm, int(mr), k, v);
      for (int t = 0; t < 8; ++t) _mm256_storeu_ps(ap + (k + t) * MR, v[t]);
    }
#endif
    for (int64_t r = 0; r < MR; ++r) {
      const T* row = a + (i + r) * sm;
      for (int64_t kk = k; kk < kc; ++kk) ap[kk * MR + r] = r < mr ? to_float(row[kk * sk]) : 0.f;
    }
  }
}

// acc[r][h] (lanes of columns h * 8 ..) = sum over k < kc of ap[k][r] * bp[k][h * 8 + lane].
inline void micro_tile(int64_t kc, const float* ap, const float* bp, vf acc[MR][2]) {
  vf c00 = {}, c01 = {}, c10 = {}, c11 = {}, c20 = {}, c21 = {};
  vf c30 = {}, c31 = {}, c40 = {}, c41 = {}, c50 = {}, c51 = {};
  for (int64_t k = 0; k < kc; ++k, ap += MR, bp += NR) {
    const vf b0 = vload(bp), b1 = vload(bp + kLanes);
    vf a = bcast(ap);
    c00 += a * b0, c01 += a * b1;
    a = bcast(ap + 1);
    c10 += a * b0, c11 += a * b1;
    a = bcast(ap + 2);
    c20 += a * b0, c21 += a * b1;
    a = bcast(ap + 3);
    c30 += a * b0, c31 += a * b1;
    a = bcast(ap + 4);
    c40 += a * b0, c41 += a * b1;
    a = bcast(ap + 5);
    c50 += a * b0, c51 += a * b1;
  }
  acc[0][0] = c00, acc[0][1] = c01, acc[1][0] = c10, acc[1][1] = c11, acc[2][0] = c20, acc[2][1] = c21;
  acc[3][0] = c30, acc[3][1] = c31, acc[4][0] = c40, acc[4][1] = c41, acc[5][0] = c50, acc[5][1] = c51;
}

// 8 float32 results to 8 outputs of type T at unit stride.
template <typename T>
inline void store8(T* dst, vf v) {
  if constexpr (std::is_same_v<T, float>) {
    vstore(dst, v);
#ifdef __AVX2__
  } else if constexpr (std::is_same_v<T, bfloat16_t>) {
    narrow8(dst, (__m256)v);
#endif
  } else {
    for (int l = 0; l < kLanes; ++l) dst[l] = from_float<T>(v[l]);
  }
}

// Where a tile's results go: the partial sums (float32, row stride ldw; null when there is one kc
// block) and the output c (row stride cm, column stride cn).
template <typename TO>
struct TileOut {
  float* w;
  int64_t ldw;
  TO* c;
  int64_t cm, cn;
};

// A full tile: partial sums of earlier kc blocks added, then kept for the next block or stored in c.
template <typename TO>
void finish_full(vf acc[MR][2], bool first, bool last, const TileOut<TO>& o) {
  for (int r = 0; r < MR; ++r)
    for (int h = 0; h < 2; ++h) {
      float* w = o.w ? o.w + r * o.ldw + h * kLanes : nullptr;
      const vf v = first ? acc[r][h] : acc[r][h] + vload(w);
      if (!last) {
        vstore(w, v);
      } else if (o.cn == 1) {
        store8(o.c + r * o.cm + h * kLanes, v);
      } else {
        for (int l = 0; l < kLanes; ++l) o.c[r * o.cm + (h * kLanes + l) * o.cn] = from_float<TO>(v[l]);
      }
    }
}

// An edge tile (mr rows, nr columns), element by element.
template <typename TO>
void finish_edge(vf acc[MR][2], int64_t mr, int64_t nr, bool first, bool last, const TileOut<TO>& o) {
  for (int64_t r = 0; r < mr; ++r)
    for (int64_t j = 0; j < nr; ++j) {
      float v = acc[r][j / kLanes][j % kLanes];
      if (!first) v += o.w[r * o.ldw + j];
      if (!last) {
        o.w[r * o.ldw + j] = v;
      } else {
        o.c[r * o.cm + j * o.cn] = from_float<TO>(v);
      }
    }
}

// The tiles of one packed block pair: a's mc rows x b's nc columns; o at the block's first element.
template <typename TO>
void block_tiles(const float* ap, const float* bp, int64_t mc, int64_t nc, int64_t kc, bool first, bool last,
                 const TileOut<TO>& o) {
  const int64_t tiles = (mc + MR - 1) / MR, lines = kc * NR * 4 / 64;  // a b panel's cache lines
  for (int64_t j = 0; j < nc; j += NR) {
    const int64_t nr = std::min<int64_t>(NR, nc - j);
    const char* next = reinterpret_cast<const char*>(bp + (j + NR) * kc);  // the next b panel
    for (int64_t i = 0; i < mc; i += MR) {
      const int64_t mr = std::min<int64_t>(MR, mc - i);
      // a share of the next b panel fetched while these tiles run (it was packed out of the caches)
      if (j + NR < nc)
        for (int64_t l = i / MR * lines / tiles; l < (i / MR + 1) * lines / tiles; ++l)
          __builtin_prefetch(next + l * 64, 0, 2);
      vf acc[MR][2];
      micro_tile(kc, ap + i * kc, bp + j * kc, acc);
      const TileOut<TO> t{o.w ? o.w + i * o.ldw + j : nullptr, o.ldw, o.c + i * o.cm + j * o.cn, o.cm, o.cn};
      if (mr == MR && nr == NR) {
        finish_full(acc, first, last, t);
      } else {
        finish_edge(acc, mr, nr, first, last, t);
      }
    }
  }
}

// Per-thread packing buffers and partial sums, grown as needed (never inside the loops).
struct Scratch {
  std::vector<float> ap, bp, w;
};

float* grown(std::vector<float>& v, int64_t n) {
  if (int64_t(v.size()) < n) v.resize(n);
  return v.data();
}

// Columns [j0, j0 + nc) of batch item bi: every kc block of K, every mc block of M.
template <typename T, typename TO>
void column_block(const GemmParams& p, const Blocks& bl, int64_t bi, int64_t j0, int64_t nc, Scratch& s) {
  const T* a = ptr<T>(p.a) + bi * p.a.stride[0];
  const T* b = ptr<T>(p.b) + bi * p.b.stride[0] + j0 * p.b.stride[2];
  TO* c = mut_ptr<TO>(p.c) + bi * p.c.stride[0] + j0 * p.c.stride[2];
  const int64_t cm = p.c.stride[1], cn = p.c.stride[2];
  const bool in_c = std::is_same_v<TO, float> && cn == 1;  // partial sums kept in c itself
  float* w = p.K <= bl.kc ? nullptr : in_c ? reinterpret_cast<float*>(c) : grown(s.w, p.M * nc);
  const int64_t ldw = in_c ? cm : nc;
  float* bp = grown(s.bp, std::min(bl.kc, p.K) * (nc + NR));
  float* ap = grown(s.ap, std::min(bl.kc, p.K) * (bl.mc + MR) + kLanes);
  for (int64_t k0 = 0; k0 < p.K; k0 += bl.kc) {
    const int64_t kc = std::min(bl.kc, p.K - k0);
    pack_b(b + k0 * p.b.stride[1], p.b.stride[1], p.b.stride[2], kc, nc, bp);
    for (int64_t i0 = 0; i0 < p.M; i0 += bl.mc) {
      const int64_t mc = std::min(bl.mc, p.M - i0);
      pack_a(a + i0 * p.a.stride[1] + k0 * p.a.stride[2], p.a.stride[1], p.a.stride[2], mc, kc, ap);
      const TileOut<TO> o{w ? w + i0 * ldw : nullptr, ldw, c + i0 * cm, cm, cn};
      block_tiles(ap, bp, mc, nc, kc, k0 == 0, k0 + kc >= p.K, o);
    }
  }
}

// c = 0 where K is 0 (an empty sum).
template <typename TO>
void zero_output(const GemmParams& p) {
  for (int64_t bi = 0; bi < p.batch; ++bi)
    for (int64_t m = 0; m < p.M; ++m)
      for (int64_t n = 0; n < p.N; ++n)
        mut_ptr<TO>(p.c)[bi * p.c.stride[0] + m * p.c.stride[1] + n * p.c.stride[2]] = from_float<TO>(0.f);
}

Blocks blocks(const GemmParams& p, int nthreads) {
  Blocks bl{p.kc > 0 ? p.kc : kKc, p.mc > 0 ? (p.mc + MR - 1) / MR * MR : kMc, p.nc > 0 ? p.nc : kNc};
  // enough column blocks for every thread
  const int64_t per_thread = (p.N * p.batch + nthreads - 1) / nthreads;
  if (p.batch < nthreads) bl.nc = std::min(bl.nc, std::max<int64_t>(NR, (per_thread + NR - 1) / NR * NR));
  // partial sums outside c (several kc blocks, a rounded or strided output): M x nc floats, bounded
  const bool scratch = p.K > bl.kc && !(p.out_dtype == DType::f32 && p.c.stride[2] == 1);
  if (scratch) bl.nc = std::min(bl.nc, std::max<int64_t>(NR, kScratch / p.M / NR * NR));
  return bl;
}

template <typename T, typename TO>
void gemm_typed(const GemmParams& p, int nthreads) {
  if (p.K == 0) return zero_output<TO>(p);
  const Blocks bl = blocks(p, nthreads);
  const int64_t nblocks = (p.N + bl.nc - 1) / bl.nc;
  parallel_for(p.batch * nblocks, nthreads, [&](int64_t begin, int64_t end) {
    thread_local Scratch s;
    for (int64_t t = begin; t < end; ++t) {
      const int64_t bi = t / nblocks, j0 = (t % nblocks) * bl.nc;
      column_block<T, TO>(p, bl, bi, j0, std::min(bl.nc, p.N - j0), s);
    }
  });
}

}  // namespace

void gemm(const GemmParams& p, int nthreads) {
  if (p.batch == 0 || p.M == 0 || p.N == 0) return;
  SSM_DTYPE_SWITCH(p.dtype, T, "gemm", [&] {
    if (p.out_dtype == DType::f32) return gemm_typed<T, float>(p, nthreads);
    SSM_CHECK(p.out_dtype == p.dtype, "gemm", "out must be float32 or the operands' dtype");
    gemm_typed<T, T>(p, nthreads);
  });
}

}  // namespace ssm::cpu::SSM_ISA
