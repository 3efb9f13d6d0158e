// Declarations of the CUDA kernels (one source per op and direction in this folder). Each takes
// its op's parameter struct and the stream to run on; none allocates device memory.
#pragma once
#include <cuda_runtime.h>

#include "common/params.h"

namespace ssm::cuda {

void dw_causal_conv_fwd(const ConvParams& p, cudaStream_t stream);

void selective_scan_fwd(const ScanParams& p, cudaStream_t stream);
template <typename T>  // one instantiation per dtype (selective_scan_fwd_<dtype>.cu)
void selective_scan_fwd_typed(const ScanParams& p, cudaStream_t stream);

}  // namespace ssm::cuda
