// Depthwise causal conv decode update on the CPU: per (batch, channel) row, the window
// [last W-1 state entries, new tokens] is convolved, then the new tokens enter the state in
// place (shift register, or ring buffer at cache_seqlens). Any state strides (channels-last too).
#include <algorithm>
#include <vector>

#include "cpu/conv_rows.h"
#include "cpu/kernels.h"
#include "cpu/row_ops.h"
#include "cpu/runtime/parallel.h"

namespace ssm::cpu::SSM_ISA {
namespace {

int64_t wrap(int64_t i, int64_t n) { return ((i % n) + n) % n; }

// Appends the row's new tokens x (L) to its state st (S entries, stride ss).
template <typename T>
void push_tokens(T* st, int64_t ss, const T* x, int64_t xs, int64_t L, int64_t S, const int32_t* ring_pos) {
  if (ring_pos) {
    for (int64_t t = 0; t < L; ++t) st[wrap(*ring_pos + t, S) * ss] = x[t * xs];
    return;
  }
  const int64_t keep = std::max<int64_t>(0, S - L);  // old entries that stay, moved to the front
  for (int64_t i = 0; i < keep; ++i) st[i * ss] = st[(i + L) * ss];
  for (int64_t i = keep; i < S; ++i) st[i * ss] = x[(L - S + i) * xs];
}

template <typename T>
void update_row(const ConvUpdateParams& p, int64_t b, int64_t d, float* xs, float* out) {
  const int64_t L = p.seqlen, W = p.width, H = W - 1, S = p.state_len;
  T* y = mut_ptr<T>(p.out) + b * p.out.stride[0] + d * p.out.stride[1];
  const int64_t row = p.conv_state_indices.present() ? ptr<int32_t>(p.conv_state_indices)[b * p.conv_state_indices.stride[0]] : b;
  if (row < 0) {
    std::fill(out, out + L, 0.f);
    store_row(y, p.out.stride[2], out, L);
    return;
  }
  T* st = mut_ptr<T>(p.conv_state) + row * p.conv_state.stride[0] + d * p.conv_state.stride[1];
  const int64_t ss = p.conv_state.stride[2];
  const int32_t* ring = p.cache_seqlens.present() ? ptr<int32_t>(p.cache_seqlens) + b * p.cache_seqlens.stride[0] : nullptr;
  for (int64_t i = 0; i < H; ++i) xs[i] = to_float(st[(ring ? wrap(*ring - H + i, S) : S - H + i) * ss]);
  const T* x = ptr<T>(p.x) + b * p.x.stride[0] + d * p.x.stride[1];
  load_row(xs + H, x, p.x.stride[2], L);
  const float bias = p.bias.present() ? ptr<float>(p.bias)[d * p.bias.stride[0]] : 0.f;
  conv_row(out, xs, ptr<float>(p.weight) + d * p.weight.stride[0], bias, L, W);
  if (p.silu) silu_row(out, L);
  store_row(y, p.out.stride[2], out, L);
  push_tokens(st, ss, x, p.x.stride[2], L, S, ring);
}

constexpr int64_t kBlock = 64;  // channels per block of the one-token path

// One token (L = 1, shift register) for channels d0 .. d0 + n - 1 of batch row b, across channels:
// win (W x kBlock) holds tap k of each channel, so the taps and silu run as vector loops.
template <typename T>
void update_block(const ConvUpdateParams& p, int64_t b, int64_t d0, int64_t n, float* win, float* out) {
  const int64_t W = p.width, H = W - 1, S = p.state_len;
  T* y = mut_ptr<T>(p.out) + b * p.out.stride[0] + d0 * p.out.stride[1];
  const int64_t row = p.conv_state_indices.present() ? ptr<int32_t>(p.conv_state_indices)[b * p.conv_state_indices.stride[0]] : b;
  if (row < 0) {
    for (int64_t j = 0; j < n; ++j) y[j * p.out.stride[1]] = from_float<T>(0.f);
    return;
  }
  T* st = mut_ptr<T>(p.conv_state) + row * p.conv_state.stride[0] + d0 * p.conv_state.stride[1];
  const int64_t sd = p.conv_state.stride[1], ss = p.conv_state.stride[2], xd = p.x.stride[1];
  const T* x = ptr<T>(p.x) + b * p.x.stride[0] + d0 * xd;
  for (int64_t k = 0; k < H; ++k)
    for (int64_t j = 0; j < n; ++j) win[k * kBlock + j] = to_float(st[j * sd + (S - H + k) * ss]);
  for (int64_t j = 0; j < n; ++j) win[H * kBlock + j] = to_float(x[j * xd]);
  const float* w = ptr<float>(p.weight) + d0 * p.weight.stride[0];
  const float* bias = p.bias.present() ? ptr<float>(p.bias) + d0 * p.bias.stride[0] : nullptr;
  for (int64_t j = 0; j < n; ++j) out[j] = bias ? bias[j * p.bias.stride[0]] : 0.f;
  for (int64_t k = 0; k < W; ++k)
    for (int64_t j = 0; j < n; ++j) out[j] += w[j * p.weight.stride[0] + k] * win[k * kBlock + j];
  if (p.silu) silu_row(out, n);
  for (int64_t j = 0; j < n; ++j) y[j * p.out.stride[1]] = from_float<T>(out[j]);
  for (int64_t i = 0; i + 1 < S; ++i)  // the state shifts by one, the token enters last
    for (int64_t j = 0; j < n; ++j) st[j * sd + i * ss] = st[j * sd + (i + 1) * ss];
  for (int64_t j = 0; j < n; ++j) st[j * sd + (S - 1) * ss] = x[j * xd];
}

template <typename T>
void conv_update(const ConvUpdateParams& p, int nthreads) {
  const int64_t rows = p.batch * p.dim;
  const int threads = int(std::max<int64_t>(1, std::min<int64_t>(nthreads, rows * (p.seqlen + p.width) / 16384)));
  if (p.seqlen == 1 && !p.cache_seqlens.present()) {
    const int64_t blocks = (p.dim + kBlock - 1) / kBlock;
    parallel_for(p.batch * blocks, threads, [&](int64_t begin, int64_t end) {
      std::vector<float> win(p.width * kBlock), out(kBlock);
      for (int64_t r = begin; r < end; ++r) {
        const int64_t d0 = r % blocks * kBlock;
        update_block<T>(p, r / blocks, d0, std::min(kBlock, p.dim - d0), win.data(), out.data());
      }
    });
    return;
  }
  parallel_for(rows, threads, [&](int64_t begin, int64_t end) {
    std::vector<float> xs(p.width - 1 + p.seqlen), out(p.seqlen);
    for (int64_t r = begin; r < end; ++r) update_row<T>(p, r / p.dim, r % p.dim, xs.data(), out.data());
  });
}

}  // namespace

void dw_causal_conv_update(const ConvUpdateParams& p, int nthreads) {
  SSM_DTYPE_SWITCH(p.dtype, T, "dw_causal_conv_update", [&] { conv_update<T>(p, nthreads); });
}

}  // namespace ssm::cpu::SSM_ISA
