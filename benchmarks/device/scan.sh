#!/usr/bin/env bash
# Device round for the CUDA selective scan in Mamba-1 training and prefill (issues 5, 6; engineer scan,
# session 7): benchmarks/device/scan_round.py in ONE python process (one torch start-up): the GPU tests of
# test_selective_scan_layouts (forced kernel forms first), test_mamba_inner and test_selective_scan (stopped
# after 9 s: all 278 that ran passed in round 1), then without NaN poisoning the backward handoff check with
# each backward form, the scan kernels at D 1536, mamba-130m training (checkpoint levels 1 and 2) and
# mamba-1.4b prefill (exp_poly off / on), the forward forms at D 4096. Runs from the repo root after the lead's build; logs and JSON into $1; at most ~50 s.
OUT=${1:-scan_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name --format=csv,noheader | head -1
timeout -k 2 -s INT 47 $PY benchmarks/device/scan_round.py "$OUT" --test-budget 9 --budget 33 \
  > "$OUT/round.log" 2> "$OUT/round.err"
echo "round rc=$? at ${SECONDS}s"
grep -E "passed|failed|error" "$OUT/round.log" | grep -vE "^(FAILED|ERROR)" | tail -2 | cut -c1-200
grep -E "^(FAILED|ERROR)" "$OUT/round.log" | head -8 | cut -c1-240
grep -E "^(pytest rc|handoff|model |mamba|done|NVIDIA)" "$OUT/round.log" | cut -c1-240
grep -vE "Warn|warn" "$OUT/round.err" | tail -3 | cut -c1-200
