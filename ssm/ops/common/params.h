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

// Mamba-2 SSD scan, per (batch, head) with state H (P, N):
// H_t = a_t H_{t-1} + Δ_t x_t ⊗ B_t with a_t = exp(Δ_t A), H_{t-1} reset where seq_idx changes (to 0)
// or at each cu_seqlens sequence start (to that sequence's initial state),
// Δ_t = clamp(softplus?(dt_t + dt_bias), dt_lo, dt_hi); y_t = (H_t C_t + D x_t) * silu(z_t).
// Head h reads group h / (H / G) of B and C. Per-thread workspaces are float32 rows.
struct SsdParams {
  int64_t batch = 0, seqlen = 0, nheads = 0, headdim = 0, ngroups = 0, dstate = 0, nseq = 0;
  int64_t workspace_floats = 0;  // per thread
  DType dtype = DType::f32;
  TensorArg x;               // (B, L, H, P)      dtype
  TensorArg dt;              // (B, L, H)         float32
  TensorArg A;               // (H,)              float32
  TensorArg B, C;            // (B, L, G, N)      dtype
  TensorArg D;               // (H, P)            float32, optional
  TensorArg z;               // (B, L, H, P)      dtype, optional
  TensorArg dt_bias;         // (H,)              float32, optional
  TensorArg initial_states;  // (B, H, P, N)      float32, optional; (nseq, H, P, N) with cu_seqlens
  TensorArg seq_idx;         // (B, L)            int32, optional (ignored with cu_seqlens)
  TensorArg cu_seqlens;      // (nseq + 1,)       int32, optional (batch 1): a reset at each sequence start
  TensorArg workspace;       // (threads, workspace_floats) float32
  bool dt_softplus = false;
  float dt_lo = 0.f, dt_hi = 0.f;
  // forward outputs
  TensorArg out;             // (B, L, H, P)      dtype
  TensorArg final_states;    // (B, H, P, N)      float32, optional
  TensorArg varlen_states;   // (nseq, H, P, N)   float32, optional
  // backward: incoming gradients and outputs (per-head partial sums are reduced in Python)
  TensorArg dout;            // (B, L, H, P)      dtype
  TensorArg dfinal;          // (B, H, P, N)      float32, optional
  TensorArg dvarlen;         // (nseq, H, P, N)   float32, optional
  TensorArg dx, dz;          // (B, L, H, P)      dtype (dz optional)
  TensorArg ddt;             // (B, L, H)         float32 (gradient wrt dt + dt_bias)
  TensorArg dA;              // (B, H)            float32
  TensorArg dB, dC;          // (B, L, H, N)      float32, per head
  TensorArg dD;              // (B, H, P)         float32, optional
  TensorArg dinitial;        // like initial_states, float32, optional
};

}  // namespace ssm
