#!/usr/bin/env bash
# One device call on nvidia-h200-x2: FSDP with NCCL over 2 GPUs, Llama-3.2-1B shape.
#   1. BF16 and AdaHOP on one GPU with local batch 8 (side by side, one per GPU);
#   2. BF16 and AdaHOP on two GPUs with local batch 4 (the same global batch), every rank's log kept,
#      AdaHOP checkpointed at the half-way step;
#   3. the 2-GPU AdaHOP run resumed from that checkpoint on 2 GPUs (must repeat the losses);
#   4. the same checkpoint resumed on 1 GPU: refused (data loader), then accepted with the data loader
#      excluded.
# scripts/fsdp_check.py turns the logs into the report ($OUT/summary.md); all logs in $OUT/logs.tar.gz.
# usage (device machine, repo root, .whl carried): bash scripts/gpu.sh fsdp
set -uo pipefail
cd "$(dirname "$0")/../.."  # the repository root
source scripts/gpu/env.sh
STEPS=${STEPS:-30}; CAL=${CAL:-10}; HALF=$((STEPS / 2))
DEADLINE=$(( $(date +%s) + ${BUDGET_S:-560} ))
LOGS=/tmp/fsdp_logs; RUNS=/tmp/fsdp_runs; rm -rf "$LOGS" "$RUNS"; mkdir -p "$LOGS" "$RUNS"
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; nvidia-smi topo -m
  python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__, "gpus", torch.cuda.device_count())'
  env | grep -E '^(NCCL|NVSHMEM|TORCH_SYMM)' ; } > "$LOGS/env.txt" 2>&1
cat "$LOGS/env.txt"

COMMON=(--training.steps "$STEPS" --metrics.log_freq 1 --validation.freq "$STEPS" --validation.steps 5
        --metrics.no-enable-tensorboard --debug.seed 1234)
ADAHOP=(--quantize.linear.mx.calibration.calibration_steps "$CAL")
NOCKPT=(--checkpoint.no-enable)

# train NAME NGPU DEVICES CONFIG TIMEOUT_S [overrides...]; LOG_RANK from the environment (default 0)
train() {
  local name=$1 ngpu=$2 devs=$3 cfg=$4 tmo=$5; shift 5
  local left=$(( DEADLINE - $(date +%s) - 15 ))
  [ "$left" -lt "$tmo" ] && tmo=$left
  if [ "$tmo" -le 20 ]; then echo "$name skipped (no time left)" | tee -a "$LOGS/exits.txt"; return; fi
  local t0=$(date +%s)
  CUDA_VISIBLE_DEVICES=$devs NGPU=$ngpu LOG_RANK=${LOG_RANK:-0} CONFIG_FILE=configs/llama1b_$cfg.toml \
    timeout "$tmo" ./run_train.sh --job.dump_folder "$RUNS/$name" "${COMMON[@]}" "$@" > "$LOGS/train_$name.log" 2>&1
  echo "$name exit $? after $(( $(date +%s) - t0 )) s (cap $tmo s)" | tee -a "$LOGS/exits.txt"
}
finish() {
  cp "$RUNS"/adahop_2gpu/adahop_plan.json "$LOGS/plan_adahop_2gpu.json" 2>/dev/null
  cp "$RUNS"/adahop_1gpu/adahop_plan.json "$LOGS/plan_adahop_1gpu.json" 2>/dev/null
  python3 scripts/fsdp_check.py "$LOGS" --half "$HALF" --cal "$CAL" > "$OUT/summary.md" 2>&1
  cat "$OUT/summary.md"
  tar czf "$OUT/logs.tar.gz" -C "$LOGS" .
}
trap finish EXIT

# 1. one GPU each, global batch 8 x 2048
train bf16_1gpu 1 0 bf16 150 --training.local_batch_size 8 "${NOCKPT[@]}" &
train adahop_1gpu 1 1 adahop 200 --training.local_batch_size 8 "${NOCKPT[@]}" "${ADAHOP[@]}" &
wait
# 2. two GPUs, local batch 4 (same global batch)
LOG_RANK=0,1 train bf16_2gpu 2 0,1 bf16 110 --training.local_batch_size 4 "${NOCKPT[@]}"
LOG_RANK=0,1 train adahop_2gpu 2 0,1 adahop 170 --training.local_batch_size 4 "${ADAHOP[@]}" \
  --checkpoint.enable --checkpoint.interval "$HALF" --checkpoint.last_save_model_only
ls -la "$RUNS/adahop_2gpu/checkpoint" >> "$LOGS/exits.txt" 2>&1
# 3. resume on 2 GPUs from the half-way checkpoint (hard links: the saved files are only read)
for d in adahop_resume one_refused one_resumed; do
  mkdir -p "$RUNS/$d/checkpoint" && cp -al "$RUNS/adahop_2gpu/checkpoint/step-$HALF" "$RUNS/$d/checkpoint/"
done
# the 1-GPU refusal needs no GPU work: run it beside the 2-GPU resume
train one_refused 1 0 adahop 60 --training.local_batch_size 8 "${ADAHOP[@]}" --checkpoint.enable &
LOG_RANK=0,1 train adahop_resume 2 0,1 adahop 130 --training.local_batch_size 4 "${ADAHOP[@]}" \
  --checkpoint.enable --checkpoint.interval 1000 --checkpoint.last_save_model_only
wait
# 4. the 2-GPU checkpoint on 1 GPU with the data loader excluded: 5 steps
train one_resumed 1 0 adahop 110 --training.local_batch_size 8 "${ADAHOP[@]}" --training.steps $((HALF + 5)) \
  --checkpoint.enable --checkpoint.interval 1000 --checkpoint.last_save_model_only \
  --checkpoint.exclude_from_loading dataloader
