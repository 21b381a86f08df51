#!/usr/bin/env bash
# One device call (carry .whl) after the host-time cuts of the row recomputation (adahop.kernels.row_fix,
# one GEMM for both row parts, no allocations for outputs not written):
#   1. every GPU kernel test (tests/kernels) -> $OUT/gpu_tests.txt;
#   2. scripts/profile_step.py on the 1B config at batch 4 (host-bound before: 298 ms/step) -> $OUT/profile_b4.txt;
#   3. the 1B config 80 steps under BF16 and AdaHOP with ADAHOP_TILE_B = each of TILES (default "0 weights"),
#      --debug.seed 1234, tokens/s after step 45, peak memory, steps redone -> $OUT/summary.md.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu_env.sh
device_header versions
timeout ${TEST_LIMIT:-270} python3 -m pytest -q -x tests/kernels -p no:cacheprovider 2>&1 | tail -15 | tee "$OUT/gpu_tests.txt"
timeout 100 python3 scripts/profile_step.py --job.config_file configs/llama1b_adahop.toml --batch 4 --seq 2048 \
  --steps 5 --rows 45 > "$OUT/profile_b4.txt" 2>&1
echo "== profile batch 4 (rc $?)"; grep -a "^| \|profiled" "$OUT/profile_b4.txt" | head -14
source scripts/gpu_e2e_runs.sh
names=()
for t in bf16 ${TILES:-0 weights}; do
  RUN_LIMIT=150 run_1b "$([ "$t" = bf16 ] && echo bf16 || echo "tile_$t")" "$t"
done
python3 scripts/summarize_runs.py "$OUT" "${names[@]}" --after 45 | tee "$OUT/summary.md"
