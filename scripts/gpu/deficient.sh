#!/usr/bin/env bash
# Where does the fp8 form of MXFP4 lose blocks in real training? (device call; carry .whl)
#   bash scripts/gpu.sh deficient [STEPS]
# 1. probes which fp8 dtype pairs cuBLAS's blockwise (1x128) scaled GEMM accepts through torch._scaled_mm;
# 2. trains the quality model (configs/quality_100m.toml, data/quality_corpus) with uniform Hadamard and with plain
#    MXFP4 for STEPS steps (default 250) side by side, every GEMM checked (kernels.exactness_check = "per_gemm"), and
#    writes per slot and side the deficient blocks, the 128x128 tiles holding them and their exponent gaps
#    (adahop.kernels.gemm.deficient_by_tag()) to $OUT/deficient_<recipe>.0.json, logs to $OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."  # the repository root
source scripts/gpu/env.sh
STEPS=${1:-250}
python3 - <<'PY' 2>&1 | tee "$OUT/scaled_mm_probe.txt"
import torch
M = N = K = 512
for da, db in [(torch.float8_e4m3fn, torch.float8_e4m3fn), (torch.float8_e5m2, torch.float8_e4m3fn),
               (torch.float8_e4m3fn, torch.float8_e5m2)]:
    a = torch.randn(M, K, device="cuda").to(da)
    b = torch.randn(N, K, device="cuda").to(db)
    sa = torch.ones(K // 128, M, device="cuda").t()
    sb = torch.ones(K // 128, N, device="cuda")
    try:
        out = torch._scaled_mm(a, b.t(), scale_a=sa, scale_b=sb, out_dtype=torch.float32)
        ref = a.float() @ b.float().t()
        print(da, db, "blockwise 1x128: ok, rel err", float((out - ref).norm() / ref.norm()))
    except Exception as e:  # noqa: BLE001
        print(da, db, "blockwise 1x128: refused:", str(e).splitlines()[0][:200])
PY
for r in hadamard mxfp4; do
  case $r in
    hadamard) flags="--quantize.linear.mx.calibration.no-use-HT-calibration" ;;
    mxfp4) flags="--quantize.linear.mx.calibration.no-use-HT-calibration --quantize.linear.mx.no-use-hadamard" ;;
  esac
  python3 -m adahop.train --quantize.linear.mx.kernels.exactness_check per_gemm \
    --quantize.linear.mx.kernels.deficient_report "$OUT/deficient_$r" --job.config_file configs/quality_100m.toml --job.dump_folder "/tmp/probe/$r" --metrics.disable_color_printing \
    --training.steps "$STEPS" --checkpoint.no-enable \
    --validation.no-enable --metrics.log_freq 25 $flags > "$OUT/train_$r.log" 2>&1 &
done
wait
grep -a "step:" "$OUT"/train_*.log | sed 's/\x1b\[[0-9;]*m//g' | awk '{print $1, $8, $9, $10, $11, $NF}' | tail -24
grep -a -h "could not be held\|Traceback\|Error" "$OUT"/train_*.log | head -5
python3 - <<'PY'
import glob, json
for f in sorted(glob.glob(__import__("os").environ["OUT"] + "/deficient_*.json")):
    d = json.load(open(f))
    print(f.split("/")[-1], d["stats"])
    for tag, r in sorted(d["by_tag"].items()):
        print(f"  {tag:16s} gemms {r['gemms']:6d} with_any {r['gemms_with_any']:5d} blocks {r['blocks']:.3e} "
              f"deficient {r['deficient']:8d} tiles_with_any {r['tiles_with_any']}/{r['tiles']} gaps {r['gaps']}")
PY
