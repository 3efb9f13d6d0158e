// SSD chunked scan forward: checks and the dtype dispatch (kernels in ssd_*.cuh).
#include "cuda/ssd_chunk_output_staged.cuh"

namespace ssm::cuda {

void ssd_chunk_scan_fwd(const SsdParams& p, cudaStream_t stream) {
  const char* op = "ssd_chunk_scan_fwd";
  SSM_CHECK(p.chunk >= ssd::kTile && p.chunk <= ssd::kMaxChunk && p.chunk % ssd::kTile == 0, op,
            "the CUDA kernel takes chunks of 64, 128, 192 or 256 tokens, got ", p.chunk);
  SSM_CHECK(p.dstate >= 1 && p.dstate <= ssd::kMaxState, op, "the CUDA kernel takes N in [1, 256], got ", p.dstate);
  SSM_CHECK(p.headdim >= 1, op, "headdim must be positive");
  SSM_CHECK(p.batch <= 65535 && p.nheads <= 65535, op, "batch and nheads must be at most 65535");
  SSM_CHECK(!has(p.cu_seqlens) || p.batch == 1, op, "cu_seqlens needs batch 1, got ", p.batch);
  SSM_CHECK(!has(p.varlen_states) || has(p.cu_seqlens), op, "varlen_states need cu_seqlens");
  const int elem = p.dtype == DType::f32 ? 4 : 2;
  ssd::Layout w = ssd::layout(p, elem);
  w.split = ssd::hin_split_enabled(p);  // the forward's own (the backward's layout keeps it off)
  SSM_CHECK(p.workspace_floats >= w.floats, op, "workspace of ", p.workspace_floats, " floats, need ", w.floats);
  if (p.batch * p.nheads == 0) return;
  SSM_DTYPE_SWITCH(p.dtype, T, op, [&] {
    ssd::launch_chunk_state<T>(p, w, stream);
    ssd::launch_state_passing<T>(p, w, stream);
    if (has(p.varlen_states)) ssd::launch_varlen_states<T>(p, w, stream);
    ssd::launch_chunk_scan<T>(p, w, stream);
  });
  check_launch(op);
}

}  // namespace ssm::cuda
