"""Device round of engineer wgmma (session 10, issue 6): the SSD chunk output and chunk state on wgmma (the default on
sm_90a; SSM_SSD_WGMMA=0 takes the mma.sync kernels of the other architectures).

In one process (torch starts slowly there): y with wgmma against y with SSM_SSD_WGMMA=0 on the same inputs, profiler
kernel sums of both side by side (B8 L2048 H32, B1 L8192 H32, B8 L2048 H64 = mamba2-1.3b's heads; P64 N128 chunk 256
bf16, D, dt_bias, softplus), then the GPU SSD tests on the default (every CUDA row of test_ssd_cuda / test_ssd /
test_ssd_split, the Mamba-2 rows of test_consistency_cuda / test_lm), then test_ssd_cuda's forward rows with
SSM_SSD_WGMMA=0 while the time lasts.

    python benchmarks/device/wgmma_round.py OUT.json [--budget S]   (summary lines on stderr)
"""
from __future__ import annotations

import json
import os
import sys
import time

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)
from ssdfwd_tests import FWD_CUDA, Count  # noqa: E402

SWITCH = "SSM_SSD_WGMMA"
START = time.time()
MODES = [("wgmma", "1"), ("mma.sync", "0")]
DEFAULT_TESTS = [("tests/ops/test_ssd_cuda.py", "cuda"), ("tests/ops/test_ssd.py", "cuda"),
                 ("tests/ops/test_ssd_split.py", "cuda"),
                 ("tests/modules/test_consistency_cuda.py tests/models/test_lm.py", "cuda and (mamba2 or Mamba2 or ssd)")]
FALLBACK_TESTS = [("tests/ops/test_ssd_cuda.py", FWD_CUDA)]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def with_switch(value, fn):
    os.environ[SWITCH] = value
    try:
        return fn()
    finally:
        del os.environ[SWITCH]


def run_tests(res, name, value, selections, budget):
    for paths, expr in selections:
        if time.time() - START > budget:
            log(f"tests: budget spent before {name} {paths}")
            return
        count = Count()
        args = paths.split() + ["--maxfail=9", "-q", "-p", "no:cacheprovider", "-k", expr]
        rc = with_switch(value, lambda: pytest.main(args, plugins=[count]))
        res["tests"].append(dict(mode=name, file=paths, rc=int(rc), **count.n, first=count.first))
        log(f"SUMMARY {name} {paths}: rc={int(rc)} {count.n} {count.first}")


def compare_y(res):
    """y with wgmma against y with the mma.sync kernels on the same inputs (relative to max |y|)."""
    from bench_ssd_cuda import fwd_fn, inputs
    for B, L, H in [(2, 1000, 8), (1, 2048 + 37, 4)]:
        fwd = fwd_fn(inputs(B, L, H=H))
        y0 = with_switch("0", fwd).float().clone()
        for name, value in MODES[:1]:
            y1 = with_switch(value, fwd).float().clone()
            rel = ((y1 - y0).abs().max() / y0.abs().max()).item()
            fin = bool(torch.isfinite(y1).all())
            res["y_diff"].append(dict(mode=name, B=B, L=L, H=H, rel_max_diff=rel, finite=fin))
            log(f"y {name} vs mma.sync B{B} L{L} H{H}: rel max diff {rel:.3e}, finite {fin}")


def timings(res):
    import ssm.ops as ops
    from bench_ssd_cuda import fwd_fn, inputs
    from ssdfwd_time import kernels
    poison, ops._kernels.POISON_OUTPUTS = ops._kernels.POISON_OUTPUTS, False
    for B, L, H in [(8, 2048, 32), (1, 8192, 32), (8, 2048, 64)]:
        fwd = fwd_fn(inputs(B, L, H=H))
        row = dict(case=f"ssd fwd B{B} L{L} H{H}")
        for name, value in MODES:
            total, table = with_switch(value, lambda: kernels(fwd, iters=5))
            row[name] = dict(gpu_ms=total, kernels=table)
        res["timings"].append(row)
        out = [f"{row['case']}: gpu ms " + " / ".join(f"{n} {row[n]['gpu_ms']:.4f}" for n, _ in MODES)]
        for name, _ in MODES:
            for k, v in row[name]["kernels"].items():
                if "chunk_scan" in k or "chunk_cb" in k or "chunk_state" in k:
                    out.append(f"  {name}: {v * 1e3:7.1f} us {k.replace('void ssm::cuda::ssd::', '')[:50]}")
        log("\n".join(out))
    ops._kernels.POISON_OUTPUTS = poison


def main():
    out = sys.argv[1]
    budget = float(sys.argv[sys.argv.index("--budget") + 1]) if "--budget" in sys.argv else 1e9
    res = dict(device=torch.cuda.get_device_name(), tests=[], y_diff=[], timings=[])
    steps = [compare_y, timings, lambda r: run_tests(r, "wgmma", "1", DEFAULT_TESTS, budget),
             lambda r: run_tests(r, "mma.sync", "0", FALLBACK_TESTS, budget)]
    for step in steps:
        try:
            step(res)
        except Exception as e:  # keep what the earlier steps found
            log(f"step failed: {type(e).__name__}: {str(e)[:300]}")
        with open(out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
