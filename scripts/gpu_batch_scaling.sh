#!/usr/bin/env bash
# One device call (carry .whl), ~7 minutes: does the 1B AdaHOP step stop being bound by the host when each
# linear has more work? (docs/benchmarks.md, session 8: at batch 4 the trainer's AdaHOP step holds ~160 ms of
# kernels in ~400 ms.)
#   1. the GPU path's linear tests (outlier extraction's indices are now a set, adahop/outliers.py);
#   2. the 1B config at batch BATCH (default 16) x 2048, STEPS (default 40) steps, 10 calibration steps, tokens/s
#      after step 20: BF16, AdaHOP (the calibrated plan; ADAHOP_SIDE_STREAM 0 and 1) and the uniform Hadamard
#      config (every slot on the fp8 path: what the kernels give without the plan's BF16 slots) -> $OUT/summary.md;
#   3. (PLAN=<json> given) scripts/profile_step.py at batch 4 with that plan -> $OUT/profile_plan_b4.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu_env.sh
source scripts/gpu_e2e_runs.sh
device_header
timeout ${TEST_LIMIT:-120} python3 -m pytest -q -x -p no:cacheprovider tests/kernels/test_gpu_path.py 2>&1 | tail -3 \
  | tee "$OUT/gpu_tests.txt"
export STEPS=${STEPS:-40}
batch=(--training.local_batch_size "${BATCH:-16}" --quantize.linear.mx.calibration.calibration_steps 10)
names=()
RUN_LIMIT=110 run_1b bf16 bf16 "${batch[@]}"
for s in 0 1; do ADAHOP_SIDE_STREAM=$s RUN_LIMIT=130 run_1b "adahop_side$s" 0 "${batch[@]}"; done
RUN_CONFIG=configs/llama1b_hadamard.toml RUN_LIMIT=110 run_1b hadamard 0 "${batch[@]}"
python3 scripts/summarize_runs.py "$OUT" "${names[@]}" --after 20 | tee "$OUT/summary.md"
if [ -n "${PLAN:-}" ]; then
  timeout 100 python3 scripts/profile_step.py --job.config_file configs/llama1b_adahop.toml --plan "$PLAN" --batch 4 \
    --seq 2048 --steps 5 --rows 45 > "$OUT/profile_plan_b4.txt" 2>&1
  grep -a "^| \|profiled" "$OUT/profile_plan_b4.txt" | head -8
fi
