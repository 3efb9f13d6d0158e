// Binding of the CPU matrix product (ssm/ops/cpu/gemm.cpp): gemm(dtype, out_dtype, a, b, c, kc, mc, nc,
// nthreads) with a (batch, M, K), b (batch, K, N), c (batch, M, N) as 3-d tensor references.
#include "cpu/bind/common.h"
#include "cpu/bind/prepared.h"
#include "cpu/kernels.h"
#include "cpu/runtime/isa.h"

namespace ssm::bind {
namespace {

GemmParams gemm_params(int dtype, int out_dtype, int64_t batch, int64_t M, int64_t N, int64_t K, const Ref& a,
                       const Ref& b, const Ref& c, int64_t kc, int64_t mc, int64_t nc) {
  const char* op = "gemm";
  SSM_CHECK(batch >= 0 && M >= 0 && N >= 0 && K >= 0, op, "negative size");
  SSM_CHECK(kc >= 0 && mc >= 0 && nc >= 0, op, "negative block size");
  GemmParams p;
  p.batch = batch, p.M = M, p.N = N, p.K = K, p.kc = kc, p.mc = mc, p.nc = nc;
  p.dtype = dtype_arg(op, dtype);
  p.out_dtype = dtype_arg(op, out_dtype);
  SSM_CHECK(p.out_dtype == DType::f32 || p.out_dtype == p.dtype, op, "out_dtype must be float32 or dtype");
  p.a = tensor_arg(op, "a", a, 3);
  p.b = tensor_arg(op, "b", b, 3);
  p.c = tensor_arg(op, "c", c, 3);
  return p;
}

}  // namespace

void bind_gemm(nb::module_& m) {
  def_cpu_kernel(m, "gemm", &gemm_params, [](const GemmParams& p, int nthreads) { SSM_CPU_CALL(gemm, p, nthreads); });
}

}  // namespace ssm::bind
