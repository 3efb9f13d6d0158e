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
  int64_t workspace_rows = 0;    // threads that get a workspace row (and a dB/dC slice)
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
  TensorArg workspace;       // (workspace_rows, workspace_floats) float32
  bool dt_softplus = false;
  float dt_lo = 0.f, dt_hi = 0.f;
  // forward outputs
  TensorArg out;             // (B, L, H, P)      dtype
  TensorArg final_states;    // (B, H, P, N)      float32, optional
  TensorArg varlen_states;   // (nseq, H, P, N)   float32, optional
  // backward: incoming gradients and outputs (per-head or per-thread partial sums are reduced in Python)
  TensorArg dout;            // (B, L, H, P)      dtype
  TensorArg dfinal;          // (B, H, P, N)      float32, optional
  TensorArg dvarlen;         // (nseq, H, P, N)   float32, optional
  TensorArg dx, dz;          // (B, L, H, P)      dtype (dz optional)
  TensorArg ddt;             // (B, L, H)         float32 (gradient wrt dt + dt_bias)
  TensorArg dA;              // (B, H)            float32
  TensorArg dB, dC;          // (rows * B, L, G, N) float32, per thread, accumulated (start at zero)
  TensorArg dD;              // (B, H, P)         float32, optional
  TensorArg dinitial;        // like initial_states, float32, optional
  int64_t chunk = 0;         // CUDA: tokens per chunk of the chunked algorithm (64, 128, 192 or 256)
  bool inject_unit = false;  // CUDA: inject x_t B_t^T without the Δ_t factor (the backward's adjoint scans)
};

}  // namespace ssm

