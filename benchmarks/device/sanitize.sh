#!/usr/bin/env bash
# Lead: compute-sanitizer memcheck and racecheck over benchmarks/device/sanitize_driver.py (every CUDA
# kernel family once at small shapes: two small models' forward, backward and decode, plus the ops
# they do not reach), after the round's build; logs into $1.
OUT=${1:-sanitize_out}; mkdir -p "$OUT"
for tool in ${SAN_TOOLS:-memcheck racecheck}; do
  timeout -k 3 ${SAN_S:-100} compute-sanitizer --tool "$tool" --error-exitcode 9 python3 benchmarks/device/sanitize_driver.py \
    > "$OUT/sanitizer_$tool.log" 2>&1
  echo "$tool rc=$?: $(grep -E "ERROR SUMMARY|RACECHECK SUMMARY|driver done" "$OUT/sanitizer_$tool.log" | tr '\n' ' ')"
done
