"""Runs the selective scan forward and backward once at the mamba-130m training shape in mamba_ssm's layout
(B 8, D 1536, L 2048, N 16, bf16, z, D, dt_bias, softplus) for `ncu` to profile (benchmarks/device/scan.sh).
A diagnostic: it times nothing and writes nothing.

    ncu -k regex:pair_bwd_kernel ... python3 benchmarks/device/scan_ncu.py [D]
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import ssm.ops as ops  # noqa: E402
from scan_time import inputs  # noqa: E402

D = int(sys.argv[1]) if len(sys.argv) > 1 else 1536
leaves = [t.detach().clone().requires_grad_() for t in inputs(8, D, 2048, 16, True)]
y = ops.selective_scan(*leaves[:7], leaves[7], True)
torch.autograd.backward(y, torch.randn_like(y))
torch.cuda.synchronize()
print("driver done: D", D)