namespace ssm {

// Depthwise causal conv backward: dx, dweight, dbias, dinitial_states from dy (and the
// gradient of final_states); silu and the conv are recomputed from x.
struct ConvBwdParams {
  ConvParams fwd;            // x, weight, bias, seq_idx, initial_states, silu; out/final unused
  TensorArg dout;            // (B, D, L)          dtype
  TensorArg dfinal_states;   // (B, D, W-1)        dtype, optional
  TensorArg dx;              // (B, D, L)          dtype
  TensorArg dweight;         // (D, W)             float32
  TensorArg dbias;           // (D,)               float32, optional
  TensorArg dinitial_states; // (B, D, W-1)        dtype, optional
};

// One decode update of the causal conv with a rolling state of length S >= W-1, in place.
// Row b uses state row conv_state_indices[b] (negative: padding, y = 0, state untouched).
// Without cache_seqlens the state is a shift register; with it a ring buffer where token t
// goes to (cache_seqlens[b] + t) mod S.
struct ConvUpdateParams {
  int64_t batch = 0, dim = 0, seqlen = 0, width = 0, state_batch = 0, state_len = 0;
  DType dtype = DType::f32;        // x, conv_state, out
  TensorArg x;                     // (B, D, L)
  TensorArg conv_state;            // (Bs, D, S)  any strides
  TensorArg weight;                // (D, W)      float32
  TensorArg bias;                  // (D,)        float32, optional
  TensorArg conv_state_indices;    // (B,)        int32, optional
  TensorArg cache_seqlens;         // (B,)        int32, optional
  TensorArg out;                   // (B, D, L)
  bool silu = false;
};

// Residual add + LayerNorm / RMSNorm over rows of N: s = x (+ residual),
// y = norm(s) * weight (+ bias); norm(s) = (s - mean) * rstd, or s * rstd for RMSNorm.
struct LayerNormParams {
  int64_t rows = 0, cols = 0;
  DType dtype = DType::f32;               // x, out
  DType residual_dtype = DType::f32;      // residual
  DType residual_out_dtype = DType::f32;  // residual_out
  TensorArg x;             // (M, N)
  TensorArg weight;        // (N,)   float32
  TensorArg bias;          // (N,)   float32, optional
  TensorArg residual;      // (M, N) optional
  TensorArg out;           // (M, N)
  TensorArg residual_out;  // (M, N) optional: s
  float eps = 1e-5f;
  bool is_rms = false;
};

// Its backward from s (the normalized input): ds = d norm(s) (+ dresidual_out), written to dx
// and dresidual in their dtypes; dweight and dbias as one partial row per part, summed by the caller.
struct LayerNormBwdParams {
  int64_t rows = 0, cols = 0, parts = 0;
  DType dtype = DType::f32;               // s
  DType dout_dtype = DType::f32, dres_dtype = DType::f32, dx_dtype = DType::f32, dresidual_dtype = DType::f32;
  TensorArg s;              // (M, N)
  TensorArg weight;         // (N,)      float32
  TensorArg bias;           // (N,)      float32, optional (only whether it is present matters)
  TensorArg dout;           // (M, N)
  TensorArg dresidual_out;  // (M, N)    optional
  TensorArg dx;             // (M, N)
  TensorArg dresidual;      // (M, N)    optional
  TensorArg dweight_parts;  // (parts, N) float32
  TensorArg dbias_parts;    // (parts, N) float32, optional
  float eps = 1e-5f;
  bool is_rms = false;
};

// Gated norm of Mamba-2 over groups of `group` features: with z, norm_before_gate:
// y = (norm(x) * w + b) * silu(z); otherwise y = norm(x * silu(z)) * w + b.
struct GatedNormParams {
  int64_t rows = 0, cols = 0, group = 0, parts = 0;
  DType dtype = DType::f32;     // x, out, dx
  DType z_dtype = DType::f32;   // z, dz
  DType dout_dtype = DType::f32;
  TensorArg x;              // (M, N)
  TensorArg weight;         // (N,)   float32
  TensorArg bias;           // (N,)   float32, optional
  TensorArg z;              // (M, N) optional
  TensorArg out;            // (M, N) forward
  TensorArg dout;           // (M, N) backward
  TensorArg dx, dz;         // (M, N) backward (dz when z)
  TensorArg dweight_parts;  // (parts, N) float32, backward
  TensorArg dbias_parts;    // (parts, N) float32, backward, optional
  float eps = 1e-6f;
  bool norm_before_gate = true, is_rms = true;
};

// Mamba-1 selective scan over L, forward and backward, per (batch, channel):
//   dt = delta + dt_bias (softplus if asked); h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t;
//   out_t = (C_t . h_t + D u_t) * silu(z_t). Segments restart the state: at seq_idx changes, or at
//   each cu_seqlens start (batch 1), from initial_state[row] (rows: batch, or sequence with cu_seqlens).
// Work is split in tasks (batch, group, slice of the group's channels); per-slice / per-batch partial
// gradients are float32 workspaces that the op layer sums.
struct SelectiveScanParams {
  int64_t batch = 0, dim = 0, seqlen = 0, dstate = 0, ngroups = 1, nslices = 1, nrows = 0;
  DType dtype = DType::f32;
  TensorArg u, delta;          // (B, D, L)          dtype
  TensorArg A;                 // (D, N)             float32
  TensorArg B, C;              // (B, G, N, L) dtype when B_var / C_var, else (D, N) float32
  bool B_var = true, C_var = true;
  TensorArg D;                 // (D,)               float32, optional
  TensorArg z;                 // (B, D, L)          dtype, optional
  TensorArg dt_bias;           // (D,)               float32, optional
  TensorArg initial_state;     // (rows, D, N)       float32, optional
  TensorArg seq_idx;           // (B, L)             int32, optional
  TensorArg cu_seqlens;        // (rows + 1,)        int32, optional (batch 1)
  TensorArg out;               // (B, D, L)          dtype
  TensorArg last_state;        // (rows, D, N)       float32, optional
  bool softplus = false;
  // backward
  TensorArg dout;              // (B, D, L)          dtype
  TensorArg dlast;             // (rows, D, N)       float32, optional
  TensorArg du, ddelta, dz;    // (B, D, L)          dtype (dz when z)
  TensorArg dA;                // (B, D, N)          float32, per batch
  TensorArg dB, dC;            // (S*B, G, N, L) float32 per slice when variable, else (B, D, N) float32
  TensorArg dD, ddt_bias;      // (B, D)             float32, per batch, optional
  TensorArg dinitial_state;    // (rows, D, N)       float32, optional
  TensorArg chunk_states;      // (B, D, nchunks, N) float32 workspace of the CUDA backward (L > its chunk)
  bool chunk_states_filled = false;  // backward: the forward already wrote chunk_states (CUDA thread kernels)
};

// One decode step, Mamba-2 layout (Mamba-1: H = D heads of size P = 1), state updated in place:
//   dt = dt + dt_bias (softplus if asked); state = exp(dt A) state + dt x B; y = (C . state + D x) * silu(z).
// Row b uses state row state_batch_indices[b] (negative: padding, y = 0, no state touched).
struct StateStepParams {
  int64_t batch = 0, nheads = 0, headdim = 0, dstate = 0, ngroups = 1;
  DType state_dtype = DType::f32, dtype = DType::f32;
  TensorArg state;               // (Bs, H, P, N)    state_dtype
  TensorArg x, dt;               // (B, H, P)        dtype (dt may be stride 0 along P)
  TensorArg A;                   // (H, P, N)        float32 (any strides; stride 0 = tied)
  TensorArg B, C;                // (B, G, N)        dtype
  TensorArg D, dt_bias;          // (H, P)           float32, optional
  TensorArg z;                   // (B, H, P)        dtype, optional
  TensorArg state_batch_indices; // (B,)             int32, optional
  TensorArg out;                 // (B, H, P)        dtype
  bool softplus = false;
  // CUDA only, Mamba-1 layout (P = 1): with dt_proj, dt is the low-rank dt_in (B, R) (strides of
  // its batch and rank dims in dt.stride[0], [1]) and dt[b, h] = dot(dt_proj[h, :], dt_in[b, :]),
  // rounded to dtype as a separate projection's output is.
  int64_t dt_rank = 0;
  TensorArg dt_proj;             // (H, R)           dtype, optional
};

}  // namespace ssm

