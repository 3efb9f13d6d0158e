// Selective scan backward, half_t instantiation (one translation unit per dtype).
#include "cuda/selective_scan_bwd.cuh"

namespace ssm::cuda {

template <>
void selective_scan_bwd_typed<half_t>(const SelectiveScanParams& p, cudaStream_t stream) {
  scan_bwd::launch_bwd<half_t>(p, stream);
}

}  // namespace ssm::cuda
