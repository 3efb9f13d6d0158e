// Selective scan backward, bfloat16_t instantiation (one translation unit per dtype).
#include "cuda/selective_scan_bwd.cuh"

namespace ssm::cuda {

template <>
void selective_scan_bwd_typed<bfloat16_t>(const SelectiveScanParams& p, cudaStream_t stream) {
  scan_bwd::launch_bwd<bfloat16_t>(p, stream);
}

}  // namespace ssm::cuda
