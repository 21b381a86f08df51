#!/usr/bin/env bash
# Build the adahop image and run ./run_train.sh inside it, with the GPUs and this repository mounted.
#   NGPU=8 CONFIG_FILE=configs/llama1b_adahop.toml ./launch_docker.sh [--section.key value ...]
# IMAGE (default adahop:latest), BUILD=0 to skip the build, DOCKER_ARGS for extra `docker run` flags.
# Without NVIDIA GPUs it builds the CPU variant (TORCH_INDEX_URL=.../whl/cpu) and runs on CPU.
set -euo pipefail
REPO="$(cd "$(dirname "$0")" && pwd)"
IMAGE=${IMAGE:-adahop:latest}
CONFIG_FILE=${CONFIG_FILE:-configs/default.toml}

GPU_FLAGS=()
BUILD_ARGS=()
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  GPU_FLAGS=(--gpus all)
  NGPU=${NGPU:-$(nvidia-smi -L | wc -l)}
else
  BUILD_ARGS=(--build-arg TORCH_VERSION=2.13.0 --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu)
  NGPU=${NGPU:-1}
fi

if [ "${BUILD:-1}" != "0" ]; then
  docker build "${BUILD_ARGS[@]}" -t "$IMAGE" "$REPO"
fi

# shellcheck disable=SC2086
TTY_FLAGS=()
if [ -t 0 ] && [ -t 1 ]; then TTY_FLAGS=(-it); fi

exec docker run --rm "${TTY_FLAGS[@]}" "${GPU_FLAGS[@]}" \
  --ipc=host --shm-size=16g --ulimit memlock=-1 --ulimit stack=67108864 \
  -v "$REPO":/workspace/adahop -w /workspace/adahop \
  -e NGPU="$NGPU" -e CONFIG_FILE="$CONFIG_FILE" -e LOG_RANK="${LOG_RANK:-0}" \
  -e WANDB_API_KEY="${WANDB_API_KEY:-}" \
  ${DOCKER_ARGS:-} \
  "$IMAGE" ./run_train.sh "$@"
