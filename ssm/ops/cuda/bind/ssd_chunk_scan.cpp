#include "common/bind/ssd_chunk_scan_params.h"
#include "cuda/bind/common.h"
#include "cuda/kernels.h"

namespace ssm::bind::cuda {

// Same name and signature as the CPU binding; the sizes carry the chunk (and flags) after the CPU's
// eight, and the workspace is one row laid out as ssm/ops/cuda/ssd_chunk_scan.cuh documents.
void bind_ssd_chunk_scan(nb::module_& m) {
  def_kernel<int64_t>(m, "ssd_chunk_scan_fwd", &ssd_chunk_scan_fwd_params,
                      [](const SsdParams& p, int64_t stream) { ssm::cuda::ssd_chunk_scan_fwd(p, stream_arg(stream)); });
  def_kernel<int64_t>(m, "ssd_chunk_scan_bwd", &ssd_chunk_scan_bwd_params,
                      [](const SsdParams& p, int64_t stream) { ssm::cuda::ssd_chunk_scan_bwd(p, stream_arg(stream)); });
  // floats of the backward's workspace row for sizes (batch, seqlen, nheads, headdim, ngroups, dstate, chunk)
  m.def("ssd_chunk_scan_bwd_workspace_floats", [](int dtype, const SsdSizes& sizes) {
    const char* op = "ssd_chunk_scan_bwd_workspace_floats";
    SSM_CHECK(sizes.size() == 7, op, "expected 7 sizes, got ", sizes.size());
    for (int64_t s : sizes) SSM_CHECK(s >= 0, op, "negative size");
    SSM_CHECK(sizes[6] > 0, op, "the chunk must be positive");
    SsdParams p;
    p.batch = sizes[0], p.seqlen = sizes[1], p.nheads = sizes[2], p.headdim = sizes[3];
    p.ngroups = sizes[4], p.dstate = sizes[5], p.chunk = sizes[6];
    p.dtype = dtype_arg(op, dtype);
    return ssm::cuda::ssd_chunk_scan_bwd_workspace_floats(p);
  });
  // dB / dC partial sums per batch row the backward writes ((B, L, sets, N); sets a multiple of ngroups), same sizes
  m.def("ssd_chunk_scan_bwd_head_sets", [](int dtype, const SsdSizes& sizes) {
    const char* op = "ssd_chunk_scan_bwd_head_sets";
    SSM_CHECK(sizes.size() == 7, op, "expected 7 sizes, got ", sizes.size());
    for (int64_t s : sizes) SSM_CHECK(s >= 0, op, "negative size");
    SSM_CHECK(sizes[6] > 0, op, "the chunk must be positive");
    SsdParams p;
    p.batch = sizes[0], p.seqlen = sizes[1], p.nheads = sizes[2], p.headdim = sizes[3];
    p.ngroups = sizes[4], p.dstate = sizes[5], p.chunk = sizes[6];
    p.dtype = dtype_arg(op, dtype);
    return ssm::cuda::ssd_chunk_scan_bwd_head_sets(p);
  });
  // the backward's last sums: sizes (batch, seqlen, nheads, headdim, ngroups, dstate, sets, dA parts, dD rows)
  m.def("ssd_chunk_scan_bwd_reduce", [](int dtype, const SsdSizes& sizes, const Ref& dB_sets, const Ref& dC_sets,
                                        const Ref& dB, const Ref& dC, const Ref& dA_part, const Ref& dA,
                                        const OptRef& dD_part, const OptRef& dD, const Ref& ddt,
                                        const OptRef& ddt_bias, int64_t stream) {
    const char* op = "ssd_chunk_scan_bwd_reduce";
    SSM_CHECK(sizes.size() == 9, op, "expected 9 sizes, got ", sizes.size());
    for (int64_t s : sizes) SSM_CHECK(s >= 0, op, "negative size");
    SsdBwdReduceParams p;
    p.batch = sizes[0], p.seqlen = sizes[1], p.nheads = sizes[2], p.headdim = sizes[3], p.ngroups = sizes[4];
    p.dstate = sizes[5], p.sets = sizes[6], p.dA_parts = sizes[7], p.dD_rows = sizes[8];
    p.dtype = dtype_arg(op, dtype);
    p.dB_sets = tensor_arg(op, "dB_sets", dB_sets, 4), p.dC_sets = tensor_arg(op, "dC_sets", dC_sets, 4);
    p.dB = tensor_arg(op, "dB", dB, 4), p.dC = tensor_arg(op, "dC", dC, 4);
    p.dA_part = tensor_arg(op, "dA_part", dA_part, 2), p.dA = tensor_arg(op, "dA", dA, 1);
    p.dD_part = tensor_arg(op, "dD_part", dD_part, 3), p.dD = tensor_arg(op, "dD", dD, 2);
    p.ddt = tensor_arg(op, "ddt", ddt, 3), p.ddt_bias = tensor_arg(op, "ddt_bias", ddt_bias, 1);
    nb::gil_scoped_release release;
    ssm::cuda::ssd_chunk_scan_bwd_reduce(p, stream_arg(stream));
  });
}

}  // namespace ssm::bind::cuda
