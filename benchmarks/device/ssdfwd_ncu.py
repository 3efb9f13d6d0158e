"""Runs the SSD forward at (B8, L2048, H32, P64, N128, chunk 256, bf16) once on the default kernels and
once with each switch environment of ENVS, for ncu (benchmarks/device/ssdfwd.sh). Times nothing."""
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_ssd_cuda import fwd_fn, inputs  # noqa: E402

# the default kernels
ENVS = [{}]
fwd = fwd_fn(inputs(8, 2048))
for env in ENVS:
    os.environ.update(env)
    fwd()
    for k in env:
        del os.environ[k]
torch.cuda.synchronize()
print("driver done")