namespace ssm {

// One fused decode step of a Mamba-2 layer (CUDA only): the depthwise conv update of the raw
// xBC row (channels [x (H*P), B (G*N), C (G*N)]) on its rolling conv_state, then the state step
// of StateStepParams with per-head dt, dt_bias and A. Blocks of one (batch row, group) meet at
// counters[b * G + g] (zero between launches; the last block writes the B/C conv states and
// resets it), so every block reads the B/C history before any block rewrites it.
struct ConvStateStepParams {
  int64_t batch = 0, nheads = 0, headdim = 0, dstate = 0, ngroups = 1, width = 0, state_len = 0;
  DType state_dtype = DType::f32, dtype = DType::f32;
  TensorArg xbc;          // (B, H*P + 2*G*N)     dtype, raw conv input
  TensorArg conv_state;   // (B, H*P + 2*G*N, S)  dtype, any strides, S >= W - 1
  TensorArg conv_weight;  // (H*P + 2*G*N, W)     float32
  TensorArg conv_bias;    // (H*P + 2*G*N,)       float32, optional
  TensorArg state;        // (B, H, P, N)         state_dtype, contiguous along N, 16-byte aligned rows
  TensorArg dt;           // (B, H)               dtype
  TensorArg A;            // (H,)                 float32
  TensorArg D;            // (H, P)               float32, optional (stride 0 along P: per head)
  TensorArg dt_bias;      // (H,)                 float32, optional
  TensorArg z;            // (B, H, P)            dtype, optional
  TensorArg counters;     // (B * G,)             int32, zero
  TensorArg out;          // (B, H, P)            dtype
  bool softplus = false, silu = false;
  bool early = false;     // the stream's previous kernel writes neither state: read them before it ends (PDL)
};

}  // namespace ssm

namespace ssm {

// Small-batch linear layer with an optional gated RMSNorm on its input (CUDA only; decoding):
//   mode 0: in = x;  mode 1: in = rmsnorm_g(x * silu(z)) * norm_weight;
//   mode 2: in = rmsnorm_g(x) * norm_weight * silu(z)   (rmsnorm_g over groups of group_size)
//   modes 3, 4: in = rmsnorm / layernorm(x + residual) * norm_weight (+ norm_bias) (see below)
//   out[b, m] = sum_k weight[m, k] * in[b, k] (+ bias[m]); `in` rounded to dtype first, as the
//   separate gated norm's output is.
struct NormGemvParams {
  int64_t batch = 0, in_features = 0, out_features = 0, group_size = 0;
  int mode = 0;
  float eps = 0.f;
  DType dtype = DType::f32;
  TensorArg x;            // (B, K)  dtype
  TensorArg z;            // (B, K)  dtype, modes 1 and 2
  TensorArg norm_weight;  // (K,)    float32, modes 1 and 2
  TensorArg weight;       // (M, K)  dtype, contiguous along K, 16-byte aligned rows
  TensorArg bias;         // (M,)    float32, optional
  TensorArg out;          // (B, M)  dtype
  // modes 3 (RMSNorm) and 4 (LayerNorm): s = x + residual, residual_out = s (written by block 0),
  // in = norm(s) * norm_weight (+ norm_bias) over the whole row (a prenorm block's add + norm)
  TensorArg residual;      // (B, K)  float32, optional
  TensorArg residual_out;  // (B, K)  float32, modes 3 and 4
  TensorArg norm_bias;     // (K,)    float32, optional (mode 4)
  // modes 3 and 4 with conv_rows = C > 0 (Mamba-1's in_proj feeding its conv update): the outputs of
  // rows m < C (the x half), rounded to dtype, go on through the depthwise conv update of channel m:
  // conv_out = silu?(conv), conv_state shifted left by one with the output appended
  int64_t width = 0, state_len = 0, conv_rows = 0;
  bool silu = false;
  TensorArg conv_state;    // (B, C, S) dtype, any strides, 1 <= S <= 4, S >= W - 1
  TensorArg conv_weight;   // (C, W)    float32, W <= 4
  TensorArg conv_bias;     // (C,)      float32, optional
  TensorArg conv_out;      // (B, C)    dtype
};

}  // namespace ssm

