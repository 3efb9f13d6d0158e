// Selective scan backward, float instantiation (one translation unit per dtype).
#include "cuda/selective_scan_bwd.cuh"

namespace ssm::cuda {

template <>
void selective_scan_bwd_typed<float>(const SelectiveScanParams& p, cudaStream_t stream) {
  scan_bwd::launch_bwd<float>(p, stream);
}

}  // namespace ssm::cuda
