"""Device-round tests of the SSD forward (ssdfwd, session 6) in one process (a Python process with torch
takes seconds to start there): the GPU SSD tests with the exact staged chunk output (the default), then
the error distribution of y over seeds (ssdfwd_seeds.py, with --seeds OUT.json), then repeated runs of
test_ssd_split's low-precision gradient cases (their failure rate), while the time budget lasts.

    python benchmarks/device/ssdfwd_tests.py [--seeds OUT.json] [--budget S]   (summary lines on stderr)
"""
import os
import sys
import time

import pytest

FWD_CUDA = ("model_sizes or seq_idx_runs or token_major or varlen_sequences or length_one or graph or bitwise or "
            "(kernel_backward_matches and bf16)")
FWD_GRID = "cuda and (forward_matches or chunked_prefill or long_sequence or varlen_states) and not dtype0"
SPLIT_LOWP = "cuda and gradients and (dtype1 or dtype2)"
RUNS = [  # (name, environment, [(file, -k)])
    ("exact", {}, [("tests/ops/test_ssd_split.py", "cuda and not compile"), ("tests/ops/test_ssd_cuda.py", FWD_CUDA),
                   ("tests/ops/test_ssd.py", FWD_GRID)]),
]
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
    os.environ.update(env)
    for path, expr in selections:
        count = Count()
        rc = pytest.main([path, "--maxfail=3", "-q", "-p", "no:cacheprovider", "-k", expr], plugins=[count])
        print(f"SUMMARY {name} {path}: rc={int(rc)} {count.n} {count.first}", file=sys.stderr, flush=True)
    for k in env:
        del os.environ[k]


def main():
    budget = float(sys.argv[sys.argv.index("--budget") + 1]) if "--budget" in sys.argv else 1e9
    run(*RUNS[0])
    if "--seeds" in sys.argv:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import ssdfwd_seeds
        ssdfwd_seeds.main(sys.argv[sys.argv.index("--seeds") + 1], 40)
    for rep in range(8):  # the split file's low-precision gradient rows again (fresh random inputs each)
        if time.time() - START > budget:
            break
        run(f"split-repeat{rep}", {}, [("tests/ops/test_ssd_split.py", SPLIT_LOWP)])


if __name__ == "__main__":
    main()
