"""Runs the Mamba-1 b64 state step (D 5120, N 16, bf16) in each form (SSM_STEP_M1_FORM: "" the default, old) once,
then the Mamba-2 b1 step, for `ncu` to profile (benchmarks/device/step.sh). A diagnostic: it times nothing and writes nothing.

    python3 benchmarks/device/step_ncu.py [forms: default,old]
"""
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import ssm.ops as ops  # noqa: E402

DEV, BF16 = torch.device("cuda"), torch.bfloat16
forms = sys.argv[1].split(",") if len(sys.argv) > 1 else ["default", "old"]
b, D, N = 64, 5120, 16
s = torch.randn(b, D, N, device=DEV, dtype=BF16)
x, dt, z = (torch.randn(b, D, device=DEV, dtype=BF16) for _ in range(3))
Bm, Cm = (torch.randn(b, N, device=DEV, dtype=BF16) for _ in range(2))
A, Dp, bias = -torch.rand(D, N, device=DEV), torch.randn(D, device=DEV), torch.randn(D, device=DEV)
for form in forms:
    os.environ["SSM_STEP_M1_FORM"] = "" if form == "default" else form
    ops.selective_state_step(s, x, dt, A, Bm, Cm, Dp, z, bias, True)
    torch.cuda.synchronize()
os.environ.pop("SSM_STEP_M1_FORM")
b, H, P, N = 1, 80, 64, 128
s = torch.randn(b, H, P, N, device=DEV, dtype=BF16)
x, z = (torch.randn(b, H, P, device=DEV, dtype=BF16) for _ in range(2))
dt = torch.randn(b, H, device=DEV, dtype=BF16).unsqueeze(-1).expand(b, H, P)
A = (-torch.rand(H, device=DEV))[:, None, None].expand(H, P, N)
Bm, Cm = (torch.randn(b, 1, N, device=DEV, dtype=BF16) for _ in range(2))
ops.selective_state_step(s, x, dt, A, Bm, Cm, torch.randn(H, device=DEV)[:, None].expand(H, P), z,
                         torch.randn(H, device=DEV)[:, None].expand(H, P), True)
torch.cuda.synchronize()
print("driver done:", forms)
