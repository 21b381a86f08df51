#!/usr/bin/env bash
# One short device call (carry .whl) on 128x128 scales for the right operand (ADAHOP_TILE_B, docs/kernels.md):
#   1. every GPU kernel test (tests/kernels), then the quantizer and GEMM-only tables (bench_quantizers.txt);
#   2. the 8B up/gate + down linear benchmark in hadamard mode with ADAHOP_TILE_B = 0, forward, weights and 1, one
#      run each (same machine, back to back), tables in $OUT/bench_tile_<value>.txt;
#   3. with E2E=1 (E2E=only: this part alone; parts 1-2 take ~5 minutes, this one ~7), the 1B-shape
#      model STEPS steps (default 80; calibration ends at 30) under BF16 and under AdaHOP with
#      ADAHOP_TILE_B = 0, forward, weights and 1, same seed: tokens/s after step 45, peak memory, and the
#      steps redone for blocks a tile could not hold ($OUT/summary.md).
# The GEMM-only table (bench_linear.py's bandwidth part) says what a tile gains at most: docs/kernels.md,
# "Where 1.3x has to come from".
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu_env.sh
device_header versions
if [ "${E2E:-0}" != only ]; then
timeout 300 python3 -m pytest -q tests/kernels -p no:cacheprovider 2>&1 | tail -15 | tee "$OUT/gpu_tests.txt"
# the quantizer table (kernels changed since the last timing: docs/kernels.md) and the GEMM-only table
timeout ${BENCH_LIMIT:-80} python3 scripts/bench_linear.py --models llama3-8b --tokens 16384 --shapes down \
  --modes hadamard --sr 0 --no-baselines --rep 30 > "$OUT/bench_quantizers.txt" 2>&1
echo "== quantizers (rc $?)"; grep -a "^| " "$OUT/bench_quantizers.txt" | head -24
for t in 0 forward weights 1; do
  ADAHOP_TILE_B=$t timeout ${BENCH_LIMIT:-80} python3 scripts/bench_linear.py --models llama3-8b --tokens 16384 \
    --shapes up/gate down --modes hadamard --sr 0 --no-baselines --skip-bandwidth --rep 30 > "$OUT/bench_tile_$t.txt" 2>&1
  echo "== ADAHOP_TILE_B=$t (rc $?)"; grep -a "^| llama\|gemm stats\|Error" "$OUT/bench_tile_$t.txt" | head -8
done
fi
if [ "${E2E:-0}" != 0 ]; then
  source scripts/gpu_e2e_runs.sh
  names=()
  for t in bf16 0 forward weights 1; do
    run_1b "$([ "$t" = bf16 ] && echo bf16 || echo "tile_$t")" "$t"
  done
  python3 scripts/summarize_runs.py "$OUT" "${names[@]}" --after 45 | tee "$OUT/summary.md"
fi
