#include "common/bind/selective_scan_params.h"
#include "cuda/bind/common.h"
#include "cuda/kernels.h"

namespace ssm::bind::cuda {

void bind_selective_scan(nb::module_& m) {
  def_kernel<int64_t>(m, "selective_scan_fwd", &selective_scan_fwd_params,
                      [](const SelectiveScanParams& p, int64_t stream) {
                        ssm::cuda::selective_scan_fwd(p, stream_arg(stream));
                      });
  def_kernel<int64_t>(m, "selective_scan_bwd", &selective_scan_bwd_params,
                      [](const SelectiveScanParams& p, int64_t stream) {
                        ssm::cuda::selective_scan_bwd(p, stream_arg(stream));
                      });
}

}  // namespace ssm::bind::cuda
