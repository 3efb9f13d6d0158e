"""Rotary position embeddings for MHA (the math of ``flash_attn``'s RotaryEmbedding, in PyTorch).

The first ``dim`` features of every query/key head are rotated by position-dependent angles
``pos * inv_freq``; ``interleaved`` rotates pairs (0,1), (2,3), ... (GPT-J layout), otherwise the
two halves (x1, x2) = (x[:dim/2], x[dim/2:]) (GPT-NeoX layout). Positions start at a per-call
offset: an int, or a (B,) tensor (one offset per sequence, as in CUDA-graph decoding)."""
from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor


def rotary_angles(positions: Tensor, inv_freq: Tensor) -> tuple[Tensor, Tensor]:
    """positions (B or 1, L) -> cos, sin (B or 1, L, 1, dim/2) in float32."""
    angles = positions.float()[..., None] * inv_freq.float()
    return angles.cos()[:, :, None], angles.sin()[:, :, None]


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool = False) -> Tensor:
    """x (B, L, H, D) -> same, the first 2 * cos.shape[-1] features rotated (float32 math)."""
    rot = 2 * cos.shape[-1]
    xr, rest = x[..., :rot].float(), x[..., rot:]
    if interleaved:
        x1, x2 = xr[..., 0::2], xr[..., 1::2]
        out = torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).flatten(-2)
    else:
        x1, x2 = xr.chunk(2, dim=-1)
        out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    return torch.cat([out.to(x.dtype), rest], dim=-1)


class RotaryEmbedding(nn.Module):
    """``RotaryEmbedding(dim, base=10000.0, interleaved=False, device=None)``; ``inv_freq`` is a
    non-persistent buffer (no state_dict key), as in flash_attn."""

    def __init__(self, dim: int, base: float = 10000.0, interleaved: bool = False, device=None):
        super().__init__()
        if dim % 2:
            raise ValueError(f"dim: rotary dimension must be even, got {dim}")
        self.dim = dim
        self.base = float(base)
        self.interleaved = interleaved
        inv_freq = 1.0 / (self.base ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, q: Tensor, k: Tensor, seqlen_offset: int | Tensor = 0,
                positions: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """q (B, L, H, D), k (B, L, Hkv, D) -> rotated (q, k). Positions are seqlen_offset + t, or
        ``positions`` (B or 1, L) when given (e.g. restarting at every packed sequence)."""
        if positions is None:
            t = torch.arange(q.shape[1], device=q.device)
            positions = t[None] + (seqlen_offset[:, None] if isinstance(seqlen_offset, Tensor) else seqlen_offset)
        cos, sin = rotary_angles(positions, self.inv_freq)
        return apply_rotary(q, cos, sin, self.interleaved), apply_rotary(k, cos, sin, self.interleaved)
