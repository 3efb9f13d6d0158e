// SSD chunked scan forward kernels, bfloat16_t instantiation (one translation unit per dtype).
#include "cuda/ssd_chunk_output_wgmma.cuh"
#include "cuda/ssd_chunk_state_heads.cuh"
#include "cuda/ssd_state_passing.cuh"

namespace ssm::cuda::ssd {

template void launch_chunk_state<bfloat16_t>(const SsdParams&, const Layout&, cudaStream_t);
template void launch_state_passing<bfloat16_t>(const SsdParams&, const Layout&, cudaStream_t);
template void launch_varlen_states<bfloat16_t>(const SsdParams&, const Layout&, cudaStream_t);
template void launch_chunk_scan<bfloat16_t>(const SsdParams&, const Layout&, cudaStream_t);

}  // namespace ssm::cuda::ssd
