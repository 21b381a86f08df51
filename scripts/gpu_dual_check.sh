#!/usr/bin/env bash
# One device call (carry .whl) on one read per operand (ADAHOP_DUAL_QUANT, docs/kernels.md):
#   1. the GPU tests of fused_quantize_dual and of the linear with it (bit-identical y/gx/gw);
#   2. the quantizer table at 16384 x 4096 (two kernels against one read, for x in forward and g in
#      backward), $OUT/bench_quantizers.txt;
#   3. the 8B up/gate + down linear in hadamard mode with ADAHOP_DUAL_QUANT = 0 and 1, back to back,
#      $OUT/bench_dual_<value>.txt (speedups over BF16 measured in the same run);
#   4. with E2E=1, the 1B-shape model trained 60 steps under AdaHOP with ADAHOP_DUAL_QUANT = 0 and 1.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu_env.sh
device_header versions
timeout 300 python3 -m pytest -q tests/kernels -k "dual or quantized_once" -p no:cacheprovider 2>&1 \
  | tail -15 | tee "$OUT/gpu_tests.txt"
B="python3 scripts/bench_linear.py --models llama3-8b --tokens 16384 --shapes up/gate down --modes hadamard --sr 0 --no-baselines --rep 30"
timeout ${BENCH_LIMIT:-120} $B --shapes down > "$OUT/bench_quantizers.txt" 2>&1
echo "== quantizers (rc $?)"; grep -a "both axes\|copy" "$OUT/bench_quantizers.txt" | head -12
for d in 0 1; do
  ADAHOP_DUAL_QUANT=$d timeout ${BENCH_LIMIT:-120} $B --skip-bandwidth > "$OUT/bench_dual_$d.txt" 2>&1
  echo "== ADAHOP_DUAL_QUANT=$d (rc $?)"; grep -a "^| llama\|gemm stats\|Error" "$OUT/bench_dual_$d.txt" | head -8
done
if [ "${E2E:-0}" = 1 ]; then
  for d in 0 1; do
    ADAHOP_DUAL_QUANT=$d CONFIG_FILE=configs/llama1b_adahop.toml timeout 200 ./run_train.sh \
      --job.dump_folder "/tmp/runs/dual$d" --training.steps 60 --metrics.log_freq 5 --validation.freq 60 \
      --validation.steps 5 --checkpoint.no-enable --metrics.no-enable-tensorboard > "$OUT/train_dual$d.log" 2>&1
    echo "train dual=$d exit $?"
  done
  python3 scripts/summarize_runs.py "$OUT" dual0 dual1 --after 35 | tee "$OUT/summary.md"
fi
