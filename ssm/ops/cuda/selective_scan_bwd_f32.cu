// Selective scan backward, float instantiation (one translation unit per dtype).
#include "cuda/selective_scan_bwd_thread.cuh"

namespace ssm::cuda {

template <>
void selective_scan_bwd_typed<float>(const SelectiveScanParams& p, cudaStream_t stream) {
  if (scan_thread::takes_bwd(p)) scan_thread::launch_bwd<float>(p, stream);
  else scan_bwd::launch_bwd<float>(p, stream);
}

}  // namespace ssm::cuda
