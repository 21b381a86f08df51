#!/usr/bin/env bash
# The GPU tasks of adahop, one entry point. Run from the repository root on a GPU machine (through the device tool:
# carry .whl, made by scripts/fetch_device_wheels.sh); results go under $OUT (default /tmp/out).
#
#   bash scripts/gpu.sh tests [pytest args]   the GPU tests: tests/kernels, the compiled layers, the GPU training run
#   bash scripts/gpu.sh bench [args]          8B-shape linear speed against BF16 (scripts/bench_linear.py)
#   bash scripts/gpu.sh peers                 the 1B config against BF16 / compiled float8 (scripts/bench_1b_peers.sh)
#   bash scripts/gpu.sh grouped [args]        MoE expert grouped GEMMs against BF16 (scripts/bench_grouped.py)
#   bash scripts/gpu.sh attention             MXFP4 attention kernels: GPU tests, against BF16 SDPA, the 1B at batch 16
#   bash scripts/gpu.sh moe                   MoE small (MXFP4 grouped GEMMs) and MXFP4 attention, short runs
#   bash scripts/gpu.sh fsdp                  FSDP over 2 GPUs: scaling, resume, plan agreement (2-GPU machine)
#   bash scripts/gpu.sh quality start|wait|collect|stop ...   the quality experiment, across device calls
#   bash scripts/gpu.sh smoke [overrides]     the 1B AdaHOP config trains 60 steps and writes its plan
#   bash scripts/gpu.sh deficient [STEPS]     where real training meets MXFP4 blocks fp8 cannot hold
#
# Each task's own script is scripts/gpu/<task>.sh (its header says what it writes); scripts/gpu/env.sh is their
# library (results folder, carried wheels, the device header).
set -uo pipefail
cd "$(dirname "$0")/.."
task=${1:-}
[ $# -gt 0 ] && shift
case $task in
  tests)
    source scripts/gpu/env.sh
    device_header versions
    python3 -m pytest -q tests/kernels tests/test_compile.py tests/test_compile_moe_attention.py tests/test_train_gpu.py \
      "$@" 2>&1 | tee "$OUT/tests.txt" | tail -20 ;;
  bench)
    source scripts/gpu/env.sh
    device_header versions
    python3 scripts/bench_linear.py --models llama3-8b --tokens 16384 --modes hadamard --sr 0 --no-baselines \
      --skip-bandwidth --rep 20 --tile-b none weights "$@" 2>&1 | tee "$OUT/bench_linear.txt" | grep -a "^| \|^#" ;;
  grouped)
    source scripts/gpu/env.sh
    device_header versions
    python3 scripts/bench_grouped.py "$@" 2>&1 | tee "$OUT/bench_grouped.txt" ;;
  peers) exec bash scripts/bench_1b_peers.sh "$@" ;;
  attention | moe | fsdp | quality | smoke | deficient) exec bash "scripts/gpu/$task.sh" "$@" ;;
  -h | --help | help)
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' ;;
  *)
    echo "scripts/gpu.sh: unknown task '$task'; allowed: tests bench grouped attention peers moe fsdp quality smoke deficient (--help)" >&2
    exit 2 ;;
esac
