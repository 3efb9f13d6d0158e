// Selective scan forward, float instantiation (one translation unit per dtype).
#include "cuda/selective_scan_fwd.cuh"

namespace ssm::cuda {

template <>
void selective_scan_fwd_typed<float>(const SelectiveScanParams& p, cudaStream_t stream) {
  scan::launch_fwd<float>(p, stream);
}

}  // namespace ssm::cuda
