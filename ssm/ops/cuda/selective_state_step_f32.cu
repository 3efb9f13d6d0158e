// Selective state step, float state instantiation (one translation unit per state dtype).
#include "cuda/selective_state_step.cuh"

namespace ssm::cuda {

template <>
void selective_state_step_typed<float>(const StateStepParams& p, cudaStream_t stream) {
  step::launch<float>(p, stream);
}

}  // namespace ssm::cuda
