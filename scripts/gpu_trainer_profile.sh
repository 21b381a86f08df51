#!/usr/bin/env bash
# One device call (carry .whl): why the trainer's 1B AdaHOP step (~0.36 s at batch 4) is slower than
# scripts/profile_step.py's (0.21 s; docs/benchmarks.md, session 7). torchtitan's profiler inside the real step:
#   1. the 1B config, BF16 and AdaHOP, STEPS (default 60) steps each with --profiling.enable_profiling (steps
#      STEPS-11 and STEPS-10 traced); scripts/trace_summary.py of each trace -> $OUT/trace_<name>.txt;
#   2. AdaHOP without activation checkpointing (same steps, not traced) -> tokens/s in $OUT/summary.md;
#   3. scripts/profile_step.py at batch 4 with the calibrated plan of run 1 (no AMP, no checkpointing)
#      -> $OUT/profile_plan_b4.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu_env.sh
source scripts/gpu_e2e_runs.sh
device_header
STEPS=${STEPS:-60}
# steps STEPS-11 and STEPS-10 traced: after calibration (30 steps), before the run's one validation (at STEPS)
prof=(--profiling.enable_profiling --profiling.profile_freq "$((STEPS - 10))" --profiling.profiler_warmup 2
      --profiling.profiler_active 2)
names=()
for t in bf16 0; do
  name=$([ "$t" = bf16 ] && echo bf16 || echo adahop)
  RUN_LIMIT=150 run_1b "$name" "$t" "${prof[@]}"
  trace=$(ls /tmp/runs/$name/profile_traces/iteration_*/rank0_trace.json 2>/dev/null | tail -1)
  [ -n "$trace" ] && python3 scripts/trace_summary.py "$trace" --rows 45 > "$OUT/trace_$name.txt" 2>&1
  head -14 "$OUT/trace_$name.txt" 2>/dev/null
done
RUN_LIMIT=150 run_1b adahop_no_ac 0 --activation_checkpoint.mode none
python3 scripts/summarize_runs.py "$OUT" "${names[@]}" --after 40 | tee "$OUT/summary.md"
[ -f "$OUT/plan_adahop.json" ] && timeout 100 python3 scripts/profile_step.py --job.config_file \
  configs/llama1b_adahop.toml --plan "$OUT/plan_adahop.json" --batch 4 --seq 2048 --steps 5 --rows 45 \
  > "$OUT/profile_plan_b4.txt" 2>&1
grep -a "^| \|profiled" "$OUT/profile_plan_b4.txt" 2>/dev/null | head -14
