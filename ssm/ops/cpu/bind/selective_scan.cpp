#include "common/bind/selective_scan_params.h"
#include "cpu/bind/common.h"
#include "cpu/kernels.h"
#include "cpu/runtime/isa.h"

namespace ssm::bind {
namespace {

// cu_seqlens lives in host memory here, so its values can be checked before the kernel reads them.
void check_cu_seqlens(const char* op, const SelectiveScanParams& p) {
  if (!p.cu_seqlens.present()) return;
  const int32_t* cu = static_cast<const int32_t*>(p.cu_seqlens.data);
  const int64_t st = p.cu_seqlens.stride[0];
  SSM_CHECK(cu[0] == 0 && cu[p.nrows * st] == p.seqlen, op, "cu_seqlens must run from 0 to ", p.seqlen);
  for (int64_t i = 0; i < p.nrows; ++i)
    SSM_CHECK(cu[i * st] <= cu[(i + 1) * st], op, "cu_seqlens must be nondecreasing");
}

}  // namespace

void bind_selective_scan(nb::module_& m) {
  def_kernel<int>(m, "selective_scan_fwd", &selective_scan_fwd_params, [](const SelectiveScanParams& p, int nthreads) {
    check_cu_seqlens("selective_scan_fwd", p);
    SSM_CPU_CALL(selective_scan_fwd, p, nthreads);
  });
  def_kernel<int>(m, "selective_scan_bwd", &selective_scan_bwd_params, [](const SelectiveScanParams& p, int nthreads) {
    check_cu_seqlens("selective_scan_bwd", p);
    SSM_CPU_CALL(selective_scan_bwd, p, nthreads);
  });
}

}  // namespace ssm::bind
