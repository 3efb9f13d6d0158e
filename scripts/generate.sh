#!/usr/bin/env bash
# Fresh machine -> generated text: creates .venv with the pinned runtime dependencies
# (requirements.txt: the CPU build of torch, numpy, safetensors), installs ssm (builds the C++ CPU
# module) and runs `python -m ssm generate` on the built-in byte-level model.
# Usage: bash scripts/generate.sh ["prompt"] [more `ssm generate` flags]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
if ! (cd /tmp && "$OLDPWD/.venv/bin/python" -c "import ssm._cpu") 2>/dev/null; then
    .venv/bin/python -m pip install -q -r requirements.txt
    .venv/bin/python -m pip install -q -e .
fi
PROMPT=${1:-"def fibonacci(n):"}
shift || true
exec .venv/bin/python -m ssm generate --prompt "$PROMPT" "$@"
