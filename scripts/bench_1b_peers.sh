#!/usr/bin/env bash
# Tokens/s and peak memory of the 1B config (configs/llama1b_*.toml) against its peers, back to back on one GPU,
# with ratios to BF16 eager from the same call -> $OUT/peers.md (OUT defaults to /tmp/out).
#
#   bash scripts/bench_1b_peers.sh                     # on a GPU machine with adahop installed
#   RUNS="bf16 adahop_c" BATCH=4 bash scripts/bench_1b_peers.sh
#
# Runs (RUNS, default all, in this order):
#   bf16       BF16, eager                          bf16_c     BF16, compiled (torch.compile of the model)
#   float8_c   torchtitan's float8 converter (tensorwise), compiled, as float8 is meant to run
#   adahop     AdaHOP (calibrated plan, seed table), eager
#   adahop_c   AdaHOP, compiled (calibration steps run eagerly, then the model is compiled)
#   hadamard_c every GEMM slot in hadamard mode (configs/llama1b_hadamard.toml), compiled
# BATCH (16) x 2048 tokens per step, STEPS (30) steps, CAL (10) calibration steps, TILE ([quantize.linear.mx.kernels]
# tile_b, default none; a list such as "none weights" runs each AdaHOP run once per setting, named <run>_<tile> for
# every setting but none), seed 1234; tokens/s is the mean of the logged steps after step AFTER (15), which leaves
# out the compilation. RUN_LIMIT (seconds per run, default 300) bounds each run. PROFILE=1 also traces the last
# step of the AdaHOP runs (torch.profiler; summarised by scripts/trace_summary.py into $OUT/trace_<run>.txt) and
# leaves that step's log line out of tokens/s; PROFILE=all traces every run.
case "${1:-}" in -h | --help) sed -n '2,/^[^#]/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;; esac
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu/env.sh
source scripts/gpu/run_1b.sh
device_header versions
export STEPS=${STEPS:-30}
B=${BATCH:-16}
adahop=(--training.local_batch_size "$B" --quantize.linear.mx.calibration.calibration_steps "${CAL:-10}")
compiled=(--compile.enable --compile.components model,loss)
until=()
peer=(--training.local_batch_size "$B")
if [ "${PROFILE:-0}" != 0 ]; then
  prof=(--profiling.enable_profiling --profiling.save_traces_folder prof --profiling.profile_freq "$STEPS")
  adahop+=("${prof[@]}")
  [ "$PROFILE" = all ] && peer+=("${prof[@]}")
  until=(--until $((STEPS - 5)))
fi
names=()
for run in ${RUNS:-bf16 bf16_c float8_c adahop adahop_c hadamard_c}; do
  case $run in
    bf16) run_1b bf16 bf16 "${peer[@]}" ;;
    bf16_c) run_1b bf16_c bf16 "${peer[@]}" "${compiled[@]}" ;;
    float8_c) run_1b float8_c bf16 "${peer[@]}" --model.converters quantize.linear.float8 \
                --quantize.linear.float8.filter_fqns output "${compiled[@]}" ;;
    adahop | adahop_c | hadamard_c)
      for tile in ${TILE:-none}; do
        name=$run; [ "$tile" = none ] || name=${run}_$tile
        args=("${adahop[@]}"); [ "$run" = adahop ] || args+=("${compiled[@]}")
        if [ "$run" = hadamard_c ]; then RUN_CONFIG=configs/llama1b_hadamard.toml run_1b "$name" "$tile" "${args[@]}"
        else run_1b "$name" "$tile" "${args[@]}"; fi
      done ;;
    *) echo "unknown run '$run' (allowed: bf16 bf16_c float8_c adahop adahop_c hadamard_c)" >&2; exit 2 ;;
  esac
done
python3 scripts/summarize_runs.py "$OUT" "${names[@]}" --after "${AFTER:-15}" "${until[@]}" | tee "$OUT/peers.md"
for name in "${names[@]}"; do
  trace=$(ls /tmp/runs/"$name"/prof/iteration_"$STEPS"/*rank0*.json 2>/dev/null | head -1)
  [ -n "$trace" ] && python3 scripts/trace_summary.py "$trace" --rows 25 --kernels "${KERNELS:-40}" > "$OUT/trace_$name.txt" 2>&1
done
