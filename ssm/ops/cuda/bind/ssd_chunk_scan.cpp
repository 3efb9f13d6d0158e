#include "common/bind/ssd_chunk_scan_params.h"
#include "cuda/bind/common.h"
#include "cuda/kernels.h"

namespace ssm::bind::cuda {

// Same name and signature as the CPU binding; the sizes carry the chunk (and flags) after the CPU's
// eight, and the workspace is one row laid out as ssm/ops/cuda/ssd_chunk_scan.cuh documents.
void bind_ssd_chunk_scan(nb::module_& m) {
  def_kernel<int64_t>(m, "ssd_chunk_scan_fwd", &ssd_chunk_scan_fwd_params,
                      [](const SsdParams& p, int64_t stream) { ssm::cuda::ssd_chunk_scan_fwd(p, stream_arg(stream)); });
  def_kernel<int64_t>(m, "ssd_chunk_scan_bwd", &ssd_chunk_scan_bwd_params,
                      [](const SsdParams& p, int64_t stream) { ssm::cuda::ssd_chunk_scan_bwd(p, stream_arg(stream)); });
}

}  // namespace ssm::bind::cuda
