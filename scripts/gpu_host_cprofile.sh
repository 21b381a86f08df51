#!/usr/bin/env bash
# One device call (carry .whl): cProfile of the 1B AdaHOP step at batch 1 (scripts/host_profile.py), where
# the GPU waits for the host; $OUT/host_profile.txt. (profile_step.py by batch: scripts/gpu_host_profile.sh.)
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu_env.sh
device_header
timeout 150 python3 scripts/host_profile.py --job.config_file configs/llama1b_adahop.toml --batch 1 --steps 3 \
  --rows 70 > "$OUT/host_profile.txt" 2>&1
echo "host_profile rc $?"; grep -a "ms / step" "$OUT/host_profile.txt"
