#!/usr/bin/env bash
# One device call: MoE small (32 experts) BF16 vs AdaHOP with MXFP4 grouped GEMMs, and the 1B model
# with MXFP4 attention, short runs; tokens/s, memory, loss curves. Results under $OUT.
# usage (device machine, repo root, .whl carried): bash scripts/gpu.sh moe      (FA=0: the MoE runs only;
# PROFILE=1: step 30 of the AdaHOP MoE runs traced, their last log line left out of tokens/s;
# RUNS: which MoE runs, in order, default "bf16 adahop": bf16, bf16_c (BF16 compiled), adahop, adahop_c
# (AdaHOP compiled: the calibration steps run eagerly, then the model is compiled); ratios are to the first)
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
prof=()  # PROFILE=1: trace step 30 of the AdaHOP runs -> $OUT/trace_moe_<run>.txt
[ "${PROFILE:-0}" != 0 ] && prof=(--profiling.enable_profiling --profiling.save_traces_folder prof --profiling.profile_freq 30)
compiled=(--compile.enable --compile.components model,loss)
names=()
for r in ${RUNS:-bf16 adahop}; do
  case $r in
    bf16) args=() ;;
    bf16_c) args=("${compiled[@]}") ;;
    adahop) args=(--quantize.linear.mx.calibration.calibration_steps 10 "${prof[@]}") ;;
    adahop_c) args=(--quantize.linear.mx.calibration.calibration_steps 10 "${prof[@]}" "${compiled[@]}") ;;
    *) echo "unknown run '$r' (allowed: bf16 bf16_c adahop adahop_c)" >&2; exit 2 ;;
  esac
  config=configs/moe_small_bf16.toml; limit=130
  case $r in adahop*) config=configs/moe_small_adahop.toml; limit=200 ;; esac
  run "moe_$r" "$config" "$limit" --training.steps 30 --validation.freq 30 --validation.steps 4 "${args[@]}"
  names+=("moe_$r")
  trace=$(ls /tmp/runs/moe_$r/prof/iteration_30/*rank0*.json 2>/dev/null | head -1)
  [ -n "$trace" ] && python3 scripts/trace_summary.py "$trace" --rows 25 --kernels 30 > "$OUT/trace_moe_$r.txt" 2>&1
  [ -f "/tmp/runs/moe_$r/adahop_plan.json" ] && cp "/tmp/runs/moe_$r/adahop_plan.json" "$OUT/plan_moe_$r.json"
done
if [ "${FA:-1}" != 0 ]; then
  run fa_adahop configs/llama1b_adahop_fa.toml 120 --training.steps 15 --training.local_batch_size 1 \
    --validation.no-enable --quantize.linear.mx.calibration.calibration_steps 5
fi
until=(); [ "${PROFILE:-0}" != 0 ] && until=(--until 25)
python3 scripts/summarize_runs.py "$OUT" "${names[@]}" --after 12 "${until[@]}" | tee "$OUT/summary.md"
[ "${FA:-1}" != 0 ] && python3 scripts/summarize_runs.py "$OUT" fa_adahop --after 6 | tee -a "$OUT/summary.md"
grep -a "\[adahop\] plan (" "$OUT"/train_*.log | tee -a "$OUT/summary.md"
for f in "$OUT"/train_*.log; do echo "== $f"; grep -a -E "Error|error" "$f" | tail -3; done
