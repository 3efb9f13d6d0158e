"""Diagnostic for the bf16 gradient flake of tests/ops/test_ssd_split.py (ddt_bias, CUDA only):
per seed, the relative error of each gradient of the fused path on CUDA and on the CPU kernels, and of
the bf16 reference on CUDA and on CPU, against the float64 reference; counts of the test's bound
(2 x the bf16 reference's error + 2e-3) failing with either device's reference."""
import sys
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import ssm.ops as ops  # noqa: E402
from tests.ops.harness import rel_err  # noqa: E402
from tests.ops.test_ssd_split import P, make_split, run, state_args  # noqa: E402

seeds = int(sys.argv[1]) if len(sys.argv) > 1 else 40
fails, worst = Counter(), {}
for seed in range(seeds):
    torch.manual_seed(seed)
    inp = make_split(2, 21, 4, 2, 5, 3, "cpu", torch.bfloat16)
    inp.update(state_args(inp, 2, 21, 4, 5, "cpu"))
    H = inp["A"].shape[0]
    dout = torch.randn(2, 21, inp["outproj_weight"].shape[0])
    dfinal = torch.randn(2, H, P, 5)
    kw = dict(headdim=P, ngroups=2, norm_before_gate=True, return_final_states=True)
    cuda_inp = {k: None if v is None else v.cuda() for k, v in inp.items()}
    res = {
        "fused_cuda": run(ops.mamba_split_conv1d_scan_combined, cuda_inp, lambda v: v.detach().clone(), "cuda",
                          dout.cuda(), dfinal.cuda(), **kw),
        "fused_cpu": run(ops.mamba_split_conv1d_scan_combined, inp, lambda v: v.detach().clone(), "cpu", dout,
                         dfinal, **kw),
        "ref_bf16_cuda": run(ops.mamba_split_conv1d_scan_ref, cuda_inp, lambda v: v.detach().clone(), "reference",
                             dout.cuda(), dfinal.cuda(), **kw),
        "ref_bf16_cpu": run(ops.mamba_split_conv1d_scan_ref, inp, lambda v: v.detach().clone(), "reference", dout,
                            dfinal, **kw),
    }
    want = run(ops.mamba_split_conv1d_scan_ref, inp, lambda v: v.detach().double(), "reference", dout, dfinal, **kw)
    for k in want[2]:
        errs = {name: rel_err(r[2][k], want[2][k]) for name, r in res.items()}
        for name in ("fused_cuda", "fused_cpu"):
            for ref in ("ref_bf16_cuda", "ref_bf16_cpu"):
                if errs[name] > 2 * errs[ref] + 2e-3:
                    fails[(k, name, ref)] += 1
        w = worst.setdefault(k, {})
        for name, e in errs.items():
            w[name] = max(w.get(name, 0.0), e)
print(f"{seeds} seeds; failures of the bound (grad, path, reference used):")
for key, n in sorted(fails.items()):
    print(" ", key, n)
print("worst relative error per gradient:")
for k, w in worst.items():
    print(f"  d{k}: " + ", ".join(f"{n} {e:.2e}" for n, e in w.items()))
