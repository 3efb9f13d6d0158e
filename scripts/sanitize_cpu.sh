#!/usr/bin/env bash
# Builds the CPU module with AddressSanitizer + UndefinedBehaviorSanitizer (SSM_SANITIZE=ON, in
# build/asan) and runs the CPU op tests at small shapes under it. The sanitized module is staged
# in a temporary copy of ssm/ and tests/, so the checkout's ssm/_cpu*.so stays the normal build.
# Usage: PYTHON=/work/venv/bin/python scripts/sanitize_cpu.sh [extra pytest args]
# Selection: SSM_SANITIZE_PATHS (default tests/ops tests/modules tests/models) and SSM_SANITIZE_TESTS
# (-k, default "not cuda": every CPU and reference parametrization, long sequences included).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(command -v "${PYTHON:-python3}")
BUILD=${SSM_BUILD_DIR:-build/asan}
cmake -S . -B "$BUILD" -G Ninja -DPython_EXECUTABLE="$PY" -DCMAKE_BUILD_TYPE=Release \
  -DSSM_BUILD_CUDA=off -DSSM_SANITIZE=ON >/dev/null
cmake --build "$BUILD" -j "${SSM_BUILD_JOBS:-$(nproc)}"

STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
cp -r ssm tests pyproject.toml "$STAGE"/
rm -f "$STAGE"/ssm/_cpu*.so "$STAGE"/ssm/_cuda*.so
cp "$BUILD"/ssm/ops/cpu/_cpu*.so "$STAGE"/ssm/
cp "$BUILD"/_build_info.py "$STAGE"/ssm/_build_info.py
cd "$STAGE"

# The interpreter is not instrumented: the sanitizer runtimes are preloaded. Leak detection is
# off (CPython and torch keep allocations alive at exit); any UBSan report aborts the run.
export LD_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
export ASAN_OPTIONS=detect_leaks=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
# the staged module must be the sanitized one
"$PY" -c "import ssm._cpu as m, sys; sys.exit(0 if 'asan' in open(m.__file__, 'rb').read().decode('latin1') else 1)"
"$PY" -m pytest ${SSM_SANITIZE_PATHS:-tests/ops tests/modules tests/models} -q -p no:cacheprovider -x \
  --ignore=tests/ops/test_reference.py -k "${SSM_SANITIZE_TESTS:-not cuda}" "$@"
