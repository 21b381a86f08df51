#!/usr/bin/env bash
# One device call (carry .whl), ~6 minutes: the 1B config at batch BATCH (default 16) x 2048, where the host
# no longer sets the pace (scripts/gpu_batch_scaling.sh, docs/benchmarks.md session 8), against its peers in
# one call: BF16, torchtitan's float8 converter (tensorwise, compiled as float8 is meant to run) and AdaHOP with
# 128x128 right-operand scales (ADAHOP_TILE_B=1, the fastest setting at 8B shapes). STEPS (default 30) steps,
# 10 calibration steps, tokens/s after step 15 -> $OUT/summary.md.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu_env.sh
source scripts/gpu_e2e_runs.sh
device_header
export STEPS=${STEPS:-30}
batch=(--training.local_batch_size "${BATCH:-16}" --quantize.linear.mx.calibration.calibration_steps 10)
names=()
RUN_LIMIT=75 run_1b bf16 bf16 --training.local_batch_size "${BATCH:-16}"
RUN_LIMIT=120 run_1b float8 bf16 --training.local_batch_size "${BATCH:-16}" --model.converters quantize.linear.float8 \
  --quantize.linear.float8.filter_fqns output --compile.enable --compile.components model
RUN_LIMIT=95 run_1b adahop_tile1 1 "${batch[@]}"
python3 scripts/summarize_runs.py "$OUT" "${names[@]}" --after 15 | tee "$OUT/summary.md"
