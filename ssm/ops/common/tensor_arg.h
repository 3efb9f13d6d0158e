// A strided view of one tensor as kernels see it: a pointer and strides in elements.
// Shared by the CPU and CUDA backends; no framework headers.
#pragma once
#include <cstdint>

namespace ssm {

enum class DType : int { f32 = 0, f16 = 1, bf16 = 2 };

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "float32";
    case DType::f16: return "float16";
    case DType::bf16: return "bfloat16";
  }
  return "unknown";
}

struct TensorArg {
  void* data = nullptr;      // nullptr when the optional tensor is absent
  int64_t stride[4] = {0, 0, 0, 0};
  bool present() const { return data != nullptr; }
};

}  // namespace ssm
