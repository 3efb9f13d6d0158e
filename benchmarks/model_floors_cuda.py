"""Floors of issue 6's end-to-end GPU work, from a model's shapes and a card's measured limits.

For each workload two lower bounds on the time (ms):
- ``strict``: max(all matrix FLOPs / matmul rate, bytes that must move at least once / copy rate):
  no implementation on that card can be faster;
- ``passes``: the matrix products at the matmul rate plus every other part of a layer (norms, conv,
  scan, gate) as its own pass over its inputs and outputs at the copy rate, plus the selective scan's
  exponentials at the MUFU rate: the floor of a design that runs those parts as separate kernels
  (the one every current implementation, ours and mamba_ssm's, uses).
Rates: the card's measured large copy (GB/s) and large bf16 matmul (TFLOP/s); MUFU ex2 = 16 per clock
per SM at the card's clock. Bytes assume bf16 activations, a float32 residual stream and bf16 states.
"""
from __future__ import annotations

import torch.nn as nn

BF16, F32 = 2, 4
CHUNK = 256


def _linear_macs(model) -> tuple[int, int]:
    """(multiply-adds per token of every nn.Linear except lm_head, lm_head's), from the modules."""
    body = sum(m.in_features * m.out_features for m in model.backbone.modules() if isinstance(m, nn.Linear))
    return body, model.lm_head.in_features * model.lm_head.out_features


def _layer_costs(mixer, d_model: int, T: int) -> tuple[float, float, float]:
    """(matrix FLOPs of the SSD / 0, bytes of the non-GEMM passes, ex2 count) of one layer over T tokens."""
    D, N = mixer.d_inner, mixer.d_state
    norm = T * d_model * (BF16 + F32 + F32 + BF16)  # add + norm: hidden, residual in; residual, normed out
    if hasattr(mixer, "nheads"):  # Mamba-2: conv over x, B, C; SSD; gated RMSNorm
        H, P, G = mixer.nheads, mixer.headdim, mixer.ngroups
        conv = T * (D + 2 * G * N) * 2 * BF16
        ssd = T * (2 * D + 2 * G * N + H) * BF16
        gate = T * D * 3 * BF16
        per_chunk = 2 * CHUNK * CHUNK * N * G + H * (2 * CHUNK * CHUNK * P + 4 * CHUNK * P * N)
        return T / CHUNK * per_chunk, norm + conv + ssd + gate, 0.0
    conv = T * D * 2 * BF16
    scan = T * (4 * D + 2 * N) * BF16  # u, delta, z in; y out; B, C in
    return 0.0, norm + conv + scan, float(T * D * N)


def _state_bytes(mixer) -> int:
    """Bytes of one sequence's decode state in one layer (conv state + SSM state, bf16)."""
    conv = getattr(mixer, "d_ssm", mixer.d_inner) + 2 * getattr(mixer, "ngroups", 0) * mixer.d_state
    return (conv * (mixer.d_conv - 1) + mixer.d_inner * mixer.d_state) * BF16


def floors(model, copy_gbs: float, matmul_tflops: float, clock_ghz: float, sms: int,
           batch: int = 8, L: int = 2048) -> dict:
    """workload -> {"strict": ms, "passes": ms} for prefill, train, decode b1 and b64."""
    bw, peak, mufu = copy_gbs * 1e9, matmul_tflops * 1e12, 16 * sms * clock_ghz * 1e9
    d_model, T = model.lm_head.in_features, batch * L
    mixers = [layer.mixer for layer in model.backbone.layers]
    body, head = _linear_macs(model)
    weights = sum(p.numel() for p in model.parameters()) * BF16
    costs = [_layer_costs(m, d_model, T) for m in mixers]
    ssd_flops, pass_bytes, ex2 = (sum(c[i] for c in costs) for i in range(3))
    gemm = 2 * T * (body + head)
    logits = T * head // d_model * BF16
    prefill_passes = (gemm + ssd_flops) / peak + (pass_bytes + logits) / bw + ex2 / mufu
    out = {"prefill 8x2048": dict(strict=max((gemm + ssd_flops) / peak, (weights + logits) / bw),
                                  passes=prefill_passes),
           # the backward's products are twice the forward's; its passes at least the forward's again
           "train step 8x2048": dict(strict=3 * (gemm + ssd_flops) / peak,
                                     passes=3 * (gemm + ssd_flops) / peak + 2 * (pass_bytes + logits) / bw
                                     + 2 * ex2 / mufu)}
    state = sum(_state_bytes(m) for m in mixers)
    for b in (1, 64):
        moved = weights + 2 * b * state  # weights read once; states read and written
        out[f"decode b{b} per {'token' if b == 1 else 'step'}"] = dict(strict=moved / bw, passes=moved / bw)
    return {k: {kk: v * 1e3 for kk, v in d.items()} for k, d in out.items()}
