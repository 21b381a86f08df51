#!/usr/bin/env bash
# Train with adahop on upstream torchtitan (torchrun; one process per GPU, or CPU ranks over gloo).
#   ./run_train.sh                                   # configs/default.toml, all GPUs (or 1 CPU rank)
#   NGPU=2 CONFIG_FILE=configs/default.toml ./run_train.sh --training.steps 50
# Extra arguments are torchtitan CLI overrides (--section.key value).
# NGPU: ranks to start (default: number of CUDA GPUs, or 1 without GPU). LOG_RANK: ranks whose
# output is shown (default 0; e.g. LOG_RANK=0,1). PYTHON: interpreter (default python, else python3).
set -euo pipefail

if [ -z "${PYTHON:-}" ]; then
  if command -v python >/dev/null 2>&1; then PYTHON=python; else PYTHON=python3; fi
fi
CONFIG_FILE=${CONFIG_FILE:-"configs/default.toml"}
if [ -z "${NGPU:-}" ]; then
  NGPU=$("$PYTHON" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 1)")
  [ "$NGPU" -ge 1 ] 2>/dev/null || NGPU=1
fi
LOG_RANK=${LOG_RANK:-0}
# as upstream torchtitan's launcher: fewer fragmented blocks in the CUDA caching allocator
export PYTORCH_ALLOC_CONF=${PYTORCH_ALLOC_CONF:-"expandable_segments:True"}

exec "$PYTHON" -m torch.distributed.run \
  --nproc_per_node="$NGPU" --rdzv_backend c10d --rdzv_endpoint="localhost:0" \
  --local-ranks-filter "$LOG_RANK" --role rank --tee 3 \
  -m adahop.train --job.config_file "$CONFIG_FILE" "$@"
