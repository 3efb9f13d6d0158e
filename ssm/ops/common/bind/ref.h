// Binding arguments as Python passes them (ssm/ops/_kernels.py): a tensor is a tuple
// (data_ptr, stride_0, ..., stride_{n-1}), or None when an optional tensor is absent; a dtype is a code.
// Shared by the CPU and CUDA modules.
#pragma once
#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "common/check.h"
#include "common/tensor_arg.h"

namespace ssm::bind {

namespace nb = nanobind;
using Ref = std::vector<int64_t>;
using OptRef = std::optional<std::vector<int64_t>>;

inline TensorArg tensor_arg(const char* op, const char* name, const Ref& v, int ndim) {
  SSM_CHECK(int(v.size()) == ndim + 1, op, name, ": expected a ", ndim, "-d tensor reference, got ",
            v.size() - 1, " strides");
  SSM_CHECK(v[0] != 0, op, name, ": null data pointer");
  TensorArg t;
  t.data = reinterpret_cast<void*>(static_cast<uintptr_t>(v[0]));
  for (int i = 0; i < ndim; ++i) t.stride[i] = v[i + 1];
  return t;
}

inline TensorArg tensor_arg(const char* op, const char* name, const OptRef& v, int ndim) {
  return v ? tensor_arg(op, name, *v, ndim) : TensorArg{};
}

inline DType dtype_arg(const char* op, int code) {
  SSM_CHECK(code >= 0 && code <= 2, op, "unknown dtype code ", code);
  return DType(code);
}

}  // namespace ssm::bind
