// Selective scan forward, bfloat16_t instantiation (one translation unit per dtype).
#include "cuda/selective_scan_fwd.cuh"

namespace ssm::cuda {

template <>
void selective_scan_fwd_typed<bfloat16_t>(const SelectiveScanParams& p, cudaStream_t stream) {
  scan::launch_fwd<bfloat16_t>(p, stream);
}

}  // namespace ssm::cuda
