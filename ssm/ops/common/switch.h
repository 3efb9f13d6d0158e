// Compile-time switches over run-time values (FlashAttention's BOOL_SWITCH style).
// The element types `half_t` and `bfloat16_t` are looked up in the caller's namespace,
// so each backend brings its own.
#pragma once
#include "common/check.h"
#include "common/tensor_arg.h"

#define SSM_BOOL_SWITCH(cond, NAME, ...) \
  [&] {                                  \
    if (cond) {                          \
      constexpr bool NAME = true;        \
      return __VA_ARGS__();              \
    } else {                             \
      constexpr bool NAME = false;       \
      return __VA_ARGS__();              \
    }                                    \
  }()

#define SSM_DTYPE_SWITCH(dtype, T, op, ...)                                   \
  [&] {                                                                       \
    switch (dtype) {                                                          \
      case ::ssm::DType::f32: { using T = float; return __VA_ARGS__(); }      \
      case ::ssm::DType::f16: { using T = half_t; return __VA_ARGS__(); }     \
      case ::ssm::DType::bf16: { using T = bfloat16_t; return __VA_ARGS__(); } \
    }                                                                         \
    ::ssm::fail(op, "unsupported dtype code ", static_cast<int>(dtype));      \
  }()
