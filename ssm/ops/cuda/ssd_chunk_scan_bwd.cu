// SSD chunked scan backward: checks and the dtype dispatch (kernels in ssd_bwd_*.cuh). The forward's
// chunk_state and state_passing kernels recompute the chunk records and entering states first.
#include <type_traits>

#include "cuda/ssd_bwd_common.cuh"

namespace ssm::cuda {

int64_t ssd_chunk_scan_bwd_workspace_floats(const SsdParams& p) {
  return ssd::bwd_layout(p, ssd::layout(p, p.dtype == DType::f32 ? 4 : 2)).floats;
}

int64_t ssd_chunk_scan_bwd_head_sets(const SsdParams& p) {
  return ssd::bwd_layout(p, ssd::layout(p, p.dtype == DType::f32 ? 4 : 2)).hsets;
}

void ssd_chunk_scan_bwd(const SsdParams& p, cudaStream_t stream) {
  const char* op = "ssd_chunk_scan_bwd";
  SSM_CHECK(p.chunk >= ssd::kTile && p.chunk <= ssd::kMaxChunk && p.chunk % ssd::kTile == 0, op,
            "the CUDA kernel takes chunks of 64, 128, 192 or 256 tokens, got ", p.chunk);
  SSM_CHECK(p.dstate >= 1 && p.dstate <= ssd::kMaxState, op, "the CUDA kernel takes N in [1, 256], got ", p.dstate);
  SSM_CHECK(p.headdim >= 1 && p.headdim <= 256, op, "the CUDA backward takes P in [1, 256], got ", p.headdim);
  SSM_CHECK(p.batch <= 65535 && p.nheads <= 65535, op, "batch and nheads must be at most 65535");
  SSM_CHECK(!has(p.cu_seqlens) && !has(p.dvarlen), op, "the CUDA backward takes no cu_seqlens");
  SSM_CHECK(!has(p.z) && !has(p.dz), op, "the CUDA backward takes the gate outside");
  SSM_CHECK(!p.inject_unit, op, "the CUDA backward takes no inject_unit flag");
  SSM_CHECK(has(p.dout) && has(p.dx) && has(p.ddt) && has(p.dA) && has(p.dB) && has(p.dC), op, "missing gradient buffers");
  SSM_CHECK(!has(p.dinitial) || has(p.initial_states), op, "dinitial needs initial_states");
  const int elem = p.dtype == DType::f32 ? 4 : 2;
  ssd::Layout w = ssd::layout(p, elem);
  const ssd::BwdLayout v = ssd::bwd_layout(p, w);
  w.bwd_tok = v.tok;  // the recompute's tokens kernel writes the backward's token rows too
  SSM_CHECK(p.workspace_floats >= v.floats, op, "workspace of ", p.workspace_floats, " floats, need ", v.floats);
  if (p.batch * p.nheads * p.seqlen == 0) return;
  SSM_DTYPE_SWITCH(p.dtype, T, op, [&] {
    ssd::launch_chunk_state<T>(p, w, stream);
    if (v.hinlo) {  // split: the state pass writes H_in's residue v.hinlo (for dc and bwd_state)
      ssd::Layout wp = w;
      wp.split = true, wp.hinlo = v.hinlo;
      ssd::launch_state_passing<T>(p, wp, stream);
    } else {
      ssd::launch_state_passing<T>(p, w, stream);
    }
    ssd::launch_bwd_cb<T>(p, w, v, stream);
    if constexpr (std::is_same<T, float>::value) ssd::launch_bwd_dstate<T>(p, w, v, stream);
    else ssd::launch_bwd_dstate_mma<T>(p, w, v, stream);
    ssd::launch_bwd_state<T>(p, w, v, stream);
    if constexpr (std::is_same<T, float>::value) {
      ssd::launch_bwd_dc<T>(p, w, v, stream);
      ssd::launch_bwd_dx<T>(p, w, v, stream);
    } else {
      ssd::launch_bwd_tiles_mma<T>(p, w, v, stream);
    }
    ssd::launch_bwd_finalize<T>(p, w, v, stream);
  });
  check_launch(op);
}

}  // namespace ssm::cuda
