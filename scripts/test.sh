#!/usr/bin/env bash
# Fresh machine -> tests: creates .venv with pinned dependencies (torch CPU build), builds and
# installs ssm (C++ CPU module; the CUDA module too when nvcc is present), runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q -r requirements-dev.txt
.venv/bin/python -m pip install -q --no-build-isolation -e .
exec .venv/bin/python -m pytest -q "$@"
