#!/bin/bash
# One device call: kernel tests on the GPU, FSDP/compile checks, profile, benchmark. Results under $OUT.
# usage (device): bash scripts/gpu_check.sh [quick|full]
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=.
what=${1:-quick}
date -u | tee "$OUT/env.txt"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv | tee -a "$OUT/env.txt"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=.:/tmp/site
fi
python3 -c 'import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name())' | tee -a "$OUT/env.txt"
if [ "$what" != "bench" ]; then
  timeout 240 python3 -m pytest -q tests/kernels 2>&1 | tail -60 | tee "$OUT/tests.log"
  timeout 150 python3 scripts/gpu_misc_check.py 2>&1 | tee "$OUT/misc.log"
fi
if [ "$what" = "quick" ]; then
  timeout 200 python3 scripts/bench_linear.py --quick --tune --models llama3-8b --tokens 16384 --out "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log"
else
  timeout 420 python3 scripts/bench_linear.py --tune --rep 50 --out "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log"
fi
