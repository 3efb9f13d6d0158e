// SSD chunked scan backward kernels, half_t instantiation (one translation unit per dtype).
#include "cuda/ssd_bwd_dstate.cuh"
#include "cuda/ssd_bwd_finalize.cuh"
#include "cuda/ssd_bwd_state.cuh"

namespace ssm::cuda::ssd {

template void launch_bwd_state<half_t>(const SsdParams&, const Layout&, const BwdLayout&, cudaStream_t);
template void launch_bwd_cb<half_t>(const SsdParams&, const Layout&, const BwdLayout&, cudaStream_t);
template void launch_bwd_tiles_mma<half_t>(const SsdParams&, const Layout&, const BwdLayout&, cudaStream_t);
template void launch_bwd_dstate_mma<half_t>(const SsdParams&, const Layout&, const BwdLayout&, cudaStream_t);
template void launch_bwd_finalize<half_t>(const SsdParams&, const Layout&, const BwdLayout&, cudaStream_t);

}  // namespace ssm::cuda::ssd
