// Programmatic dependent launch (Hopper and later) for the decode kernels: a kernel launched with
// pdl_launch may start while the previous kernel of the stream still runs (also inside a CUDA graph),
// so its blocks are resident and its weight loads in flight when that kernel ends. Rules for such a
// kernel: before pdl_wait() it reads only tensors no kernel writes (weights) and writes nothing;
// every thread calls pdl_wait() (so that its grid ends after the previous one: the chain stays
// ordered). pdl_release() lets the next kernel launch early. SSM_PDL=0 launches them plainly.
#pragma once
#include <cstdlib>
#include <utility>

#include "cuda/common.cuh"

namespace ssm::cuda {

// Waits until the previous kernel of the stream has finished and its writes are visible.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Lets the next kernel of the stream start once every block of this one has called it.
__device__ __forceinline__ void pdl_release() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// SSM_PDL unset or not "0", and the current device is sm_90 or later (read per launch: cheap, and
// a benchmark can compare both in one process).
inline bool pdl_enabled() {
  const char* env = std::getenv("SSM_PDL");
  if (env != nullptr && env[0] == '0') return false;
  static int major[16] = {0};
  int dev = 0;
  cudaGetDevice(&dev);
  if (dev < 0 || dev >= 16) return false;
  if (major[dev] == 0) cudaDeviceGetAttribute(&major[dev], cudaDevAttrComputeCapabilityMajor, dev);
  return major[dev] >= 9;
}

template <typename... Params, typename... Args>
void pdl_launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, Args&&... args) {
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid, cfg.blockDim = block, cfg.dynamicSmemBytes = smem, cfg.stream = stream;
  cfg.attrs = attr, cfg.numAttrs = pdl_enabled() ? 1 : 0;
  cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}

}  // namespace ssm::cuda
