"""Device round of engineer wgmma (session 10, issue 6): the SSD forward's chunk output on wgmma.

In one process (torch starts slowly there): y of the wgmma kernels (SSM_SSD_FWD_WGMMA=1: chunk_cb_kernel's tiles, =2:
S = C B^T in the kernel; SSM_SSD_STATE_WGMMA=1: the chunk state) against the default kernels' on the same inputs,
profiler kernel sums side by side: B8 L2048 H32, B1 L8192 H32, B8 L2048 H64 (mamba2-1.3b's heads); P64 N128 chunk 256
bf16 (D, dt_bias, softplus); then the GPU SSD tests under =2 with the state on wgmma (test_ssd_cuda's forward rows and
bf16 kernel-backward grid, test_ssd's forward grid, test_ssd_split's CUDA rows), then under =1 while the time lasts.

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
from ssdfwd_tests import FWD_CUDA, FWD_GRID, Count  # noqa: E402

SWITCHES = ("SSM_SSD_FWD_WGMMA", "SSM_SSD_STATE_WGMMA")
START = time.time()
SELECTIONS = [("tests/ops/test_ssd_cuda.py", FWD_CUDA), ("tests/ops/test_ssd.py", FWD_GRID),
              ("tests/ops/test_ssd_split.py", "cuda and not compile")]
MODES = [("staged", {}), ("wgmma1", {"SSM_SSD_FWD_WGMMA": "1"}), ("wgmma2", {"SSM_SSD_FWD_WGMMA": "2"}),
         ("wgmma2+state", {"SSM_SSD_FWD_WGMMA": "2", "SSM_SSD_STATE_WGMMA": "1"})]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def tests(res):
    for name, env in (MODES[3], MODES[1]):
        for path, expr in SELECTIONS[: 3 if name == MODES[3][0] else 2]:
            count = Count()
            rc = with_switch(env, lambda: pytest.main([path, "--maxfail=9", "-q", "-p", "no:cacheprovider", "-k", expr],
                                                      plugins=[count]))
            res["tests"].append(dict(mode=name, file=path, rc=int(rc), **count.n, first=count.first))
            log(f"SUMMARY {name} {path}: rc={int(rc)} {count.n} {count.first}")


def with_switch(env, fn):
    for k in SWITCHES:
        os.environ[k] = env.get(k, "0")
    try:
        return fn()
    finally:
        for k in SWITCHES:
            del os.environ[k]


def compare_y(res):
    """y of the wgmma kernel against the staged kernel's on the same inputs (relative to max |y|)."""
    from bench_ssd_cuda import fwd_fn, inputs
    for B, L, H in [(2, 1000, 8), (1, 2048 + 37, 4)]:
        fwd = fwd_fn(inputs(B, L, H=H))
        y0 = with_switch({}, fwd)
        for name, env in MODES[1:] + [("state", {"SSM_SSD_STATE_WGMMA": "1"})]:
            y1 = with_switch(env, fwd)
            rel = ((y1.float() - y0.float()).abs().max() / y0.float().abs().max()).item()
            fin = bool(torch.isfinite(y1).all())
            res["y_diff"].append(dict(mode=name, B=B, L=L, H=H, rel_max_diff=rel, finite=fin))
            log(f"y {name} vs default B{B} L{L} H{H}: rel max diff {rel:.3e}, finite {fin}")


def timings(res, budget):
    import ssm.ops as ops
    from bench_ssd_cuda import fwd_fn, inputs
    from ssdfwd_time import kernels
    ops._kernels.POISON_OUTPUTS = False
    for B, L, H in [(8, 2048, 32), (1, 8192, 32), (8, 2048, 64)]:
        if time.time() - START > budget:
            log(f"timing: budget spent before B{B} L{L} H{H}")
            return
        fwd = fwd_fn(inputs(B, L, H=H))
        row = dict(case=f"ssd fwd B{B} L{L} H{H}")
        for name, env in MODES:
            total, table = with_switch(env, lambda: kernels(fwd, iters=5))
            row[name] = dict(gpu_ms=total, kernels=table)
        res["timings"].append(row)
        out = [f"{row['case']}: gpu ms " + " / ".join(f"{n} {row[n]['gpu_ms']:.4f}" for n, _ in MODES)]
        for name, _ in MODES:
            for k, v in row[name]["kernels"].items():
                if "chunk_scan" in k or "chunk_cb" in k or "chunk_state" in k:
                    out.append(f"  {name}: {v * 1e3:7.1f} us {k.replace('void ssm::cuda::ssd::', '')[:50]}")
        log("\n".join(out))


def main():
    out = sys.argv[1]
    budget = float(sys.argv[sys.argv.index("--budget") + 1]) if "--budget" in sys.argv else 1e9
    res = dict(device=torch.cuda.get_device_name(), tests=[], y_diff=[], timings=[])
    steps = [compare_y, lambda r: timings(r, budget), tests]  # a crash shows in the first
    for step in steps:
        try:
            step(res)
        except Exception as e:  # keep what the earlier steps found
            log(f"step failed: {type(e).__name__}: {str(e)[:300]}")
        with open(out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
