#include "common/bind/selective_state_step_params.h"
#include "cuda/bind/common.h"
#include "cuda/kernels.h"

namespace ssm::bind::cuda {

void bind_selective_state_step(nb::module_& m) {
  def_kernel<int64_t>(m, "selective_state_step", &selective_state_step_params,
                      [](const StateStepParams& p, int64_t stream) {
                        ssm::cuda::selective_state_step(p, stream_arg(stream));
                      });
  // Mamba-1 with dt_proj folded in: dt is the low-rank dt_in (B, R) as (data, batch stride, rank
  // stride, 0), dt[b, h] = dot(dt_proj[h, :], dt_in[b, :]) (see StateStepParams)
  m.def("selective_state_step_proj",
        [](int state_dtype, int dtype, int64_t batch, int64_t nheads, int64_t headdim, int64_t dstate,
           int64_t ngroups, const Ref& state, const Ref& x, const Ref& dt_in, const Ref& A, const Ref& B,
           const Ref& C, const OptRef& D, const OptRef& z, const OptRef& dt_bias,
           const OptRef& state_batch_indices, const Ref& out, bool softplus, int64_t dt_rank, const Ref& dt_proj,
           int64_t stream) {
          StateStepParams p = selective_state_step_params(state_dtype, dtype, batch, nheads, headdim, dstate,
                                                          ngroups, state, x, dt_in, A, B, C, D, z, dt_bias,
                                                          state_batch_indices, out, softplus);
          p.dt_rank = dt_rank;
          p.dt_proj = tensor_arg("selective_state_step", "dt_proj", dt_proj, 2);
          nb::gil_scoped_release release;
          ssm::cuda::selective_state_step(p, stream_arg(stream));
        });
}

}  // namespace ssm::bind::cuda
