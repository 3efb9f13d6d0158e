"""Device-round tests of the SSD forward (ssdfwd, sessions 6-9) in one process (a Python process with torch
takes seconds to start there): the GPU SSD tests with the default kernels (or the switches in SSD_FWD_ENV, JSON:
e.g. {"SSM_SSD_FWD_EXACT": "0"}), the error distribution of y over seeds (ssdfwd_seeds.py, with --seeds OUT.json [N]),
then the tests of the opt-in forms (RUNS[1:]), then the ssd_split bf16 gradient flake with H_in hi + lo against
rounded (ssdfwd_flake.py) while the time budget lasts (--budget S, --flake OUT.json).

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
    ("hilo", {"SSM_SSD_FWD_HIN_SPLIT": "1"},  # H_in as hi + lo on the same kernels (opt-in; must keep passing)
     [("tests/ops/test_ssd_split.py", "cuda and not compile"), ("tests/ops/test_ssd_cuda.py", FWD_CUDA),
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
    """Counts of the last selection."""
    os.environ.update(env)
    for path, expr in selections:
        count = Count()
        rc = pytest.main([path, "--maxfail=9", "-q", "-p", "no:cacheprovider", "-k", expr], plugins=[count])
        print(f"SUMMARY {name} {path}: rc={int(rc)} {count.n} {count.first}", file=sys.stderr, flush=True)
    for k in env:
        del os.environ[k]
    return count.n


def main():
    budget = float(sys.argv[sys.argv.index("--budget") + 1]) if "--budget" in sys.argv else 1e9
    run(*RUNS[0])
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    if "--seeds" in sys.argv:
        import ssdfwd_seeds
        at = sys.argv.index("--seeds")
        n = int(sys.argv[at + 2]) if len(sys.argv) > at + 2 and sys.argv[at + 2].isdigit() else 40
        ssdfwd_seeds.main(sys.argv[at + 1], n)
    for r in RUNS[1:]:  # the opt-in forms after the default's tests and errors
        run(*r)
    if "--flake" in sys.argv and budget - (time.time() - START) > 3:
        import ssdfwd_flake
        res = ssdfwd_flake.main(budget - (time.time() - START))
        with open(sys.argv[sys.argv.index("--flake") + 1], "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
