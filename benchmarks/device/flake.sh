#!/usr/bin/env bash
# Lead diagnostic: the bf16 ssd_split gradient flake (benchmarks/device/flake_split.py), ~20 s.
OUT=${1:-flake_out}; mkdir -p "$OUT"
timeout -k 3 40 python3 benchmarks/device/flake_split.py ${FLAKE_SEEDS:-60} 2>&1 | tee "$OUT/flake.log" | tail -30
