"""Device-round tests of the SSD forward (ssdfwd), in one process (a Python process with torch takes
seconds to start there): the GPU SSD tests on the default kernels (-x).

    python benchmarks/device/ssdfwd_tests.py   (a summary line per run on stdout)
"""
import os
import sys

import pytest

RUNS = [  # (name, environment, files, -k)
    ("default", {}, ["tests/ops/test_ssd_cuda.py", "tests/modules/test_consistency_cuda.py",
                     "tests/ops/test_ssd_split.py", "tests/ops/test_ssd.py"], "cuda and not compile and not mamba1"),
]


class Count:
    """Passed / failed / skipped test counts and the first failure."""

    def __init__(self):
        self.n = {"passed": 0, "failed": 0, "skipped": 0}
        self.first = ""

    def pytest_runtest_logreport(self, report):
        if report.failed:
            self.n["failed"] += 1
            self.first = self.first or f"{report.nodeid}: {str(report.longrepr).splitlines()[-1][:200]}"
        elif report.when == "call" and report.passed:
            self.n["passed"] += 1
        elif report.skipped:
            self.n["skipped"] += 1


def main():
    for name, env, files, expr in RUNS:
        os.environ.update(env)
        count = Count()
        rc = pytest.main([*files, "-x", "-q", "-p", "no:cacheprovider", "-k", expr], plugins=[count])
        for k in env:
            del os.environ[k]
        print(f"SUMMARY {name}: rc={int(rc)} {count.n} {count.first}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
