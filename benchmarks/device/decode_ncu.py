"""Runs the streamed small-batch GEMV once at the mamba2-1.3b in_proj shape (8512 x 2048, plain) and
at mamba2-130m's (3352 x 768, add + RMSNorm prologue), batch 1, bf16, for ncu to profile
(benchmarks/device/decode.sh). A diagnostic: it times nothing and writes nothing."""
import sys
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from ssm.ops import norm_gemv as ng  # noqa: E402

DEV, BF16 = torch.device("cuda"), torch.bfloat16
with torch.no_grad():
    big = nn.Linear(2048, 8512, bias=False, device=DEV, dtype=BF16)
    ng.small_linear(big, torch.randn(1, 2048, device=DEV, dtype=BF16))
    small = nn.Linear(768, 3352, bias=False, device=DEV, dtype=BF16)
    x, res = torch.randn(1, 768, device=DEV, dtype=BF16), torch.randn(1, 768, device=DEV)
    ng.norm_linear(x, res, torch.ones(768, device=DEV, dtype=BF16), None, small)
    torch.cuda.synchronize()
