"""Device-round tests of the SSD forward (ssdfwd, sessions 6-8) in one process (a Python process with torch
takes seconds to start there): the GPU SSD tests with the default kernels (or the switches in SSD_FWD_ENV, JSON:
e.g. {"SSM_SSD_FWD_EXACT": "0"}), then y and the final states of the default kernels against those of the switch
forms of BITWISE (expected bitwise equal), then the error distribution of y over seeds (ssdfwd_seeds.py, with
--seeds OUT.json [N]), then the ssd_split bf16 gradient flake with H_in hi + lo against rounded (ssdfwd_flake.py)
while the time budget lasts (--budget S, --flake OUT.json).

    python benchmarks/device/ssdfwd_tests.py [--seeds OUT.json [N]] [--budget S] [--flake OUT.json]
    (summary lines on stderr)
"""
import json
import os
import sys
import time

import pytest

FWD_CUDA = ("model_sizes or seq_idx_runs or token_major or varlen_sequences or length_one or graph or bitwise or "
            "(kernel_backward_matches and bf16)")
FWD_GRID = "cuda and (forward_matches or chunked_prefill or long_sequence or varlen_states) and not dtype0"
RUNS = [  # (name, environment, [(file, -k)]); SSD_FWD_ENV (JSON) overrides the first run's environment
    ("default", json.loads(os.environ.get("SSD_FWD_ENV", "{}")),
     [("tests/ops/test_ssd_split.py", "cuda and not compile"), ("tests/ops/test_ssd_cuda.py", FWD_CUDA),
      ("tests/ops/test_ssd.py", FWD_GRID)]),
]
# switch forms whose y / final states must equal the default's bitwise (the tokens kernel: same arithmetic)
BITWISE = [{"SSM_SSD_FWD_TOKWS": "0"}]
START = time.time()


class Count:
    """Passed / failed / skipped test counts and the first failures."""

    def __init__(self):
        self.n = {"passed": 0, "failed": 0, "skipped": 0}
        self.first = []

    def pytest_runtest_logreport(self, report):
        if report.failed:
            self.n["failed"] += 1
            if len(self.first) < 3:
                self.first.append(f"{report.nodeid}: {str(report.longrepr).splitlines()[-1][:200]}")
        elif report.when == "call" and report.passed:
            self.n["passed"] += 1
        elif report.skipped:
            self.n["skipped"] += 1


def run(name, env, selections):
    """Counts of the last selection."""
    os.environ.update(env)
    for path, expr in selections:
        count = Count()
        rc = pytest.main([path, "--maxfail=9", "-q", "-p", "no:cacheprovider", "-k", expr], plugins=[count])
        print(f"SUMMARY {name} {path}: rc={int(rc)} {count.n} {count.first}", file=sys.stderr, flush=True)
    for k in env:
        del os.environ[k]
    return count.n


def bitwise():
    """y and the final states of the default kernels against each BITWISE form (bf16, f16; B2 L1100 H32 P64 N128
    chunk 256 with initial states, D, dt_bias, softplus; and B2 L700 H8 P64 N64 chunk 128 with z)."""
    import torch
    import ssm.ops as ops
    ops._kernels.POISON_OUTPUTS = False
    res = []
    for dtype, (B, L, H, P, N, chunk, gate) in [(torch.bfloat16, (2, 1100, 32, 64, 128, 256, False)),
                                                (torch.float16, (2, 1100, 32, 64, 128, 256, False)),
                                                (torch.bfloat16, (2, 700, 8, 64, 64, 128, True))]:
        g = torch.Generator(device="cuda").manual_seed(5)
        rn = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
        args = [rn(B, L, H, P).to(dtype), rn(B, L, H).to(dtype), -torch.rand(H, device="cuda", generator=g) - 0.1,
                rn(B, L, 1, N).to(dtype), rn(B, L, 1, N).to(dtype), chunk]
        kw = dict(D=rn(H), dt_bias=rn(H) * 0.5, dt_softplus=True, initial_states=rn(B, H, P, N),
                  z=rn(B, L, H, P).to(dtype) if gate else None, return_final_states=True)
        y0, f0 = ops.ssd_chunk_scan(*args, **kw)
        for env in BITWISE:
            os.environ.update(env)
            y1, f1 = ops.ssd_chunk_scan(*args, **kw)
            for k in env:
                del os.environ[k]
            res.append(dict(env=env, dtype=str(dtype)[6:], L=L, N=N, y_equal=bool(torch.equal(y0, y1)),
                            final_equal=bool(torch.equal(f0, f1)), y_maxdiff=float((y0.float() - y1.float()).abs().max())))
    print("BITWISE " + "; ".join(f"{r['env']} {r['dtype']} N{r['N']}: y {r['y_equal']} final {r['final_equal']} "
                                 f"(max diff {r['y_maxdiff']:.3g})" for r in res), file=sys.stderr, flush=True)
    return res


def main():
    budget = float(sys.argv[sys.argv.index("--budget") + 1]) if "--budget" in sys.argv else 1e9
    run(*RUNS[0])
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    bitwise()
    if "--seeds" in sys.argv:
        import ssdfwd_seeds
        at = sys.argv.index("--seeds")
        n = int(sys.argv[at + 2]) if len(sys.argv) > at + 2 and sys.argv[at + 2].isdigit() else 40
        ssdfwd_seeds.main(sys.argv[at + 1], n)
    if "--flake" in sys.argv and budget - (time.time() - START) > 3:
        import ssdfwd_flake
        res = ssdfwd_flake.main(budget - (time.time() - START))
        with open(sys.argv[sys.argv.index("--flake") + 1], "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
