#!/usr/bin/env bash
# Compile-only check of the CUDA module for sm_90, for machines with nvcc but no GPU (CI): builds
# ssm._cuda into its own build folder; nothing is installed, copied into ssm/ or imported.
# Fails (exit 1) when a CUDA source or binding does not compile.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
BUILD=${SSM_CUDA_CHECK_DIR:-build/cuda-check}
JOBS=${SSM_BUILD_JOBS:-$(nproc)}
echo "cuda compile check: building ssm._cuda for sm_90 with $(command -v nvcc) into $BUILD, $JOBS jobs (not installed)"
mkdir -p "$BUILD"
start=$SECONDS
fail() { echo "cuda compile check: FAILED ($1) after $((SECONDS - start)) s"; exit 1; }
cmake -S . -B "$BUILD" -G Ninja -DPython_EXECUTABLE="$(command -v "$PY")" -DCMAKE_BUILD_TYPE=Release \
  -DSSM_BUILD_CUDA=on -DSSM_CUDA_ARCHS=90 >"$BUILD/configure.log" 2>&1 || { tail -20 "$BUILD/configure.log"; fail configure; }
cmake --build "$BUILD" --target _cuda -j "$JOBS" || fail compile
echo "cuda compile check: OK in $((SECONDS - start)) s"
