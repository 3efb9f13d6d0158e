// Selective scan backward, half_t instantiation (one translation unit per dtype).
#include "cuda/selective_scan_bwd_thread.cuh"

namespace ssm::cuda {

template <>
void selective_scan_bwd_typed<half_t>(const SelectiveScanParams& p, cudaStream_t stream) {
  if (scan_thread::takes_bwd(p)) scan_thread::launch_bwd<half_t>(p, stream);
  else scan_bwd::launch_bwd<half_t>(p, stream);
}

}  // namespace ssm::cuda
