#!/usr/bin/env bash
# One device call (carry .whl) checking the wide fp8 form of left operands and the exact row
# recomputation of the input-gradient GEMM (docs/kernels.md) in real training:
#   1. tests/kernels on the GPU;
#   2. the quality model (configs/quality_100m.toml, data/quality_corpus) under adahop, hadamard and plain MXFP4
#      side by side for STEPS steps (default 400) on the deferred (as trained) path: tokens/s, redone
#      steps, rows recomputed and blocks still left out ($OUT/deficient_<recipe>.0.json);
#   3. the 8B up/gate + down linear benchmark in hadamard mode.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu_env.sh
STEPS=${1:-400}
python3 -m pytest -q -x tests/kernels 2>&1 | tail -15 | tee "$OUT/gpu_tests.txt"
for r in adahop hadamard mxfp4; do
  case $r in
    adahop) flags="" ;;
    hadamard) flags="--quantize.linear.mx.calibration.no-use-HT-calibration" ;;
    mxfp4) flags="--quantize.linear.mx.calibration.no-use-HT-calibration --quantize.linear.mx.no-use-hadamard" ;;
  esac
  ADAHOP_DEFICIENT_REPORT="$OUT/deficient_$r" python3 -m adahop.train \
    --job.config_file configs/quality_100m.toml --job.dump_folder "/tmp/rowfix/$r" --metrics.disable_color_printing \
    --training.steps "$STEPS" --checkpoint.no-enable \
    --validation.freq 200 --metrics.log_freq 25 $flags > "$OUT/train_$r.log" 2>&1 &
done
wait
for r in adahop hadamard mxfp4; do
  echo "== $r"; grep -a "step:\|could not be held\|Traceback\|Error:" "$OUT/train_$r.log" | sed 's/\x1b\[[0-9;]*m//g' \
    | grep -v lspci | sed 's/.*INFO - //' | cut -c1-150 | tail -9
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d['stats'])" "$OUT/deficient_$r.0.json"
done
timeout 200 python3 scripts/bench_linear.py --models llama3-8b --tokens 16384 --shapes up/gate down \
  --modes hadamard inner_outlier_extract_left none --sr 0 --no-baselines --skip-bandwidth --rep 30 2>&1 \
  | tee "$OUT/bench.txt" | tail -12
