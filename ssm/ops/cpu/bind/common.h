// The CPU module's bind_<op> functions. The helpers they share with the CUDA module (tensor
// references, dtype codes, def_kernel and each op's param builder) are in common/bind/.
#pragma once
#include "common/bind/def_kernel.h"
#include "common/bind/ref.h"

namespace ssm::bind {

void bind_runtime(nb::module_& m);
void bind_dw_causal_conv(nb::module_& m);
void bind_dw_causal_conv_bwd(nb::module_& m);
void bind_dw_causal_conv_update(nb::module_& m);
void bind_layer_norm(nb::module_& m);
void bind_gated_norm(nb::module_& m);
void bind_ssd_chunk_scan(nb::module_& m);
void bind_selective_scan(nb::module_& m);
void bind_selective_state_step(nb::module_& m);
void bind_gemv(nb::module_& m);
void bind_mamba1_decode(nb::module_& m);
void bind_mamba1_block_decode(nb::module_& m);
void bind_gemm(nb::module_& m);

}  // namespace ssm::bind
