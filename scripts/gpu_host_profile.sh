#!/usr/bin/env bash
# One device call (carry .whl): is the 1B AdaHOP step bound by the host? scripts/profile_step.py on the 1B
# config (every slot hadamard, plain bf16 parameters, no FSDP, no activation checkpointing) at batch 8, 4 and
# 1 x 2048: ms per step of BF16 and AdaHOP, GPU busy (kernel time / wall time) and host time by op.
# A step time that does not shrink with the batch, and a GPU busy well below 100%, is launch overhead.
# Results: $OUT/profile_b<batch>.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu_env.sh
device_header
for b in ${BATCHES:-8 4 1}; do
  timeout 200 python3 scripts/profile_step.py --job.config_file configs/llama1b_adahop.toml --batch "$b" \
    --seq 2048 --steps 5 --rows 45 > "$OUT/profile_b$b.txt" 2>&1
  echo "== batch $b (rc $?)"; grep -a "^| \|profiled" "$OUT/profile_b$b.txt" | head -14
done
