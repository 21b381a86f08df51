#!/usr/bin/env bash
# GPU smoke test: the Llama-3.2-1B-shape AdaHOP config trains STEPS (default 60) steps with a
# 30-step calibration on NGPU GPUs (default: all), then checks that the plan was fixed and written.
# usage (device machine, repo root): bash scripts/gpu.sh smoke [--section.key value ...]
# Results (log, plan, tensorboard) under $OUT (default /tmp/out).
# Through the device tool: run(kind="nvidia-h100-x1", carry=[".whl"], command="bash scripts/gpu.sh smoke")
# (measured on 1x H100: ~0.9 s/step while calibrating, ~0.5 s/step after, 24 GiB; 60 steps ~2 min in all).
set -uo pipefail
cd "$(dirname "$0")/../.."  # the repository root
source scripts/gpu/env.sh
STEPS=${STEPS:-60}
DUMP="$OUT/llama1b_adahop"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/env.txt"

CONFIG_FILE=configs/llama1b_adahop.toml LOG_RANK=${LOG_RANK:-0} ./run_train.sh \
  --job.dump_folder "$DUMP" --training.steps "$STEPS" --metrics.log_freq 5 \
  --validation.freq 30 --validation.steps 5 --checkpoint.no-enable "$@" 2>&1 | tee "$OUT/train.log"
status=${PIPESTATUS[0]}

echo "---- summary"
grep -a "\[adahop\] plan" "$OUT/train.log" | tail -2
grep -a -E "step: *[0-9]+ " "$OUT/train.log" | sed -n '1p;$p'
grep -a "validate step" "$OUT/train.log" | sed -n '1p;$p'
if [ -f "$DUMP/adahop_plan.json" ]; then cp "$DUMP/adahop_plan.json" "$OUT/"; else echo "no plan file"; status=1; fi
grep -aq "\[adahop\] plan (calibration)" "$OUT/train.log" || { echo "plan summary missing"; status=1; }
exit "$status"
