// Programmatic dependent launch (Hopper and later) for the decode kernels: a kernel launched with
// pdl_launch may start while the previous kernel of the stream still runs (also inside a CUDA graph),
// so its blocks are resident and its weight loads in flight when that kernel ends. Rules for such a
// kernel: before pdl_wait() it reads only tensors no kernel writes (weights) and writes nothing;
// every thread calls pdl_wait() (so that its grid ends after the previous one: the chain stays
// ordered). pdl_release() lets the next kernel launch early. SSM_PDL=0 launches them plainly.
// Data the previous kernel may write can be fetched into L2 before the wait (prefetch_l2, prefetch_l2_bulk).
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

// L2 prefetch for the time before pdl_wait(): data the previous kernel may still write (a decode step's state)
// must not be READ before the wait, but it may be fetched into L2. L2 is the point of coherence of global memory:
// whatever the previous kernel stores lands there, merging into (or replacing) a prefetched line, so loads after
// pdl_wait() see the new data; the prefetch writes no register and fills no L1 line. The loads after the wait
// then hit L2 (about a third of the DRAM round trip) instead of waiting for DRAM.
// prefetch_l2: the 128-byte line holding addr (one request a lane: call it from one lane a line).
__device__ __forceinline__ void prefetch_l2(const void* addr) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("prefetch.global.L2 [%0];" ::"l"(addr));
#endif
}

// prefetch_l2_bulk: bytes contiguous bytes from addr in one instruction (one thread; sm_90: addr 16-byte aligned,
// bytes a multiple of 16).
__device__ __forceinline__ void prefetch_l2_bulk(const void* addr, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(addr), "r"(bytes) : "memory");
#endif
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
