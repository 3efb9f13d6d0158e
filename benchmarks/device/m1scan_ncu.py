"""Runs the selective scan forward once at the mamba-1.4b prefill shape in mamba_ssm's layout (B 8, D 4096,
L 2048, N 16, bf16, z, D, dt_bias, softplus) with the kernel form of SSM_SCAN_ROWS (default w) for `ncu` to
profile (benchmarks/device/m1scan.sh). A diagnostic: it times nothing and writes nothing.

    ncu -k regex:fwd_wide_kernel ... python3 benchmarks/device/m1scan_ncu.py [D]
"""
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import ssm.ops as ops  # noqa: E402
from scan_time import inputs  # noqa: E402

os.environ.setdefault("SSM_SCAN_ROWS", "w")
D = int(sys.argv[1]) if len(sys.argv) > 1 else 4096
args = inputs(8, D, 2048, 16, True)
with torch.no_grad():
    ops.selective_scan(*args[:7], args[7], True)
torch.cuda.synchronize()
print("driver done: D", D, "form", os.environ["SSM_SCAN_ROWS"])
