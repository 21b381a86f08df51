#!/usr/bin/env bash
# One device call on nvidia-h200-x2 (issue 5): the 1B model with torch.compile (model), BF16 on GPU 0 and
# AdaHOP on GPU 1 side by side, batch 8 x 2048, 30 steps (10 calibration steps): tokens/s and memory.
# Results: $OUT/summary.md, $OUT/logs.tar.gz.
# usage (device machine, repo root, carry .whl): bash scripts/gpu_compile_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu_env.sh
STEPS=${STEPS:-30}
LOGS=/tmp/compile_logs; rm -rf "$LOGS"; mkdir -p "$LOGS"
trap 'tar czf "$OUT/logs.tar.gz" -C "$LOGS" .' EXIT
date -u > "$LOGS/env.txt"
COMMON=(--training.steps "$STEPS" --training.local_batch_size 8 --metrics.log_freq 1 --validation.freq "$STEPS"
        --validation.steps 5 --metrics.no-enable-tensorboard --debug.seed 1234 --checkpoint.no-enable
        --compile.enable --compile.components model)
run() {  # run NAME GPU CONFIG [overrides]
  local name=$1 gpu=$2 cfg=$3; shift 3
  CUDA_VISIBLE_DEVICES=$gpu NGPU=1 CONFIG_FILE=configs/llama1b_$cfg.toml timeout 420 ./run_train.sh \
    --job.dump_folder "/tmp/runs/$name" "${COMMON[@]}" "$@" > "$LOGS/train_$name.log" 2>&1
  echo "$name exit $?" >> "$LOGS/env.txt"
}
run bf16_compiled 0 bf16 &
run adahop_compiled 1 adahop --quantize.linear.mx.calibration.calibration_steps 10 &
wait
{ cat "$LOGS/env.txt"; python3 scripts/summarize_runs.py "$LOGS" bf16_compiled adahop_compiled --after 15
  grep -a "Compiling\|graph break\|Error" "$LOGS"/train_adahop_compiled.log | sort | uniq -c | sort -rn | head -8
  tail -5 "$LOGS/train_adahop_compiled.log"; } > "$OUT/summary.md" 2>&1
cat "$OUT/summary.md"
