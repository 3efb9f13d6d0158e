// The ssm._cpu extension module: one bind_<op> per op file in this folder.
#include "cpu/bind/common.h"
#include "cpu/bind/prepared.h"

NB_MODULE(_cpu, m) {
  m.doc() = "ssm C++ CPU kernels";
  ssm::bind::bind_runtime(m);
  ssm::bind::bind_dw_causal_conv(m);
  ssm::bind::bind_dw_causal_conv_bwd(m);
  ssm::bind::bind_dw_causal_conv_update(m);
  ssm::bind::bind_layer_norm(m);
  ssm::bind::bind_gated_norm(m);
  ssm::bind::bind_ssd_chunk_scan(m);
  ssm::bind::bind_selective_scan(m);
  ssm::bind::bind_selective_state_step(m);
  ssm::bind::bind_gemv(m);
  ssm::bind::bind_mamba1_decode(m);
  ssm::bind::bind_mamba1_block_decode(m);
  ssm::bind::bind_gemm(m);
  ssm::bind::bind_prepared(m);
}
