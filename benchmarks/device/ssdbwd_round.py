"""Device round of the dedicated CUDA SSD backward (ssdbwd, session 7), in one process (a Python process with
torch takes ~10 s to start on the round machine): the GPU gradient tests, then (NaN poisoning of kernel outputs
switched back off, printed with each row) fwd+bwd timings at issue 6's shapes, then the seed drivers.

    python benchmarks/device/ssdbwd_round.py OUT_DIR SECONDS   (stops starting new parts after SECONDS)

Seed drivers (the two bf16 flakes), each seed run with dH_out entering the dx / db state products as hi + lo
(SSM_SSD_BWD_SPLIT=1, the default) and rounded once (=0), on the same inputs:
- l1: test_ssd_cuda's kernel backward bf16 gate-seq_idx b1 L1 H2 P32 G1 N16 c64: each gradient's error over the
  test's bound (2 x REL_TOL; d dt_bias by bias_grad_error), max / p99 / count over 1.
- split: test_ssd_split's bf16 gradient case (CUDA fused path vs float64; bound 2 x the bf16 reference's
  error + 2e-3): each gradient's err / bound, max and count over 1.
"""
from __future__ import annotations

import json
import os
import sys
import time

import torch

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

START = time.time()
TESTS = [  # (name, files, -k)
    ("kernel grid + variants + sums + bitwise", ["tests/ops/test_ssd_cuda.py"],
     "kernel_backward or sums_kernel or (bitwise and kernel)"),
    ("ssd / ssd_split gradient rows", ["tests/ops/test_ssd_split.py", "tests/ops/test_ssd.py"], "gradients and cuda"),
]
L1_SEED0 = 6000  # round 1 / 1b: 5000
SPLIT_SEED0 = 9000  # round 1 / 1b: 7000 (seeds 7000..7299)
L1_RUNS = [  # (name, (batch, L, H, P, G, N, chunk), SSM_SSD_BWD_SPLIT)
    ("b2_l1_h8_g2 split", (2, 1, 8, 32, 2, 16, 64), "1"),
    ("b2_l1_h8_g2 nosplit", (2, 1, 8, 32, 2, 16, 64), "0"),
]


class Count:
    """Passed / failed counts and the first failures."""

    def __init__(self):
        self.n = {"passed": 0, "failed": 0, "skipped": 0}
        self.first = []

    def pytest_runtest_logreport(self, report):
        if report.failed:
            self.n["failed"] += 1
            if len(self.first) < 4:
                self.first.append(f"{report.nodeid}: {str(report.longrepr).splitlines()[-1][:200]}")
        elif report.when == "call" and report.passed:
            self.n["passed"] += 1
        elif report.skipped and report.when == "setup":
            self.n["skipped"] += 1


def run_tests():
    import pytest
    import ssm.ops._kernels as kernels
    saved, out = kernels.POISON_OUTPUTS, {}
    for name, files, expr in TESTS:
        count = Count()
        rc = pytest.main([*files, "-q", "-p", "no:cacheprovider", "-k", expr], plugins=[count])
        print(f"TESTS {name}: rc={int(rc)} {count.n} {count.first}", file=sys.stderr, flush=True)
        out[name] = dict(rc=int(rc), **count.n, first=count.first)
    kernels.POISON_OUTPUTS = saved  # tests/conftest.py poisons every output
    return out


