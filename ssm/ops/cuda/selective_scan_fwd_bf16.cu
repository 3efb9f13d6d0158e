// Selective scan forward, bfloat16_t instantiation (one translation unit per dtype).
#include "cuda/selective_scan_fwd.cuh"
#include "cuda/selective_scan_fwd_thread.cuh"
#include "cuda/selective_scan_fwd_warp.cuh"

namespace ssm::cuda {

template <>
void selective_scan_fwd_typed<bfloat16_t>(const SelectiveScanParams& p, cudaStream_t stream) {
  if (scan_thread::takes(p)) scan_thread::launch_fwd_y<bfloat16_t>(p, stream);
  else if (p.dstate <= scan::kMaxN) scan::launch_fwd<bfloat16_t>(p, stream);
  else scan_fwd::launch_fwd<bfloat16_t>(p, stream);
}

}  // namespace ssm::cuda
