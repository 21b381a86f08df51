#!/usr/bin/env bash
# One device call: the Llama-3.2-1B-shape model trained STEPS steps under BF16 and under AdaHOP
# (30-step calibration, seed table), same data, batch and schedule; tokens/s and peak memory of each,
# then the GPU kernel tests and one linear benchmark row. Results under $OUT.
# usage (device machine, repo root, .whl carried): bash scripts/gpu_compare_1b.sh
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu_env.sh
STEPS=${STEPS:-60}
device_header versions

for name in bf16 adahop; do
  CONFIG_FILE=configs/llama1b_$name.toml timeout 200 ./run_train.sh \
    --job.dump_folder "/tmp/runs/$name" --training.steps "$STEPS" --metrics.log_freq 5 \
    --validation.freq "$STEPS" --validation.steps 5 --checkpoint.no-enable --metrics.no-enable-tensorboard \
    > "$OUT/train_$name.log" 2>&1
  echo "$name exit $?" | tee -a "$OUT/env.txt"
done
cp /tmp/runs/adahop/adahop_plan.json "$OUT/" 2>/dev/null

python3 scripts/summarize_runs.py "$OUT" bf16 adahop --after 35 | tee "$OUT/summary.md"
grep -a "\[adahop\] plan" "$OUT/train_adahop.log" | head -2 | tee -a "$OUT/summary.md"

timeout 150 python3 -m pytest -q tests/kernels/test_gpu_path.py 2>&1 | tail -15 > "$OUT/gpu_tests.log"
timeout 120 python3 scripts/bench_linear.py --models llama3-8b --tokens 16384 --shapes up/gate \
  --modes hadamard none --sr 0 --no-baselines --skip-bandwidth --rep 30 > "$OUT/bench.log" 2>&1
tail -3 "$OUT/gpu_tests.log"; tail -15 "$OUT/bench.log"
