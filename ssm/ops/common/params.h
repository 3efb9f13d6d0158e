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

namespace ssm {

// Selective scan (Mamba-1), forward: per (b, d) the state x (N) runs
//   dt = softplus?(delta + dt_bias); x = exp(dt * A) * x + dt * B_t * u_t; y = <x, C_t> + D * u;
//   out = y * silu(z). B and C are constant (D, N) float32 or variable (B, G, N, L) in dtype.
// Varlen: seq_idx resets the state where the id changes; cu_seqlens (batch 1) bounds sequences,
// each with its own initial and last state (nseq, D, N).
struct ScanParams {
  int64_t batch = 0, dim = 0, seqlen = 0, dstate = 0, ngroups = 1, nseq = 0;
  DType dtype = DType::f32;
  bool B_variable = false, C_variable = false, softplus = false;
  TensorArg u;              // (B, D, L)                 dtype
  TensorArg delta;          // (B, D, L)                 dtype
  TensorArg A;              // (D, N)                    float32
  TensorArg Bm;             // (D, N) float32 or (B, G, N, L) dtype
  TensorArg Cm;             // (D, N) float32 or (B, G, N, L) dtype
  TensorArg D;              // (D,)                      float32, optional
  TensorArg z;              // (B, D, L)                 dtype, optional
  TensorArg dt_bias;        // (D,)                      float32, optional
  TensorArg initial_state;  // (B or nseq, D, N)         float32, optional
  TensorArg seq_idx;        // (B, L)                    int32, optional
  TensorArg cu_seqlens;     // (nseq + 1,)               int32, optional (batch 1)
  TensorArg out;            // (B, D, L)                 dtype
  TensorArg last_state;     // (B or nseq, D, N)         float32, optional
};

}  // namespace ssm
