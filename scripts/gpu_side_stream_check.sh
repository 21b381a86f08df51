#!/usr/bin/env bash
# One device call (carry .whl), ~8 minutes: ADAHOP_SIDE_STREAM=1 (the weight gradient's operands written on a
# second stream beside the forward and the input-gradient GEMMs, docs/kernels.md).
#   1. every GPU kernel test (its own: same bits with and without, real streams) -> $OUT/gpu_tests.txt;
#   2. the 8B up/gate + down linear in hadamard mode, ADAHOP_TILE_B = 0 and 1, each with ADAHOP_SIDE_STREAM =
#      0 and 1, back to back -> $OUT/bench_tile<t>_side<s>.txt (BF16 measured in each run);
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu_env.sh
device_header
# every kernel test (the side-stream tests among them; the row-slot kernel changed its launch since its last GPU run)
timeout ${TEST_LIMIT:-280} python3 -m pytest -q -x -p no:cacheprovider tests/kernels 2>&1 | tail -8 | tee "$OUT/gpu_tests.txt"
for t in 0 1; do
  for s in 0 1; do
    ADAHOP_TILE_B=$t ADAHOP_SIDE_STREAM=$s timeout 80 python3 scripts/bench_linear.py --models llama3-8b \
      --tokens 16384 --shapes up/gate down --modes hadamard --sr 0 --no-baselines --skip-bandwidth --rep 30 \
      > "$OUT/bench_tile${t}_side$s.txt" 2>&1
    echo "== ADAHOP_TILE_B=$t ADAHOP_SIDE_STREAM=$s (rc $?)"; grep -a "^| llama" "$OUT/bench_tile${t}_side$s.txt" | head -6
  done
done
# 3. (E2E=0 skips) the 1B config 80 steps with ADAHOP_SIDE_STREAM = 0 and 1: tokens/s and peak memory (blocks the
#    side stream allocates stay in its pool) -> $OUT/summary.md
if [ "${E2E:-1}" != 0 ]; then
  source scripts/gpu_e2e_runs.sh
  names=()
  for s in 0 1; do ADAHOP_SIDE_STREAM=$s RUN_LIMIT=120 run_1b "side_$s" 0; done
  python3 scripts/summarize_runs.py "$OUT" "${names[@]}" --after 45 | tee "$OUT/summary.md"
fi
