#!/usr/bin/env bash
# One short device call (carry .whl) on 128x128 scales for the right operand (ADAHOP_TILE_B, docs/kernels.md):
#   1. the GPU tests of the tile layout with the wide (e5m2) left operand, and of growing row slots;
#   2. the 8B up/gate + down linear benchmark in hadamard mode with ADAHOP_TILE_B = 0, weights and 1, one
#      run each (same machine, back to back), tables in $OUT/bench_tile_<value>.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu_env.sh
python3 -m pytest -q tests/kernels -k "tile or 128x128 or row_slots or fix_rows" -p no:cacheprovider 2>&1 \
  | tail -15 | tee "$OUT/gpu_tests.txt"
for t in 0 weights 1; do
  ADAHOP_TILE_B=$t timeout ${BENCH_LIMIT:-80} python3 scripts/bench_linear.py --models llama3-8b --tokens 16384 \
    --shapes up/gate down --modes hadamard --sr 0 --no-baselines --skip-bandwidth --rep 30 > "$OUT/bench_tile_$t.txt" 2>&1
  echo "== ADAHOP_TILE_B=$t (rc $?)"; grep -a "^| llama\|gemm stats\|Error" "$OUT/bench_tile_$t.txt" | head -8
done
