"""Runs each hot kernel of issues 5 and 6 once at its benchmark shape, for `ncu` to profile
(benchmarks/device/ncu.sh). A diagnostic: it times nothing and writes nothing."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import ssm.ops as ops  # noqa: E402

DEV, BF16 = torch.device("cuda"), torch.bfloat16
which = set(sys.argv[1].split(",")) if len(sys.argv) > 1 else {"scan", "ssd", "step", "conv"}


def leaves(*ts):
    return [t.clone().requires_grad_() for t in ts]


if "scan" in which:  # B8 D4096 L2048 N16 bf16, z, D, dt_bias, softplus
    B, D, L, N = 8, 4096, 2048, 16
    u, dl, z = (torch.randn(B, D, L, device=DEV, dtype=BF16) for _ in range(3))
    A = -torch.rand(D, N, device=DEV) - 0.5
    Bm, Cm = (torch.randn(B, 1, N, L, device=DEV, dtype=BF16) for _ in range(2))
    lv = leaves(u, dl * 0.5 - 1.0, A, Bm, Cm, torch.randn(D, device=DEV), z, torch.randn(D, device=DEV) * 0.1)
    y = ops.selective_scan(*lv[:7], lv[7], True)
    torch.autograd.backward(y, torch.randn_like(y))
if "ssd" in which:  # B8 L2048 H32 P64 N128 chunk 256 bf16
    B, L, H, P, N = 8, 2048, 32, 64, 128
    x = torch.randn(B, L, H, P, device=DEV, dtype=BF16)
    dt = torch.rand(B, L, H, device=DEV, dtype=BF16) * 0.5 - 2.0
    Bm, Cm = (torch.randn(B, L, 1, N, device=DEV, dtype=BF16) * 0.3 for _ in range(2))
    lv = leaves(x, dt, -torch.rand(H, device=DEV) - 0.5, Bm, Cm, torch.randn(H, device=DEV), torch.randn(H, device=DEV))
    y = ops.mamba_chunk_scan_combined(*lv[:5], 256, D=lv[5], dt_bias=lv[6], dt_softplus=True)
    torch.autograd.backward(y, torch.randn_like(y))
if "step" in which:  # Mamba-1 b64 D5120 N16; Mamba-2 b1 H80 P64 N128
    b, D, N = 64, 5120, 16
    s = torch.randn(b, D, N, device=DEV, dtype=BF16)
    x, dt, z = (torch.randn(b, D, device=DEV, dtype=BF16) for _ in range(3))
    Bm, Cm = (torch.randn(b, N, device=DEV, dtype=BF16) for _ in range(2))
    ops.selective_state_step(s, x, dt, -torch.rand(D, N, device=DEV), Bm, Cm, torch.randn(D, device=DEV), z,
                             torch.randn(D, device=DEV), True)
    b, H, P, N = 1, 80, 64, 128
    s = torch.randn(b, H, P, N, device=DEV, dtype=BF16)
    x, z = (torch.randn(b, H, P, device=DEV, dtype=BF16) for _ in range(2))
    dt = torch.randn(b, H, device=DEV, dtype=BF16).unsqueeze(-1).expand(b, H, P)
    A = (-torch.rand(H, device=DEV))[:, None, None].expand(H, P, N)
    Bm, Cm = (torch.randn(b, 1, N, device=DEV, dtype=BF16) for _ in range(2))
    ops.selective_state_step(s, x, dt, A, Bm, Cm, torch.randn(H, device=DEV)[:, None].expand(H, P), z,
                             torch.randn(H, device=DEV)[:, None].expand(H, P), True)
if "conv" in which:  # B8 D4096 L2048 W4 silu
    x = torch.randn(8, 4096, 2048, device=DEV, dtype=BF16)
    lv = leaves(x, torch.randn(4096, 4, device=DEV) * 0.5, torch.randn(4096, device=DEV))
    y = ops.dw_causal_conv(*lv, "silu")
    torch.autograd.backward(y, torch.randn_like(y))
torch.cuda.synchronize()
print("driver done:", sorted(which))
