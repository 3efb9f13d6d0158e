// Declarations of the CUDA kernels (one source per op and direction in this folder). Each takes
// its op's parameter struct and the stream to run on; none allocates device memory.
#pragma once
#include <cuda_runtime.h>

#include "common/params.h"

namespace ssm::cuda {

void dw_causal_conv_fwd(const ConvParams& p, cudaStream_t stream);
void dw_causal_conv_bwd(const ConvBwdParams& p, cudaStream_t stream);
void dw_causal_conv_update(const ConvUpdateParams& p, cudaStream_t stream);

void selective_scan_fwd(const SelectiveScanParams& p, cudaStream_t stream);
template <typename T>  // one instantiation per dtype (selective_scan_fwd_<dtype>.cu)
void selective_scan_fwd_typed(const SelectiveScanParams& p, cudaStream_t stream);

void selective_scan_bwd(const SelectiveScanParams& p, cudaStream_t stream);
template <typename T>  // one instantiation per dtype (selective_scan_bwd_<dtype>.cu)
void selective_scan_bwd_typed(const SelectiveScanParams& p, cudaStream_t stream);

void selective_state_step(const StateStepParams& p, cudaStream_t stream);
template <typename TS>  // one instantiation per state dtype (selective_state_step_<dtype>.cu)
void selective_state_step_typed(const StateStepParams& p, cudaStream_t stream);

void layer_norm_fwd(const LayerNormParams& p, cudaStream_t stream);
void layer_norm_bwd(const LayerNormBwdParams& p, cudaStream_t stream);
void gated_norm_fwd(const GatedNormParams& p, cudaStream_t stream);
void gated_norm_bwd(const GatedNormParams& p, cudaStream_t stream);

void ssd_chunk_scan_fwd(const SsdParams& p, cudaStream_t stream);
void ssd_chunk_scan_bwd(const SsdParams& p, cudaStream_t stream);  // dB, dC per head (B, L, H, N); dA (B * H, nchunks)
int64_t ssd_chunk_scan_bwd_workspace_floats(const SsdParams& p);  // the forward's layout, then the backward's
int64_t ssd_chunk_scan_bwd_head_sets(const SsdParams& p);  // dB / dC come out as (B, L, head sets, N) partial sums
void ssd_chunk_scan_bwd_reduce(const SsdBwdReduceParams& p, cudaStream_t stream);  // the partials' sums

void conv_state_step(const ConvStateStepParams& p, cudaStream_t stream);
void norm_gemv(const NormGemvParams& p, cudaStream_t stream);
void m1_decode_step(const M1DecodeStepParams& p, cudaStream_t stream);

// Channels-last conv (dw_causal_conv_cl_fwd.cu / _bwd.cu): x and y (dy and dx) with stride 1 along
// D, widths 2-4, nonempty; the bindings route the calls that fit here and the rest to the kernels above.
bool dw_causal_conv_cl_fits(const ConvParams& p, const TensorArg& y);
void dw_causal_conv_cl_fwd(const ConvParams& p, cudaStream_t stream);
void dw_causal_conv_cl_bwd(const ConvBwdClParams& p, cudaStream_t stream);

// Batch decode (batch_decode.cu): the conv update of a batch's token on Mamba-2's channels-last cache.
bool batch_conv_fits(const BatchConvParams& p);
void batch_conv(const BatchConvParams& p, cudaStream_t stream);
bool batch_linear_narrow_fits(const BatchLinearParams& p, int elem);
void batch_linear_narrow(const BatchLinearParams& p, cudaStream_t stream);

}  // namespace ssm::cuda
