// Selective scan forward: checks and the dtype dispatch (kernels in selective_scan_fwd.cuh for N <= 16,
// selective_scan_fwd_warp.cuh above).
#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace ssm::cuda {

void selective_scan_fwd(const SelectiveScanParams& p, cudaStream_t stream) {
  const char* op = "selective_scan_fwd";
  SSM_CHECK(p.dstate >= 1 && p.dstate <= 256, op, "the CUDA kernel takes N in [1, 256], got ", p.dstate);
  SSM_CHECK(p.ngroups >= 1 && p.dim % p.ngroups == 0, op, "dim ", p.dim, " is not a multiple of ngroups ", p.ngroups);
  SSM_CHECK(!has(p.cu_seqlens) || p.batch == 1, op, "cu_seqlens needs batch 1, got ", p.batch);
  SSM_CHECK(p.batch <= 65535, op, "batch must be at most 65535, got ", p.batch);
  if (p.batch * p.dim == 0) return;
  SSM_DTYPE_SWITCH(p.dtype, T, op, [&] { selective_scan_fwd_typed<T>(p, stream); });
  check_launch(op);
}

}  // namespace ssm::cuda
