// Declarations of the CPU kernels. Each kernel source (ssm/ops/cpu/<op>.cpp) is compiled
// once per instruction set into namespace ssm::cpu::<isa>; runtime/isa.h picks one.
#pragma once
#include "common/params.h"

#define SSM_CPU_DECLARE(name, Params)                 \
  namespace generic { void name(const Params&, int); } \
  namespace avx2 { void name(const Params&, int); }    \
  namespace avx512 { void name(const Params&, int); }

namespace ssm::cpu {

SSM_CPU_DECLARE(dw_causal_conv_fwd, ConvParams)
SSM_CPU_DECLARE(dw_causal_conv_bwd, ConvBwdParams)
SSM_CPU_DECLARE(dw_causal_conv_update, ConvUpdateParams)
SSM_CPU_DECLARE(layer_norm_fwd, LayerNormParams)
SSM_CPU_DECLARE(layer_norm_bwd, LayerNormBwdParams)
SSM_CPU_DECLARE(gated_norm_fwd, GatedNormParams)
SSM_CPU_DECLARE(gated_norm_bwd, GatedNormParams)
SSM_CPU_DECLARE(ssd_chunk_scan_fwd, SsdParams)
SSM_CPU_DECLARE(ssd_chunk_scan_bwd, SsdParams)
SSM_CPU_DECLARE(selective_scan_fwd, SelectiveScanParams)
SSM_CPU_DECLARE(selective_scan_bwd, SelectiveScanParams)
SSM_CPU_DECLARE(selective_state_step, StateStepParams)
SSM_CPU_DECLARE(gemv, GemvParams)
SSM_CPU_DECLARE(mamba1_decode, Mamba1DecodeParams)
SSM_CPU_DECLARE(mamba1_block_decode, Mamba1BlockDecodeParams)
SSM_CPU_DECLARE(gemm, GemmParams)

}  // namespace ssm::cpu

#undef SSM_CPU_DECLARE
