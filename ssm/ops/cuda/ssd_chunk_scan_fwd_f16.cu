// SSD chunked scan forward kernels, half_t instantiation (one translation unit per dtype).
#include "cuda/ssd_chunk_output_wgmma.cuh"
#include "cuda/ssd_chunk_state_heads.cuh"
#include "cuda/ssd_state_passing.cuh"

namespace ssm::cuda::ssd {

template void launch_chunk_state<half_t>(const SsdParams&, const Layout&, cudaStream_t);
template void launch_state_passing<half_t>(const SsdParams&, const Layout&, cudaStream_t);
template void launch_varlen_states<half_t>(const SsdParams&, const Layout&, cudaStream_t);
template void launch_chunk_scan<half_t>(const SsdParams&, const Layout&, cudaStream_t);

}  // namespace ssm::cuda::ssd
