// Selective state step: checks and the state-dtype dispatch (kernel in selective_state_step.cuh).
#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace ssm::cuda {

void selective_state_step(const StateStepParams& p, cudaStream_t stream) {
  const char* op = "selective_state_step";
  SSM_CHECK(p.dstate >= 1, op, "dstate must be positive, got ", p.dstate);
  SSM_CHECK(p.ngroups >= 1 && p.nheads % p.ngroups == 0, op, "nheads ", p.nheads, " is not a multiple of ngroups ",
            p.ngroups);
  SSM_CHECK(!has(p.dt_proj) || (p.headdim == 1 && p.dt_rank >= 1), op,
            "dt_proj needs the Mamba-1 layout (headdim 1) and a positive rank, got headdim ", p.headdim, ", rank ",
            p.dt_rank);
  if (p.batch * p.nheads * p.headdim == 0) return;
  SSM_CHECK(p.batch * p.nheads * p.headdim * 32 < (int64_t(1) << 32), op, "too many rows");
  SSM_DTYPE_SWITCH(p.state_dtype, TS, op, [&] { selective_state_step_typed<TS>(p, stream); });
  check_launch(op);
}

}  // namespace ssm::cuda
