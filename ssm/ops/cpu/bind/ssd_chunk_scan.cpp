#include "common/bind/ssd_chunk_scan_params.h"
#include "cpu/bind/common.h"
#include "cpu/kernels.h"
#include "cpu/runtime/isa.h"

namespace ssm::bind {

void bind_ssd_chunk_scan(nb::module_& m) {
  def_kernel<int>(m, "ssd_chunk_scan_fwd", &ssd_chunk_scan_fwd_params,
                  [](const SsdParams& p, int nthreads) { SSM_CPU_CALL(ssd_chunk_scan_fwd, p, nthreads); });
  def_kernel<int>(m, "ssd_chunk_scan_bwd", &ssd_chunk_scan_bwd_params,
                  [](const SsdParams& p, int nthreads) { SSM_CPU_CALL(ssd_chunk_scan_bwd, p, nthreads); });
}

}  // namespace ssm::bind
