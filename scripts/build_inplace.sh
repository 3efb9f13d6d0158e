#!/usr/bin/env bash
# Developer build: compiles the extension modules with CMake into build/inplace and copies
# them next to the sources (ssm/_cpu*.so, ssm/_cuda*.so), so tests run from the checkout
# without installing. Usage: scripts/build_inplace.sh [extra cmake -D options]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
BUILD=${SSM_BUILD_DIR:-build/inplace}
cmake -S . -B "$BUILD" -G Ninja -DPython_EXECUTABLE="$(command -v "$PY")" -DCMAKE_BUILD_TYPE=Release \
  -DSSM_BUILD_CUDA="${SSM_BUILD_CUDA:-auto}" -DSSM_CUDA_ARCHS="${SSM_CUDA_ARCHS:-}" "$@" >/dev/null
cmake --build "$BUILD" -j "${SSM_BUILD_JOBS:-$(nproc)}"
for lib in "$BUILD"/ssm/ops/cpu/_cpu*.so "$BUILD"/_cuda*.so; do
  [ -e "$lib" ] && cp -f "$lib" ssm/
done
cp -f "$BUILD/_build_info.py" ssm/_build_info.py
echo "built: $(cd ssm && ls _cpu*.so _cuda*.so 2>/dev/null | tr '\n' ' ')"
