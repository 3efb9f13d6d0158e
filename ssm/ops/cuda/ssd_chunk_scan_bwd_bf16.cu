// SSD chunked scan backward kernels, bfloat16_t instantiation (one translation unit per dtype).
#include "cuda/ssd_bwd_dstate.cuh"
#include "cuda/ssd_bwd_finalize.cuh"
#include "cuda/ssd_bwd_state.cuh"

namespace ssm::cuda::ssd {

template void launch_bwd_state<bfloat16_t>(const SsdParams&, const Layout&, const BwdLayout&, cudaStream_t);
template void launch_bwd_cb<bfloat16_t>(const SsdParams&, const Layout&, const BwdLayout&, cudaStream_t);
template void launch_bwd_tiles_mma<bfloat16_t>(const SsdParams&, const Layout&, const BwdLayout&, cudaStream_t);
template void launch_bwd_dstate_mma<bfloat16_t>(const SsdParams&, const Layout&, const BwdLayout&, cudaStream_t);
template void launch_bwd_finalize<bfloat16_t>(const SsdParams&, const Layout&, const BwdLayout&, cudaStream_t);

}  // namespace ssm::cuda::ssd
