// Selective scan forward, half_t instantiation (one translation unit per dtype).
#include "cuda/selective_scan_fwd.cuh"
#include "cuda/selective_scan_fwd_thread.cuh"
#include "cuda/selective_scan_fwd_warp.cuh"

namespace ssm::cuda {

template <>
void selective_scan_fwd_typed<half_t>(const SelectiveScanParams& p, cudaStream_t stream) {
  if (scan_thread::takes(p)) scan_thread::launch_fwd_y<half_t>(p, stream);
  else if (p.dstate <= scan::kMaxN) scan::launch_fwd<half_t>(p, stream);
  else scan_fwd::launch_fwd<half_t>(p, stream);
}

}  // namespace ssm::cuda
