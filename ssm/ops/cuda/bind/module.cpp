// The ssm._cuda extension module: one bind_<op> per op file in this folder.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include "cuda/bind/common.h"
#include "cuda/runtime.h"

namespace nb = nanobind;

NB_MODULE(_cuda, m) {
  m.doc() = "ssm CUDA kernels";
  m.def("device_count", &ssm::cuda::device_count, "CUDA devices visible to the ssm CUDA module.");
  ssm::bind::cuda::bind_dw_causal_conv(m);
  ssm::bind::cuda::bind_dw_causal_conv_bwd(m);
  ssm::bind::cuda::bind_dw_causal_conv_update(m);
  ssm::bind::cuda::bind_selective_scan(m);
  ssm::bind::cuda::bind_selective_state_step(m);
  ssm::bind::cuda::bind_norms(m);
  ssm::bind::cuda::bind_ssd_chunk_scan(m);
  ssm::bind::cuda::bind_conv_state_step(m);
  ssm::bind::cuda::bind_norm_gemv(m);
  ssm::bind::cuda::bind_dw_causal_conv_cl(m);
  ssm::bind::cuda::bind_m1_decode_step(m);
  ssm::bind::cuda::bind_batch_conv(m);
}
