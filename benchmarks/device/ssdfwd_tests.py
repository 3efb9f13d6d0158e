"""Device-round tests and timing of the SSD forward (ssdfwd) in one process (a Python process with
torch takes seconds to start there): the forward GPU SSD tests under each RUNS environment (the
staged chunk output switched on; with --time OUT.json, ssdfwd_time.py's
timings run between the first run and the others).

    python benchmarks/device/ssdfwd_tests.py [--time OUT.json]   (a summary line per run on stderr)
"""
import os
import sys

import pytest

FWD_CUDA = "model_sizes or seq_idx_runs or token_major or varlen_sequences or length_one or graph or bitwise"
FWD_GRID = "cuda and (forward_matches or chunked_prefill or long_sequence or varlen_states) and not dtype0"
RUNS = [  # (name, environment, [(file, -k)])
    ("staged", {"SSM_SSD_FWD_STAGED": "1"},
     [("tests/ops/test_ssd_cuda.py", FWD_CUDA), ("tests/ops/test_ssd.py", FWD_GRID)]),
]


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
    run(*RUNS[0])
    if "--time" in sys.argv:  # before the later runs (the time limit)
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import ssdfwd_time
        ssdfwd_time.main(sys.argv[sys.argv.index("--time") + 1], layer=True)
    for r in RUNS[1:]:
        run(*r)


if __name__ == "__main__":
    main()
