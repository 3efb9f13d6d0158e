// Parameter structs of every op: pointers, sizes, strides (in elements) and flags.
// One header for both backends, so the CPU and CUDA kernels agree on each op's contract.
// Small parameter tensors (conv weight and bias, A, D, dt_bias, norm weights) arrive as
// float32; activations arrive in `dtype`.
#pragma once
#include <cstdint>

#include "common/tensor_arg.h"

namespace ssm {

// Depthwise causal conv over L: y[b,d,t] = bias[d] + sum_k w[d,k] * x[b,d,t-W+1+k], then silu.
struct ConvParams {
  int64_t batch = 0, dim = 0, seqlen = 0, width = 0;
  DType dtype = DType::f32;
  TensorArg x;               // (B, D, L)          dtype
  TensorArg weight;          // (D, W)             float32
  TensorArg bias;            // (D,)               float32, optional
  TensorArg seq_idx;         // (B, L)             int32, optional
  TensorArg initial_states;  // (B, D, W-1)        dtype, optional
  TensorArg out;             // (B, D, L)          dtype
  TensorArg final_states;    // (B, D, W-1)        dtype, optional
  bool silu = false;
};

}  // namespace ssm
