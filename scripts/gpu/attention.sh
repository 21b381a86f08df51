#!/usr/bin/env bash
# One device call: MXFP4 attention's flash kernels. Their tests on the GPU, fwd+bwd against BF16 SDPA (flash) at
# seq 2048 and 8192 (head_dim 128, GQA 32/8; the default settings and every GEMM in MXFP4) and at the 1B's shape
# (head_dim 64), and the 1B with
# enable_mxfp4_fa training at batch 16 (12 steps). Results under $OUT: tests_attention.txt, bench_attention.txt,
# train_fa16.log, summary.md.
# usage (device machine, repo root, .whl carried): bash scripts/gpu.sh attention   (TRAIN=0: no training run)
set -uo pipefail
cd "$(dirname "$0")/../.."  # the repository root
source scripts/gpu/env.sh
device_header versions
timeout 100 python3 -m pytest -q tests/kernels/test_attention_kernel.py 2>&1 | tail -15 | tee "$OUT/tests_attention.txt"
{
  timeout 110 python3 scripts/bench_attention.py --rep 20 --sweep --profile
  timeout 60 python3 scripts/bench_attention.py --rep 20 --profile --quantize-dp --no-smooth-keys  # every GEMM MXFP4
  timeout 35 python3 scripts/bench_attention.py --seqs 2048 --batch 4 --heads 32 --kv-heads 8 --head-dim 64 --rep 20
} 2>&1 | tee "$OUT/bench_attention.txt"
if [ "${TRAIN:-1}" != 0 ]; then
  CONFIG_FILE=configs/llama1b_adahop_fa.toml timeout 150 ./run_train.sh --job.dump_folder /tmp/runs/fa16 \
    --metrics.log_freq 5 --checkpoint.no-enable --metrics.no-enable-tensorboard --training.steps 12 \
    --training.local_batch_size 16 --validation.no-enable --quantize.linear.mx.calibration.calibration_steps 3 \
    > "$OUT/train_fa16.log" 2>&1
  echo "fa16 exit $?" | tee -a "$OUT/env.txt"
  python3 scripts/summarize_runs.py "$OUT" fa16 --after 5 | tee "$OUT/summary.md"
  grep -a -E "Error|error" "$OUT/train_fa16.log" | tail -3
fi
