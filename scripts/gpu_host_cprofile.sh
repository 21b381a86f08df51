#!/usr/bin/env bash
# One device call (carry .whl): cProfile of the 1B AdaHOP step at batch 1 (scripts/host_profile.py), where
# the GPU waits for the host; $OUT/host_profile.txt. Then scripts/profile_step.py at batch 4 ($OUT/profile_b4.txt).
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu_env.sh
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } | tee "$OUT/env.txt"
timeout 150 python3 scripts/host_profile.py --job.config_file configs/llama1b_adahop.toml --batch 1 --steps 3 \
  --rows 70 > "$OUT/host_profile.txt" 2>&1
echo "host_profile rc $?"; grep -a "ms / step" "$OUT/host_profile.txt"
if [ "${PROFILE_B4:-0}" = 1 ]; then
timeout 150 python3 scripts/profile_step.py --job.config_file configs/llama1b_adahop.toml --batch 4 --seq 2048 \
  --steps 5 --rows 45 > "$OUT/profile_b4.txt" 2>&1
echo "== batch 4 (rc $?)"; grep -a "^| \|profiled" "$OUT/profile_b4.txt" | head -14
fi
