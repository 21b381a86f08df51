# Sourced by the device scripts: one short run of the 1B config (BF16 or AdaHOP).
#   run_1b NAME TILE [extra torchtitan args...]: TILE "bf16" runs configs/llama1b_bf16.toml, else
#   configs/llama1b_adahop.toml with [quantize.linear.mx.kernels] tile_b = TILE (none, forward, weights, all);
#   STEPS steps (default 80), --debug.seed 1234, log every 5,
#   one validation at the end (none with VALIDATE=0), no checkpoint; log in $OUT/train_NAME.log, the run's folder /tmp/runs/NAME
#   (its adahop_plan.json copied to $OUT/plan_NAME.json). Appends NAME to the array `names`.
#   RUN_CONFIG=<toml> replaces the AdaHOP config (e.g. configs/llama1b_hadamard.toml).
run_1b() {
  local name=$1 tile=$2 cfg=${RUN_CONFIG:-configs/llama1b_adahop.toml}
  shift 2
  local tile_args=(--quantize.linear.mx.kernels.tile_b "$tile")
  local val_args=(--validation.freq "${STEPS:-80}" --validation.steps 3)
  [ "${VALIDATE:-1}" = 0 ] && val_args=(--validation.no-enable)
  [ "$tile" = bf16 ] && cfg=configs/llama1b_bf16.toml && tile_args=()
  CONFIG_FILE=$cfg timeout ${RUN_LIMIT:-300} \
    ./run_train.sh "${tile_args[@]}" --job.dump_folder "/tmp/runs/$name" --training.steps "${STEPS:-80}" --debug.seed 1234 \
    --metrics.log_freq 5 "${val_args[@]}" --checkpoint.no-enable \
    --metrics.no-enable-tensorboard "$@" > "$OUT/train_$name.log" 2>&1
  echo "$name exit $?, redone steps: $(grep -ac 'running the step again' "$OUT/train_$name.log")"
  cp "/tmp/runs/$name/adahop_plan.json" "$OUT/plan_$name.json" 2>/dev/null || true
  names+=("$name")
}