namespace ssm {

// Small-batch linear layer on the CPU (decoding): out[b, m] = sum_k weight[m, k] * x[b, k] (+ bias[m]),
// float32 accumulation; weight rows are read once for the whole batch.
struct GemvParams {
  int64_t batch = 0, in_features = 0, out_features = 0;
  DType dtype = DType::f32;
  TensorArg x;       // (B, K)  dtype
  TensorArg weight;  // (M, K)  dtype, unit stride along K
  TensorArg bias;    // (M,)    float32, optional
  TensorArg out;     // (B, M)  dtype
};

}  // namespace ssm

namespace ssm {

// One decoded token through a Mamba-1 layer's inner part on the CPU (between in_proj and out_proj):
// xc = silu?(depthwise conv of x on the rolling conv_state), x_dbl = x_proj_weight @ xc,
// dt = softplus(dt_proj_weight @ x_dbl[:R] + dt_bias), the selective state step with B = x_dbl[R:R+N],
// C = x_dbl[R+N:], out = (C . h + D xc) * silu(z). xc, x_dbl and dt are rounded to dtype as the
// separate ops' outputs are; both states are updated in place (float32 compute).
struct Mamba1DecodeParams {
  int64_t batch = 0, dim = 0, dstate = 0, dt_rank = 0, width = 0, state_len = 0;
  DType dtype = DType::f32, state_dtype = DType::f32;
  bool silu = true;
  TensorArg x, z;            // (B, D)        dtype (z optional)
  TensorArg conv_state;      // (B, D, S)     dtype, any strides, S >= W - 1
  TensorArg conv_weight;     // (D, W)        float32
  TensorArg conv_bias;       // (D,)          float32, optional
  TensorArg x_proj_weight;   // (R + 2N, D)   dtype, unit stride along D
  TensorArg dt_proj_weight;  // (D, R)        dtype, unit stride along R
  TensorArg dt_bias, D;      // (D,)          float32, optional
  TensorArg A;               // (D, N)        float32
  TensorArg ssm_state;       // (B, D, N)     state_dtype, any strides
  TensorArg out;             // (B, D)        dtype
};

// The channels-last conv backward (CUDA): each block writes its partial dweight / dbias rows to
// the workspace, which a second kernel reduces over the parts in a fixed order (no atomics).
struct ConvBwdClParams {
  ConvBwdParams bwd;
  TensorArg workspace;       // (parts, W+1, D)    float32: dweight taps, then dbias
  int64_t parts = 0;         // batch * ceil(L / 128)
};

}  // namespace ssm

namespace ssm {

// One decoded token through a whole prenorm Mamba-1 block on the CPU (add + norm, in_proj, the
// inner part of Mamba1DecodeParams, out_proj) in one call: s = hidden (+ residual), residual = s,
// normed = norm(s) rounded to dtype, xz = in_proj(normed), y = inner(xz[:, :D], xz[:, D:]),
// hidden = out_proj(y). normed, xz and y are scratch the caller owns (inner.x, inner.z, inner.out
// point into xz and y); hidden and residual are updated in place.
struct Mamba1BlockDecodeParams {
  Mamba1DecodeParams inner;
  int64_t d_model = 0;
  bool add_residual = true, is_rms = false;
  float eps = 1e-5f;
  TensorArg hidden;           // (B, d_model)   dtype: the block's input, then its output
  TensorArg residual;         // (B, d_model)   float32
  TensorArg norm_weight;      // (d_model,)     float32
  TensorArg norm_bias;        // (d_model,)     float32, optional
  TensorArg normed;           // (B, d_model)   dtype
  TensorArg in_proj_weight;   // (2D, d_model)  dtype, unit stride along d_model
  TensorArg in_proj_bias;     // (2D,)          float32, optional
  TensorArg xz;               // (B, 2D)        dtype
  TensorArg out_proj_weight;  // (d_model, D)   dtype, unit stride along D
  TensorArg out_proj_bias;    // (d_model,)     float32, optional
};

}  // namespace ssm

