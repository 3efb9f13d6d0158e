#!/usr/bin/env bash
# Fresh machine -> tests: creates .venv with pinned dependencies (torch CPU build), builds and
# installs ssm (C++ CPU module; the CUDA module too when nvcc is present), runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# Without a GPU the CUDA module cannot be tested here, so it is not built unless asked for
# (SSM_BUILD_CUDA=on); with one, nvcc decides (auto).
# Such a machine with nvcc still checks that the CUDA sources compile (scripts/cuda_compile_check.sh,
# sm_90, nothing installed); SSM_CUDA_COMPILE_CHECK=0 skips it.
CUDA_COMPILE_CHECK=0
if [ -z "${SSM_BUILD_CUDA:-}" ] && ! nvidia-smi -L >/dev/null 2>&1; then
  export SSM_BUILD_CUDA=off
  if command -v nvcc >/dev/null; then CUDA_COMPILE_CHECK=${SSM_CUDA_COMPILE_CHECK:-1}; fi
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q -r requirements-dev.txt
.venv/bin/python -m pip install -q --no-build-isolation -e .
.venv/bin/python -m pytest -q "$@"
if [ "$CUDA_COMPILE_CHECK" = 1 ]; then
  PYTHON=.venv/bin/python scripts/cuda_compile_check.sh
fi
