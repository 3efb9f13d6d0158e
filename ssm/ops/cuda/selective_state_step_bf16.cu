// Selective state step, bfloat16_t state instantiation (one translation unit per state dtype).
#include "cuda/selective_state_step.cuh"

namespace ssm::cuda {

template <>
void selective_state_step_typed<bfloat16_t>(const StateStepParams& p, cudaStream_t stream) {
  step::launch<bfloat16_t>(p, stream);
}

}  // namespace ssm::cuda