namespace ssm {

// The SSD backward's last sums (CUDA, after ssd_chunk_scan_bwd), in a fixed order (no atomics):
// dB / dC = the sum of a group's head-set partials, in the input dtype; dA, dD, ddt_bias the sums
// over rows, chunks and tokens of the kernel's float32 partials.
struct SsdBwdReduceParams {
  int64_t batch = 0, seqlen = 0, nheads = 0, headdim = 0, ngroups = 0, dstate = 0;
  int64_t sets = 0;          // head sets (a multiple of ngroups)
  int64_t dA_parts = 0;      // partials of dA per (batch, head)
  int64_t dD_rows = 0;       // partial rows of dD
  DType dtype = DType::f32;  // dB, dC
  TensorArg dB_sets, dC_sets;  // (B, L, sets, N)        float32
  TensorArg dB, dC;            // (B, L, G, N)           dtype
  TensorArg dA_part;           // (B * H, dA_parts)      float32
  TensorArg dA;                // (H,)                   float32
  TensorArg dD_part;           // (dD_rows, H, P)        float32, optional
  TensorArg dD;                // (H, P)                 float32, with dD_part
  TensorArg ddt;               // (B, L, H)              float32
  TensorArg ddt_bias;          // (H,)                   float32, optional
};

}  // namespace ssm

namespace ssm {

// One Mamba-1 decode step with dt_proj folded in, for small batches (CUDA only; proj_state_step):
// dt = dt_in @ dt_proj^T (rounded to dtype), then the selective state step, state updated in place.
struct M1DecodeStepParams {
  int64_t batch = 0, dim = 0, dstate = 0, rank = 0;
  DType state_dtype = DType::f32, dtype = DType::f32;
  TensorArg state;    // (B, D, N)  state_dtype, unit stride along N
  TensorArg x;        // (B, D)     dtype
  TensorArg dt_in;    // (B, R)     dtype
  TensorArg dt_proj;  // (D, R)     dtype, rows contiguous and 16-byte aligned
  TensorArg A;        // (D, N)     float32
  TensorArg B, C;     // (B, N)     dtype
  TensorArg D;        // (D,)       float32, optional
  TensorArg z;        // (B, D)     dtype, optional
  TensorArg dt_bias;  // (D,)       float32, optional
  TensorArg out;      // (B, D)     dtype
  bool softplus = true;
  bool early = false;  // the stream's previous kernel does not write state: read it before that kernel ends (PDL)
};

// Matrix product on the CPU (ssm/ops/cpu/gemm.cpp): c[b] = a[b] @ b[b] for each batch item, float32
// accumulation; operands of one dtype (widened to float32 as they are packed), c float32 or that
// dtype (rounded once). Any strides (a batch stride 0 broadcasts a weight). kc / mc / nc: the cache
// blocks (0 = the kernel's defaults).
struct GemmParams {
  int64_t batch = 0, M = 0, N = 0, K = 0;
  int64_t kc = 0, mc = 0, nc = 0;
  DType dtype = DType::f32;      // a, b
  DType out_dtype = DType::f32;  // c
  TensorArg a;  // (batch, M, K)
  TensorArg b;  // (batch, K, N)
  TensorArg c;  // (batch, M, N)
};

// Batch decode conv update (ssm/ops/cuda/batch_decode.cu): one token on a batch of Mamba-2's channels-last conv
// cache rows (B, D, 4), unit stride along D: out = act(bias + sum_k w[k] * [state[1:], x][k]), state <- [state[1:], x].
struct BatchConvParams {
  int64_t batch = 0, dim = 0, width = 0;
  DType dtype = DType::f32;  // x, conv_state, out
  TensorArg x;           // (B, D)
  TensorArg conv_state;  // (B, D, 4)  unit stride along D
  TensorArg weight;      // (D, W)     float32
  TensorArg bias;        // (D,)       float32, optional
  TensorArg out;         // (B, D)
  bool silu = false;
};

// Narrow projection of a decode batch (ssm/ops/cuda/batch_decode.cu): out (B, nout) = x (B, K) @ weight (nout, K)^T,
// float32 sums; rows with unit stride along K, 16-byte aligned, K a multiple of 8.
struct BatchLinearParams {
  int64_t batch = 0, K = 0, nout = 0;
  DType dtype = DType::f32;  // x, weight, out
  TensorArg x;       // (B, K)
  TensorArg weight;  // (nout, K)
  TensorArg out;     // (B, nout)
};

}  // namespace ssm
