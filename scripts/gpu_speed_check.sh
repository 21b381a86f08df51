#!/usr/bin/env bash
# One device call on nvidia-h200-x2 (issue 5), two GPUs used side by side:
#   GPU 0: 1B BF16 on one GPU (batch 8 x 2048, 30 steps), then the 8B up/gate linear benchmark;
#   GPU 1: 1B AdaHOP on one GPU (same, 10 calibration steps), then scripts/profile_step.py on the 1B;
#   then the GPU tests of the kernels and the fast path.
# Results: $OUT/summary.md, $OUT/logs.tar.gz.
# usage (device machine, repo root, carry .whl and .gpu_inputs): bash scripts/gpu_speed_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu_env.sh
STEPS=${STEPS:-30}
LOGS=/tmp/speed_logs; rm -rf "$LOGS"; mkdir -p "$LOGS"
trap 'tar czf "$OUT/logs.tar.gz" -C "$LOGS" .' EXIT
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'; } | tee "$LOGS/env.txt"
COMMON=(--training.steps "$STEPS" --training.local_batch_size 8 --metrics.log_freq 1 --validation.freq "$STEPS"
        --validation.steps 5 --metrics.no-enable-tensorboard --debug.seed 1234 --checkpoint.no-enable)
gpu0() {
  CUDA_VISIBLE_DEVICES=0 NGPU=1 CONFIG_FILE=configs/llama1b_bf16.toml timeout 150 ./run_train.sh \
    --job.dump_folder /tmp/runs/bf16 "${COMMON[@]}" > "$LOGS/train_bf16.log" 2>&1
  echo "bf16 exit $?" >> "$LOGS/env.txt"
  if [ -n "${FLOAT8:-}" ]; then  # torchtitan's float8 converter (torchao, tensorwise), compiled as it is meant to run
    CUDA_VISIBLE_DEVICES=0 NGPU=1 CONFIG_FILE=configs/llama1b_bf16.toml timeout 240 ./run_train.sh \
      --job.dump_folder /tmp/runs/float8 "${COMMON[@]}" --model.converters quantize.linear.float8 \
      --quantize.linear.float8.filter_fqns output --compile.enable --compile.components model \
      > "$LOGS/train_float8.log" 2>&1
    echo "float8 exit $?" >> "$LOGS/env.txt"
  fi
  [ -n "${NO_BENCH:-}" ] && return
  CUDA_VISIBLE_DEVICES=0 timeout 200 python3 scripts/bench_linear.py --models llama3-8b --tokens 16384 \
    --shapes up/gate --modes hadamard inner_outlier_extract_left inner_outlier_extract_right none --sr 0 \
    --no-baselines --skip-bandwidth --rep 30 > "$LOGS/bench.log" 2>&1
  echo "bench exit $?" >> "$LOGS/env.txt"
}
gpu1() {
  CUDA_VISIBLE_DEVICES=1 NGPU=1 CONFIG_FILE=configs/llama1b_adahop.toml timeout 200 ./run_train.sh \
    --job.dump_folder /tmp/runs/adahop "${COMMON[@]}" --quantize.linear.mx.calibration.calibration_steps 10 \
    > "$LOGS/train_adahop.log" 2>&1
  echo "adahop exit $?" >> "$LOGS/env.txt"
  PLAN=$(ls .gpu_inputs/plan_1b.json 2>/dev/null)
  CUDA_VISIBLE_DEVICES=1 timeout 150 python3 scripts/profile_step.py --job.config_file configs/llama1b_adahop.toml \
    ${PLAN:+--plan $PLAN} --batch 8 --seq 2048 --steps 3 --rows 30 > "$LOGS/profile.txt" 2>&1
  echo "profile exit $?" >> "$LOGS/env.txt"
}
gpu0 & gpu1 & wait
CUDA_VISIBLE_DEVICES=0 timeout 170 python3 -m pytest -q -x ${GPU_TESTS:-tests/kernels} 2>&1 | tail -15 > "$LOGS/gpu_tests.log"
{ cat "$LOGS/env.txt"; echo
  python3 scripts/summarize_runs.py "$LOGS" bf16 adahop float8 --after 15
  grep -a "\[adahop\] plan (" "$LOGS/train_adahop.log" | head -1
  grep -a "running the step again" "$LOGS/train_adahop.log" | head -3
  echo; grep -A6 "^| recipe" "$LOGS/profile.txt"; grep -A8 "^| group" "$LOGS/profile.txt"; grep "GPU busy" "$LOGS/profile.txt"
  echo; tail -12 "$LOGS/bench.log"; echo; tail -4 "$LOGS/gpu_tests.log"; } > "$OUT/summary.md" 2>&1
cat "$OUT/summary.md"
