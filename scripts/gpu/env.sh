# Sourced by the device scripts: results folder, unbuffered Python, the repo and the carried wheels
# (.whl/: torchtitan 0.2.2 and the pure-Python packages the device image lacks) on PYTHONPATH.
# (.whl/ comes from scripts/fetch_device_wheels.sh, run where pip has network; carry it with every device call)
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHON=${PYTHON:-python3}
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
# Multi-GPU kinds: NVLink multicast stays off (it can take a shared host's GPUs out of service)
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
# The call's first lines, on stdout and in $OUT/env.txt: the date and the GPU; `device_header versions` adds
# the torch and triton versions of the image.
device_header() {
  { date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
    if [ "${1:-}" = versions ]; then
      python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'
    fi; } | tee "$OUT/env.txt"
}