def stats(ratios):
    """{grad: median / p99 / max of err/bound, count over 1}."""
    out = {}
    for k, v in ratios.items():
        v = sorted(v)
        out[k] = dict(med=round(v[len(v) // 2], 3), p99=round(v[int(0.99 * (len(v) - 1))], 3), max=round(v[-1], 3),
                      over=sum(x > 1 for x in v))
    return out


def show(name, n, res):
    for mode, st in res.items():
        print(f"-- {name} ({n} seeds) {mode}: " + ", ".join(
            f"d{k} {s['med']}/{s['p99']}/{s['max']} x{s['over']}" for k, s in st.items()), flush=True)


def seeds_l1(budget_s):
    """The L = 1 kernel-test flake: per gradient err / bound over seeds, per (shape, split) of L1_RUNS."""
    from tests.ops.harness import REL_TOL, rel_err
    from tests.ops.test_ssd_cuda import bias_grad_error, cuda_backward_grads
    os.environ.update(SSM_SSD_COMPOSED_BWD="1", SSM_SSD_BWD_KERNEL="1")
    tol = 2.0 * REL_TOL[torch.bfloat16]
    ratios, stop, seed = {name: {} for name, _, _ in L1_RUNS}, time.time() + budget_s, 0
    while time.time() < stop and seed < 1000:
        for name, shape, env in L1_RUNS:
            os.environ["SSM_SSD_BWD_SPLIT"] = env
            torch.manual_seed(L1_SEED0 + seed)
            grads = cuda_backward_grads(torch.bfloat16, shape, True, True)
            for k, (got, want) in grads.items():
                e = bias_grad_error(got, want, grads["dt"][1]) if k == "dt_bias" else rel_err(got, want)
                ratios[name].setdefault(k, []).append(e / tol)
        seed += 1
    os.environ["SSM_SSD_BWD_SPLIT"] = "1"
    res = {m: stats(r) for m, r in ratios.items() if r}
    show("l1 bf16 gate seq_idx (med/p99/max of err/bound, x = over)", seed, res)
    return dict(seeds=seed, runs=[(n, s, e) for n, s, e in L1_RUNS], **res)


def seeds_split(budget_s):
    """test_ssd_split's bf16 gradient case: per gradient err / bound (2 x the bf16 reference's + 2e-3)."""
    import ssm.ops as ops
    from tests.ops.harness import rel_err
    from tests.ops.test_ssd_split import P, make_split, run, state_args
    ratios, stop, seed = {"split": {}, "nosplit": {}, "ref_over_f64": {}}, time.time() + budget_s, 0
    while time.time() < stop and seed < 300:
        torch.manual_seed(SPLIT_SEED0 + seed)
        inp = make_split(2, 21, 4, 2, 5, 3, "cuda", torch.bfloat16)
        inp.update(state_args(inp, 2, 21, 4, 5, "cuda"))
        H = inp["A"].shape[0]
        dout = torch.randn(2, 21, inp["outproj_weight"].shape[0], device="cuda")
        dfinal = torch.randn(2, H, P, 5, device="cuda")
        kw = dict(headdim=P, ngroups=2, norm_before_gate=bool(seed % 2), return_final_states=True)
        f, ref = ops.mamba_split_conv1d_scan_combined, ops.mamba_split_conv1d_scan_ref
        want = run(ref, inp, lambda v: v.detach().double(), "reference", dout, dfinal, **kw)[2]
        lowp = run(ref, inp, lambda v: v.detach().clone(), "reference", dout, dfinal, **kw)[2]
        for mode, env in (("split", "1"), ("nosplit", "0")):
            os.environ["SSM_SSD_BWD_SPLIT"] = env
            got = run(f, inp, lambda v: v.detach().clone(), "cuda", dout, dfinal, **kw)[2]
            for k in want:
                e, lo = rel_err(got[k], want[k]), rel_err(lowp[k], want[k])
                ratios[mode].setdefault(k, []).append(e / (2 * lo + 2e-3))
                if mode == "split":
                    ratios["ref_over_f64"].setdefault(k, []).append(lo)
        seed += 1
    os.environ["SSM_SSD_BWD_SPLIT"] = "1"
    res = {m: stats(r) for m, r in ratios.items() if r}
    show("split bf16 b2 L21 H4 G2 N5 (med/p99/max of err/bound; ref_over_f64: the bf16 reference's error)", seed, res)
    return dict(seeds=seed, **res)


def kernel_table(fn, iters=3):
    """Per-call device time of each kernel fn launches (profiler), in us, largest first."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    rows = {e.key[:70]: e.self_device_time_total / iters for e in prof.key_averages()
            if e.self_device_time_total > 0 and e.device_type == torch.autograd.DeviceType.CUDA}
    return dict(sorted(rows.items(), key=lambda kv: -kv[1]))


def host_ms(fn, reps=10):
    """Host milliseconds per call without synchronizing (the GPU queue absorbs the launches)."""
    fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    host = (time.perf_counter() - t) / reps * 1e3
    torch.cuda.synchronize()
    return host


def case(B, L, env):
    import ssm.ops._kernels as kernels
    from bench_cuda import time_ms
    from bench_ssd_cuda import fwd_bwd_fn, inputs
    os.environ.update(env)
    fb = fwd_bwd_fn(inputs(B, L))
    table = kernel_table(fb)
    row = dict(case=f"B{B} L{L}", env=env, poison=kernels.POISON_OUTPUTS, kernels_ms=sum(table.values()) / 1e3, eager_ms=time_ms(fb, reps=10),
               host_ms=host_ms(fb), top_us={k: round(v, 1) for k, v in list(table.items())[:10]})
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items() if k != "top_us"}),
          flush=True)
    for k, v in list(table.items())[:9]:
        print(f"   {v:8.1f} us  {k}", flush=True)
    return row


def main():
    out_dir, budget = sys.argv[1], float(sys.argv[2])
    os.makedirs(out_dir, exist_ok=True)
    res = dict(device=torch.cuda.get_device_name(), tests=run_tests())
    print(res["device"], f"tests done at {time.time() - START:.1f} s", flush=True)
    parts = [("rows", lambda e=e, b=b: case(b[0], b[1], e)) for b in ((8, 2048), (1, 8192))
             for e in ({"SSM_SSD_BWD_SPLIT": "1"}, {"SSM_SSD_BWD_SPLIT": "0"})]
    parts += [("l1", lambda: seeds_l1(0.4 * (budget - (time.time() - START)))),
              ("split", lambda: seeds_split(budget - 1 - (time.time() - START)))]
    for name, part in parts:
        if time.time() - START > budget - 2:
            print("time budget reached", flush=True)
            break
        try:
            r = part()
            if name == "rows":
                res.setdefault("rows", []).append(r)
            else:
                res[name] = r
        except Exception as e:  # a part's failure leaves the others
            print(f"-- {name} failed: {type(e).__name__}: {e}", flush=True)
        with open(os.path.join(out_dir, "round.json"), "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
