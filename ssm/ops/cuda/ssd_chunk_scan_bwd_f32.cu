// SSD chunked scan backward kernels, float instantiation (one translation unit per dtype).
#include "cuda/ssd_bwd_chunk.cuh"
#include "cuda/ssd_bwd_finalize.cuh"
#include "cuda/ssd_bwd_state.cuh"

namespace ssm::cuda::ssd {

template void launch_bwd_dstate<float>(const SsdParams&, const Layout&, const BwdLayout&, cudaStream_t);
template void launch_bwd_state<float>(const SsdParams&, const Layout&, const BwdLayout&, cudaStream_t);
template void launch_bwd_cb<float>(const SsdParams&, const Layout&, const BwdLayout&, cudaStream_t);
template void launch_bwd_dc<float>(const SsdParams&, const Layout&, const BwdLayout&, cudaStream_t);
template void launch_bwd_dx<float>(const SsdParams&, const Layout&, const BwdLayout&, cudaStream_t);
template void launch_bwd_finalize<float>(const SsdParams&, const Layout&, const BwdLayout&, cudaStream_t);

}  // namespace ssm::cuda::ssd
