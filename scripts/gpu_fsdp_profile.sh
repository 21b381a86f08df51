#!/usr/bin/env bash
# One device call on nvidia-h200-x2 (issue 5/9 follow-up): where the AdaHOP step loses time under FSDP.
# scripts/profile_step.py on the 1B, once on one GPU and once with FSDP2 over both GPUs (same tokens per
# GPU), each with its BF16 baseline in the same run. Results: $OUT/profile_1gpu.txt, $OUT/profile_fsdp.txt.
# usage (device machine, repo root, carry .whl and .gpu_inputs): bash scripts/gpu_fsdp_profile.sh
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu_env.sh
PLAN=$(ls .gpu_inputs/plan_1b.json 2>/dev/null)
ARGS=(--job.config_file configs/llama1b_adahop.toml ${PLAN:+--plan $PLAN} --batch "${BATCH:-8}" --seq 2048 --steps 3 --rows 40)
CUDA_VISIBLE_DEVICES=0 timeout 200 python3 scripts/profile_step.py "${ARGS[@]}" > "$OUT/profile_1gpu.txt" 2>&1
timeout 300 python3 -m torch.distributed.run --nproc_per_node 2 --local-ranks-filter 0 \
  scripts/profile_step.py --fsdp "${ARGS[@]}" > "$OUT/profile_fsdp.txt" 2>&1
for f in "$OUT"/profile_*.txt; do echo "== $f"; grep -A5 "^| recipe" "$f"; grep -A8 "^| group" "$f"; grep "GPU busy" "$f"; done
