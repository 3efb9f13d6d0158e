// Device check of ssd_wgmma.cuh's layout facts (session 10, engineer wgmma): one warpgroup computes
// D1 = A X (X swizzled [k][n], the transposed-B form) and D2 = A H^T (H swizzled [n][k]) for 64 x 64 x 64
// with small integers (exact in bf16 / f16 and float32), and compares with the host product. Also runs the
// other transpose flag on each tile, so that a wrong convention shows which one holds. (Session 10, round 1:
// exact on the H200, as was A by descriptor, the form the in-kernel C B^T variant used.)
// Build: nvcc -std=c++17 -gencode=arch=compute_90a,code=sm_90a -Issm/ops benchmarks/device/wgmma_probe.cu
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "cuda/ssd_wgmma.cuh"

using namespace ssm::cuda;
using namespace ssm::cuda::ssd;

// d[i * 64 + j] = (A B)(i, j): A [64][64] row-major float, b [64][64] in the global order of the shared tile
// (element (r, col) of tile row r), kTrans as wgmma_64x64's.
// 1024-aligned in a static buffer (the swizzle atoms' alignment).
template <typename T>
__device__ T* aligned_tile(unsigned char* raw) {
  return reinterpret_cast<T*>(raw + ((1024 - (smem_addr(raw) & 1023)) & 1023));
}

template <typename T, bool kTrans>
__global__ void probe(const float* A, const float* bsrc, float* out) {
  __shared__ __align__(128) unsigned char raw[64 * 64 * 2 + 1024];
  T* tile = aligned_tile<T>(raw);
  for (int e = threadIdx.x; e < 64 * 64; e += 128) tile[sw_off(e / 64, e % 64)] = from_float<T>(bsrc[e]);
  fence_async_smem();
  __syncthreads();
  const int warp = threadIdx.x >> 5, g = (threadIdx.x & 31) >> 2, c = threadIdx.x & 3, r = 16 * warp + g;
  unsigned a[4][4];
  for (int kk = 0; kk < 4; ++kk) {
    const int k = 16 * kk + 2 * c;
    a[kk][0] = pack2<T>(A[r * 64 + k], A[r * 64 + k + 1]);
    a[kk][1] = pack2<T>(A[(r + 8) * 64 + k], A[(r + 8) * 64 + k + 1]);
    a[kk][2] = pack2<T>(A[r * 64 + k + 8], A[r * 64 + k + 9]);
    a[kk][3] = pack2<T>(A[(r + 8) * 64 + k + 8], A[(r + 8) * 64 + k + 9]);
  }
  float d[8][4] = {};
  const unsigned base = smem_addr(tile);
  fence_acc(d);
  wgmma_fence();
  for (int kk = 0; kk < 4; ++kk)
    wgmma_64x64<T, kTrans>(d, a[kk], sw_desc(kTrans ? base + kk * 2048 : base + kk * 32));
  wgmma_commit();
  wgmma_wait<0>();
  fence_acc(d);
  for (int j = 0; j < 8; ++j)
    for (int u = 0; u < 4; ++u) out[(r + 8 * (u / 2)) * 64 + 8 * j + 2 * c + u % 2] = d[j][u];
}

// Largest |out - ref| and the first mismatch.
static double compare(const std::vector<float>& out, const std::vector<double>& ref, const char* what) {
  double m = 0;
  int first = -1;
  for (int e = 0; e < 64 * 64; ++e) {
    const double err = std::abs(out[e] - ref[e]);
    if (err > m) m = err;
    if (err > 0 && first < 0) first = e;
  }
  if (first < 0)
    printf("  %-34s max err 0 (exact)\n", what);
  else
    printf("  %-34s max err %g, first at (%d, %d): %g vs %g\n", what, m, first / 64, first % 64, out[first],
           ref[first]);
  return m;
}

template <typename T, bool kTrans>
static std::vector<float> run(const float* dA, const float* dB, float* dO) {
  probe<T, kTrans><<<1, 128>>>(dA, dB, dO);
  std::vector<float> out(64 * 64);
  const cudaError_t e = cudaMemcpy(out.data(), dO, out.size() * 4, cudaMemcpyDeviceToHost);
  if (e != cudaSuccess) printf("  CUDA error: %s\n", cudaGetErrorString(e));
  return out;
}

template <typename T>
static int check(const char* name, const float* dA, const float* dB, const std::vector<float>& A,
                 const std::vector<float>& B, float* dO) {
  std::vector<double> rx(64 * 64), rh(64 * 64);  // A B as [k][n] (X) and as [n][k] (H)
  for (int i = 0; i < 64; ++i)
    for (int j = 0; j < 64; ++j)
      for (int k = 0; k < 64; ++k) {
        rx[i * 64 + j] += double(A[i * 64 + k]) * B[k * 64 + j];
        rh[i * 64 + j] += double(A[i * 64 + k]) * B[j * 64 + k];
      }
  printf("%s:\n", name);
  const double ex = compare(run<T, true>(dA, dB, dO), rx, "X [k][n], trans 1 (S X)");
  const double eh = compare(run<T, false>(dA, dB, dO), rh, "H [n][k], trans 0 (C H^T)");
  compare(run<T, true>(dA, dB, dO), rh, "(diag) trans 1 against [n][k]");
  compare(run<T, false>(dA, dB, dO), rx, "(diag) trans 0 against [k][n]");
  return ex == 0 && eh == 0 ? 0 : 1;
}

int main() {
  std::vector<float> A(64 * 64), B(64 * 64);
  srand(7);
  for (auto& v : A) v = float(rand() % 9 - 4);
  for (auto& v : B) v = float(rand() % 9 - 4);
  float *dA, *dB, *dO;
  cudaMalloc(&dA, A.size() * 4), cudaMalloc(&dB, B.size() * 4), cudaMalloc(&dO, 64 * 64 * 4);
  cudaMemcpy(dA, A.data(), A.size() * 4, cudaMemcpyHostToDevice);
  cudaMemcpy(dB, B.data(), B.size() * 4, cudaMemcpyHostToDevice);
  const int bad = check<__nv_bfloat16>("bfloat16", dA, dB, A, B, dO) + check<__half>("half", dA, dB, A, B, dO);
  printf("wgmma probe: %s\n", bad == 0 ? "PASS (both layouts exact, bf16 and f16)" : "FAIL");
  return bad;
}
