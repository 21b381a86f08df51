#!/usr/bin/env bash
# The quality experiment on a leased GPU machine, in the background across device calls.
#   bash scripts/gpu.sh quality start [RECIPES...]   start scripts/quality_experiment.py detached (setsid) on
#                                                    every GPU, then return; default: every recipe not yet in
#                                                    docs/quality/runs/
#   bash scripts/gpu.sh quality wait SECONDS         follow it for up to SECONDS; results so far go to $OUT
#   bash scripts/gpu.sh quality collect              write the report from the finished recipes into $OUT
#   bash scripts/gpu.sh quality stop RECIPES...      end those recipes' training (the others go on), e.g. when
#                                                    the lease cannot hold them all; their results are lost
# The machine is held only while calls follow each other (it goes back after 30 s idle), so call `wait`
# again at once after each return. Every call leaves in $OUT: status.txt and results.tar.gz (done.json and
# the log of each recipe); commit the done.json files as docs/quality/runs/<recipe>.json so that a later
# `start` runs only the recipes still missing (a stored result of another experiment is refused). The
# training text is the committed data/quality_corpus (configs/quality_100m.toml); carry .whl. Checkpoints are
# off on the device (the machine is bare at every lease, and a checkpoint cannot travel back): a recipe
# must finish within one lease. Environment: PER_GPU (recipes at once on each GPU, default 2), EXTRA (more
# overrides for every run; they become part of each result's signature).
# One H200 and 30 minutes of device time hold three or four recipes (three MXFP4 runs at ~90-110k tokens/s
# each, ~17-20 min; BF16 and float8 are faster); adahop_fa (MXFP4 attention) alone ran at 62-89k tokens/s on an
# H100, ~25 min for its 3100 steps: start it first in a fresh lease, alone. docs/quality/runs/ holds the
# finished ones.
set -uo pipefail
cd "$(dirname "$0")/../.."  # the repository root
source scripts/gpu/env.sh
RUN=/tmp/quality
ALL=(bf16 float8 adahop hadamard mxfp4 rht adahop_sr adahop_fa)
# the overrides of every run: part of each result's signature, so `start` and `collect` must pass the same
RUN_ARGS="--checkpoint.no-enable ${EXTRA:-}"

snapshot() {
  { date -u; nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader 2>/dev/null
    tail -3 "$RUN/driver.log" 2>/dev/null
    for d in "$RUN"/*/; do
      r=$(basename "$d"); [ -f "$d/train.log" ] || continue
      state=running; [ -f "$d/done.json" ] && state=done
      echo "$r ($state): $(grep -a 'step:' "$d/train.log" | grep -v validate | tail -1 | sed 's/\x1b\[[0-9;]*m//g' | cut -c1-160)"
    done; } > "$OUT/status.txt" 2>&1
  (cd "$RUN" && tar czf "$OUT/results.tar.gz" --exclude=checkpoint --exclude=tb --exclude='*.pt' \
     */done.json */train.log */adahop_plan.json driver.log quality.md quality.png 2>/dev/null)
  cat "$OUT/status.txt"
}

case "${1:-}" in
  start)
    shift
    [ -f data/quality_corpus/train.jsonl.gz ] || { echo "no data/quality_corpus/train.jsonl.gz" >&2; exit 2; }
    mkdir -p "$RUN"
    for f in docs/quality/runs/*.json; do  # recipes with a stored result
      [ -f "$f" ] || continue; r=$(basename "$f" .json); mkdir -p "$RUN/$r"; cp "$f" "$RUN/$r/done.json"
    done
    recipes=("$@"); [ ${#recipes[@]} -eq 0 ] && recipes=("${ALL[@]}")
    NG=$(python3 -c 'import torch; print(torch.cuda.device_count())')
    GPUS=$(seq -s, 0 $((NG - 1)))
    echo "GPUs $GPUS, ${PER_GPU:-2} per GPU, recipes ${recipes[*]}" | tee "$RUN/driver.log"
    setsid nohup python3 scripts/quality_experiment.py --recipes "${recipes[@]}" --gpus "$GPUS" \
      --parallel "${PER_GPU:-2}" --out "$RUN" --report "$RUN/quality.md" \
      $RUN_ARGS >> "$RUN/driver.log" 2>&1 < /dev/null &
    sleep 60; snapshot ;;
  wait)
    end=$(( $(date +%s) + ${2:-540} ))
    while [ "$(date +%s)" -lt "$end" ] && pgrep -f quality_experiment.py > /dev/null; do sleep 30; snapshot > /dev/null; done
    snapshot ;;
  collect)
    python3 scripts/quality_experiment.py --report-only --out "$RUN" --report "$RUN/quality.md" \
      $RUN_ARGS >> "$RUN/driver.log" 2>&1
    snapshot ;;
  stop)
    shift
    [ $# -gt 0 ] || { echo "stop needs the recipes to end, of: ${ALL[*]}" >&2; exit 2; }
    for r in "$@"; do
      # the training's own command line (a pattern on the recipe name alone would also match this shell's)
      pkill -f -- "--job.dump_folder $RUN/$r --" && echo "stopped $r" || echo "$r: no training running"
    done
    sleep 5; snapshot ;;
  *) echo "usage: bash scripts/gpu.sh quality start [RECIPES...] | wait SECONDS | collect | stop RECIPES..." >&2; exit 2 ;;
esac
