// Selective scan (Mamba-1) backward for N <= 16 on the GPU (variable B and C, no seq_idx /
// cu_seqlens). Pre-pass: the forward kernel in checkpoint mode stores the state before every
// kSteps-step chunk (chunk_states (B, D, nchunks, N) float32, D fastest), unless the forward wrote
// them already (chunk_states_filled: the op's eager autograd path and the fused Mamba-1 backward).
// Then selective_scan_bwd_pair.cuh's kernel walks the chunks in reverse.
#pragma once
#include <cstdlib>

#include "cuda/selective_scan_bwd.cuh"
#include "cuda/selective_scan_bwd_pair.cuh"
#include "cuda/selective_scan_fwd_thread.cuh"

namespace ssm::cuda::scan_thread {

// Whether the backward runs here: takes(p), and a workspace of this kernel's layout (D fastest)
// when L needs more than one chunk (the op layer allocates it for this kernel or the warp kernel).
inline bool takes_bwd(const SelectiveScanParams& p) {
  return takes(p) && (p.seqlen <= kSteps || checkpoint_layout(p));
}

template <typename T>
void launch_bwd(const SelectiveScanParams& p, cudaStream_t stream) {
  const int64_t total = p.nslices * p.batch * p.ngroups * p.dstate * p.seqlen;
  if (total > 0) scan_bwd::zero_bc<<<ceil_div(total, 256), 256, 0, stream>>>(p);
  if (p.seqlen > kSteps && !p.chunk_states_filled) launch_fwd<T>(p, true, stream);
  SSM_CHECK(scan_pair::takes(p), "selective_scan_bwd", "L, D or the initial state's N stride past 2^26 (the op "
            "layer sends these to the warp kernel)");
  scan_pair::launch_bwd<T>(p, stream);
}

}  // namespace ssm::cuda::scan_thread
