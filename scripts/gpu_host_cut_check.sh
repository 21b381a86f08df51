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
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'; } | tee "$OUT/env.txt"
timeout ${TEST_LIMIT:-270} python3 -m pytest -q -x tests/kernels -p no:cacheprovider 2>&1 | tail -15 | tee "$OUT/gpu_tests.txt"
timeout 100 python3 scripts/profile_step.py --job.config_file configs/llama1b_adahop.toml --batch 4 --seq 2048 \
  --steps 5 --rows 45 > "$OUT/profile_b4.txt" 2>&1
echo "== profile batch 4 (rc $?)"; grep -a "^| \|profiled" "$OUT/profile_b4.txt" | head -14
STEPS=${STEPS:-80}
names=()
for t in bf16 ${TILES:-0 weights}; do
  cfg=configs/llama1b_adahop.toml; [ "$t" = bf16 ] && cfg=configs/llama1b_bf16.toml
  name=tile_$t; [ "$t" = bf16 ] && name=bf16
  ADAHOP_TILE_B=$([ "$t" = bf16 ] && echo 0 || echo "$t") CONFIG_FILE=$cfg timeout 150 ./run_train.sh \
    --job.dump_folder "/tmp/runs/$name" --training.steps "$STEPS" --debug.seed 1234 --metrics.log_freq 5 \
    --validation.freq "$STEPS" --validation.steps 3 --checkpoint.no-enable --metrics.no-enable-tensorboard \
    > "$OUT/train_$name.log" 2>&1
  echo "$name exit $?, redone steps: $(grep -ac 'running the step again' "$OUT/train_$name.log")"
  names+=("$name")
done
python3 scripts/summarize_runs.py "$OUT" "${names[@]}" --after 45 | tee "$OUT/summary.md"
