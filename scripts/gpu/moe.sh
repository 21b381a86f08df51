#!/usr/bin/env bash
# One device call: MoE small (32 experts) BF16 vs AdaHOP with MXFP4 grouped GEMMs, and the 1B model
# with MXFP4 attention, short runs; tokens/s, memory, loss curves. Results under $OUT.
# usage (device machine, repo root, .whl carried): bash scripts/gpu.sh moe      (FA=0: the MoE runs only;
# PROFILE=1: step 30 of the AdaHOP MoE run traced, its last log line left out of tokens/s)
set -uo pipefail
cd "$(dirname "$0")/../.."  # the repository root
source scripts/gpu/env.sh
device_header
COMMON=(--metrics.log_freq 5 --checkpoint.no-enable --metrics.no-enable-tensorboard)
run() {  # name config seconds args...
  local name=$1 config=$2 limit=$3; shift 3
  CONFIG_FILE=$config timeout "$limit" ./run_train.sh --job.dump_folder "/tmp/runs/$name" "${COMMON[@]}" "$@" \
    > "$OUT/train_$name.log" 2>&1
  echo "$name exit $?" | tee -a "$OUT/env.txt"
}
run moe_bf16 configs/moe_small_bf16.toml 100 --training.steps 30 --validation.freq 30 --validation.steps 4
prof=()  # PROFILE=1: trace step 30 of the AdaHOP run -> $OUT/trace_moe_adahop.txt
[ "${PROFILE:-0}" != 0 ] && prof=(--profiling.enable_profiling --profiling.save_traces_folder prof --profiling.profile_freq 30)
run moe_adahop configs/moe_small_adahop.toml 170 --training.steps 30 --validation.freq 30 --validation.steps 4 \
  --quantize.linear.mx.calibration.calibration_steps 10 "${prof[@]}"
trace=$(ls /tmp/runs/moe_adahop/prof/iteration_30/*rank0*.json 2>/dev/null | head -1)
[ -n "$trace" ] && python3 scripts/trace_summary.py "$trace" --rows 25 --kernels 30 > "$OUT/trace_moe_adahop.txt" 2>&1
if [ "${FA:-1}" != 0 ]; then
  run fa_adahop configs/llama1b_adahop_fa.toml 120 --training.steps 15 --training.local_batch_size 1 \
    --validation.no-enable --quantize.linear.mx.calibration.calibration_steps 5
fi
cp /tmp/runs/moe_adahop/adahop_plan.json "$OUT/moe_plan.json" 2>/dev/null
until=(); [ "${PROFILE:-0}" != 0 ] && until=(--until 25)
python3 scripts/summarize_runs.py "$OUT" moe_bf16 moe_adahop --after 12 "${until[@]}" | tee "$OUT/summary.md"
[ "${FA:-1}" != 0 ] && python3 scripts/summarize_runs.py "$OUT" fa_adahop --after 6 | tee -a "$OUT/summary.md"
grep -a "\[adahop\] plan (" "$OUT"/train_*.log | tee -a "$OUT/summary.md"
for f in "$OUT"/train_*.log; do echo "== $f"; grep -a -E "Error|error" "$f" | tail -3; done
