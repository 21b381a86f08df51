#!/usr/bin/env bash
# Download (here, with network) the wheels the GPU machines lack into .whl/, for `carry: [".whl"]`.
# The device image has torch 2.11, triton 3.6, numpy, pyarrow, tokenizers, ... (Python 3.12), not these:
# torchtitan 0.2.2 and its pure-Python needs, datasets and its pinned helpers, torchao (torchtitan's float8
# converter, the FP8 peer of the benchmarks and of the quality experiment). scripts/gpu/env.sh installs them.
case "${1:-}" in -h | --help) sed -n '2,/^[^#]/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;; esac
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl \
  torchtitan==0.2.2 torchdata==0.11.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 tyro==1.0.17 \
  docstring-parser==0.18.0 typeguard==4.6.1 tomli==2.5.0 torchao==0.17.0
ls -l .whl
