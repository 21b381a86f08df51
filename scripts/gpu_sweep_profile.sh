#!/usr/bin/env bash
# One device call on nvidia-h200-x2 (issues 7 and 5):
#   1. online sweep of configs/sweep/tables.toml on the 100M model, two tables at a time (--gpus 0,1);
#   2. offline sweep of the same tables from the seed run's checkpoint (GPU 0), beside
#   3. scripts/profile_step.py on the 1B model with a calibrated plan (GPU 1).
# Results: $OUT/sweep.tar.gz (reports, PNGs, logs; no checkpoints), $OUT/profile.txt.
# usage (device machine, repo root, carry .whl and .gpu_inputs): bash scripts/gpu_sweep_profile.sh
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu_env.sh
STEPS=${STEPS:-200}
SW=/tmp/sweep; rm -rf "$SW"; mkdir -p "$SW"
trap 'tar czf "$OUT/sweep.tar.gz" --exclude=checkpoint -C "$SW" .' EXIT
date -u | tee "$SW/date.txt"
timeout 330 python3 -m adahop.sweep --online --gpus 0,1 --tables configs/sweep/tables.toml --out "$SW/online" \
  --job.config_file configs/quality_100m.toml --training.steps "$STEPS" --training.local_batch_size 16 \
  --lr_scheduler.warmup_steps 40 --metrics.log_freq 10 --metrics.no-enable-tensorboard \
  --validation.freq 50 --validation.steps 6 --quantize.linear.mx.calibration.calibration_steps 20 \
  --checkpoint.enable --checkpoint.interval 100000 --checkpoint.last_save_model_only > "$SW/online.log" 2>&1
echo "online exit $?" | tee -a "$SW/date.txt"
tail -12 "$SW/online.log"
CUDA_VISIBLE_DEVICES=0 timeout 200 python3 -m adahop.sweep --tables configs/sweep/tables.toml --out "$SW/offline" \
  --checkpoint_path "$SW/online/runs/seed/checkpoint/step-$STEPS" --steps 2 --max_tokens 4096 \
  --job.config_file configs/quality_100m.toml --training.local_batch_size 4 > "$SW/offline.log" 2>&1 &
PLAN=$(ls .gpu_inputs/plan_1b.json 2>/dev/null)
CUDA_VISIBLE_DEVICES=1 timeout 200 python3 scripts/profile_step.py --job.config_file configs/llama1b_adahop.toml \
  ${PLAN:+--plan $PLAN} --batch 8 --seq 2048 --steps 3 --rows 40 > "$OUT/profile.txt" 2>&1
wait
echo "offline done" | tee -a "$SW/date.txt"
head -40 "$SW/offline.log" | grep -v Warn
head -30 "$OUT/profile.txt"
