#!/usr/bin/env bash
# Device round for the CUDA selective-scan backward (issue 5, engineer scanbwd): the CUDA scan and
# mamba_inner tests first, then benchmarks/device/scanbwd_bench.py (fwd+bwd and bwd-alone times of
# the default path, the session-4 pre-pass path and the L2-prefetch kernel; a host/device timeline of
# one call), and ncu of the backward kernel (with its SASS source page) beside the tests.
# Runs from the repo root after the lead's build; logs and JSON into $1; at most ~50 s.
OUT=${1:-scanbwd_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
left() { echo $((${1} - SECONDS)); }
R=smsp__average_warps_issue_stalled
M=$R"_barrier_per_issue_active.ratio,"$R"_long_scoreboard_per_issue_active.ratio,"$R"_short_scoreboard_per_issue_active.ratio"
M=$M,$R"_wait_per_issue_active.ratio,"$R"_mio_throttle_per_issue_active.ratio,"$R"_not_selected_per_issue_active.ratio"
M=$M,smsp__inst_executed.sum,smsp__sass_inst_executed_op_local_ld.sum
# ncu of the backward kernel beside the tests (its Python start-up is CPU time; the tests time nothing)
timeout -k 1 28 ncu --clock-control none -k regex:pair_bwd_kernel --launch-count 1 --section SpeedOfLight \
  --section SchedulerStats --section WarpStateStats --section SourceCounters --metrics "$M" -f -o "$OUT/bwd_src" \
  $PY benchmarks/device/ncu_driver.py scan > "$OUT/ncu.log" 2>&1 &
NCU=$!
# the L = 16384 gradient test (a 16384-step float64 reference loop) does not fit the time limit
timeout -k 2 -s INT 21 $PY -m pytest -q -x -m cuda -p no:cacheprovider -rf -k "not long_sequence_cuda" \
  tests/ops/test_selective_scan.py tests/ops/test_mamba_inner.py > "$OUT/pytest.log" 2>&1
echo "pytest rc=$? at ${SECONDS}s: $(grep -E "passed|failed|error" "$OUT/pytest.log" | tail -1)"
grep -E "^(FAILED|ERROR)|Error:|error |assert" "$OUT/pytest.log" | head -6 | cut -c1-300
wait $NCU
echo "ncu rc=$? at ${SECONDS}s"
T=$(left 46); [ "$T" -gt 18 ] && T=18
timeout -k 1 $T $PY benchmarks/device/scanbwd_bench.py --out "$OUT/scanbwd.json" > "$OUT/bench.log" 2>&1
echo "bench rc=$? at ${SECONDS}s"
grep -vE "Warning|warn" "$OUT/bench.log" | cut -c1-150 | head -40
T=$(left 49)
if [ "$T" -gt 0 ]; then
  timeout -k 1 $T ncu --import "$OUT/bwd_src.ncu-rep" > "$OUT/ncu.txt" 2>&1
  grep -E "Duration|Eligible Warps|Warp Cycles Per Issued|smsp__" "$OUT/ncu.txt" | sed 's/^ *//; s/ \{2,\}/ /g' | cut -c1-100
fi
T=$(left 50)
[ "$T" -gt 0 ] && timeout -k 1 $T ncu --import "$OUT/bwd_src.ncu-rep" --page source --print-source sass --csv \
  > "$OUT/bwd_src_sass.csv" 2>&1
echo "done at ${SECONDS}s"
