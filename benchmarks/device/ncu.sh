#!/usr/bin/env bash
# ncu stall profile of the hot kernels (benchmarks/device/ncu_driver.py): speed of light,
# occupancy, launch stats, warp states, scheduler, compute and memory workload; text into $1.
OUT=${1:-ncu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
KERNELS='regex:fwd_kernel|bwd_kernel|chunk_scan_mma|chunk_state_mma|chunk_cb|state_passing|bwd_d[bcx]_kernel|bwd_cb|bwd_state|bwd_dstate|bwd_finalize|state_step_kernel|conv_bwd|conv_fwd'
SECTIONS="--section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats --section SchedulerStats --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis"
timeout -k 5 ${NCU_S:-200} ncu --clock-control none --target-processes all -k "$KERNELS" --launch-count ${NCU_COUNT:-40} \
  $SECTIONS python3 benchmarks/device/ncu_driver.py ${NCU_WHICH:-scan,ssd,step,conv} > "$OUT/ncu.txt" 2>&1
echo "ncu rc=$? $(grep -c '^  [a-z_:<>]*.*(.*)x(.*)' "$OUT/ncu.txt") kernels"
grep -E "^  [^ ].*\([0-9]+, [0-9]+, [0-9]+\)x\(|Duration|Achieved Occupancy|Issue Slots Busy|Compute \(SM\) Throughput|Memory Throughput  " "$OUT/ncu.txt" | cut -c1-150 | head -120
