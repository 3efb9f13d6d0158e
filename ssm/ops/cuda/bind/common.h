// CUDA binding helpers: the stream argument and the bind_<op> functions of this module. The helpers
// shared with the CPU module (tensor references, def_kernel, each op's param builder) are in common/bind/.
#pragma once
#include <cuda_runtime.h>

#include "common/bind/def_kernel.h"
#include "common/bind/ref.h"

namespace ssm::bind::cuda {

// The last argument of every CUDA binding: the stream (torch's current one) as an integer.
inline cudaStream_t stream_arg(int64_t s) { return reinterpret_cast<cudaStream_t>(static_cast<uintptr_t>(s)); }

void bind_dw_causal_conv(nb::module_& m);
void bind_dw_causal_conv_bwd(nb::module_& m);
void bind_dw_causal_conv_update(nb::module_& m);
void bind_selective_scan(nb::module_& m);
void bind_selective_state_step(nb::module_& m);
void bind_norms(nb::module_& m);
void bind_ssd_chunk_scan(nb::module_& m);
void bind_conv_state_step(nb::module_& m);
void bind_norm_gemv(nb::module_& m);
void bind_dw_causal_conv_cl(nb::module_& m);
void bind_m1_decode_step(nb::module_& m);
void bind_batch_conv(nb::module_& m);

}  // namespace ssm::bind::cuda
