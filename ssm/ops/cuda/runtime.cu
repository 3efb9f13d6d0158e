// Run-time facts about the CUDA module: the architectures it was compiled for, the devices seen.
#include <cuda_runtime.h>

#include <string>

#include "cuda/runtime.h"

namespace ssm::cuda {

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
}

std::string last_error_string() { return cudaGetErrorString(cudaGetLastError()); }

}  // namespace ssm::cuda
