#!/usr/bin/env bash
# Lead: compute-sanitizer memcheck and racecheck over small-shape CUDA op tests (run_cuda_device.sh's
# sanitize step), after the round's build; logs into $1.
OUT=${1:-sanitize_out}; mkdir -p "$OUT"
SAN_S=${SAN_S:-85} bash benchmarks/run_cuda_device.sh "$OUT" sanitize
