"""Benchmark the AdaHOP MXFP4 linear on a GPU against BF16 nn.Linear and FP8 training baselines.

For the linear shapes of Llama-3.2-1B, Llama-3.2-3B and Llama-3-8B at 8k and 16k tokens, and every mode
(hadamard, OE-left, OE-right, none, full_precision) with and without stochastic rounding of gradients:
forward, backward (= fwd+bwd - fwd) and forward+backward time, measured in the same run as
- BF16 `F.linear` (autograd),
- torchao float8 training (tensorwise and rowwise recipes, eager) when torchao imports, else a
  torch._scaled_mm fp8 linear with dynamic tensorwise / rowwise scales;
plus the quantizer's bandwidth against a device copy and the bytes each layer keeps for backward.

    PYTHONPATH=. python scripts/bench_linear.py --out results.json            # everything
    PYTHONPATH=. python scripts/bench_linear.py --models llama3-8b --tokens 16384 --quick

Timing: triton.testing.do_bench, median, random normal data (x with a few x30 channels).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import traceback

import torch
import torch.nn.functional as F

from adahop.cli import exit_on_removed_switches

MODELS = {  # (dim, kv_dim, ffn_dim)
    "llama3.2-1b": (2048, 512, 8192),
    "llama3.2-3b": (3072, 1024, 8192),
    "llama3-8b": (4096, 1024, 14336),
}
MODES = ["hadamard", "inner_outlier_extract_left", "inner_outlier_extract_right", "none", "full_precision"]
SHORT = {
    "hadamard": "had",
    "inner_outlier_extract_left": "oeL",
    "inner_outlier_extract_right": "oeR",
    "none": "none",
    "full_precision": "fp",
}


def shapes(model):
    d, kv, ffn = MODELS[model]
    return [("q/o", d, d), ("k/v", d, kv), ("up/gate", d, ffn), ("down", ffn, d)]


def bench(fn, rep=60):
    from triton.testing import do_bench

    return do_bench(fn, warmup=15, rep=rep, return_mode="median")


# ---------------------------------------------------------------- fp8 baselines


class _ScaledMMLinear(torch.autograd.Function):
    """y = x W^T with all three GEMMs in fp8 e4m3 via torch._scaled_mm, dynamic scales (unfused casts)."""

    @staticmethod
    def _q(t, rowwise):  # K-major t [R, K] -> fp8, fp32 scale ([R, 1] or scalar)
        amax = t.abs().amax(dim=1, keepdim=True) if rowwise else t.abs().amax()
        scale = amax.float().clamp_min(1e-12) / 448.0
        return (t.float() / scale).to(torch.float8_e4m3fn), scale

    @staticmethod
    def _mm(a, bt, rowwise):
        qa, sa = _ScaledMMLinear._q(a, rowwise)
        qb, sb = _ScaledMMLinear._q(bt, rowwise)
        if rowwise:
            sb = sb.t().contiguous()
        return torch._scaled_mm(qa, qb.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)

    @staticmethod
    def forward(ctx, x, w, rowwise):
        ctx.save_for_backward(x, w)
        ctx.rowwise = rowwise
        return _ScaledMMLinear._mm(x, w, rowwise)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        gx = _ScaledMMLinear._mm(g, w.t().contiguous(), ctx.rowwise)
        gw = _ScaledMMLinear._mm(g.t().contiguous(), x.t().contiguous(), ctx.rowwise)
        return gx, gw, None


def make_baselines(fin, fout, dev):
    """name -> (callable(x) -> y, params) for the fp8 baselines."""
    out = {}
    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training

        for recipe in ("tensorwise", "rowwise"):
            lin = torch.nn.Sequential(torch.nn.Linear(fin, fout, bias=False, device=dev, dtype=torch.bfloat16))
            convert_to_float8_training(lin, config=Float8LinearConfig.from_recipe_name(recipe))
            out[f"ao_{recipe}"] = lin
    except Exception as exc:  # torchao missing or refusing: the _scaled_mm stand-ins
        print(
            f"# torchao float8 unavailable ({type(exc).__name__}: {exc}); using torch._scaled_mm baselines",
            file=sys.stderr,
        )
        for recipe, rowwise in (("tensorwise", False), ("rowwise", True)):
            w = torch.nn.Parameter(torch.randn(fout, fin, device=dev, dtype=torch.bfloat16) / fin**0.5)
            out[f"smm_{recipe}"] = lambda x, w=w, r=rowwise: _ScaledMMLinear.apply(x, w, r)
    return out


# ---------------------------------------------------------------- measurements


def time_fwd_bwd(fn, x, params, gy, rep, deferred_device=None):
    """Forward, backward and forward+backward ms. With `deferred_device`, each timed call runs as the
    trainer runs AdaHOP layers: deficient-block counts checked once at its end (adahop.kernels.deferred)."""
    from adahop.kernels import deferred

    def checked(f):
        if deferred_device is None:
            return f

        def run():
            with deferred.deferred_check(deferred_device):
                f()
                deferred.raise_if_deficient()

        return run

    @checked
    def fwd_train():
        fn(x)

    @checked
    def step():
        x.grad = None
        for p in params:
            p.grad = None
        fn(x).backward(gy)

    t_fwd = bench(fwd_train, rep)
    t_fb = bench(step, rep)
    return t_fwd, t_fb - t_fwd, t_fb


def saved_bytes(fn, x, params):
    """Bytes of the tensors autograd keeps for backward, not counting parameters."""
    pids = {p.untyped_storage().data_ptr() for p in params}
    seen = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in pids:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = fn(x)
    del y
    return sum(seen.values())


def quantizer_bandwidth(rows, k, dev, rep):
    from adahop.kernels.quantize import fused_quantize, fused_reencode

    x = torch.randn(rows, k, device=dev, dtype=torch.bfloat16)
    xt = x.t().contiguous().t()  # K along dim 0 of the storage: exercises the transposing load
    dst = torch.empty_like(x)
    n = x.numel()
    res = {}
    t = bench(lambda: dst.copy_(x), rep)
    copy_bw = 4 * n / t / 1e6
    res["copy"] = dict(ms=t, gbps=copy_bw, frac=1.0)
    wr_both = n * (1 + 0.5 + 1 / 32) + n / 128 * 4
    cases = [
        ("quant both forms, k contiguous, H32, RNE", lambda: fused_quantize(x, hadamard_size=32), 2 * n + wr_both),
        (
            "quant both forms, k strided (transpose), H32, RNE",
            lambda: fused_quantize(xt.t(), k_dim=0, hadamard_size=32),
            2 * n + wr_both,
        ),
        (
            "quant both forms, H32, SR (Philox)",
            lambda: fused_quantize(x, hadamard_size=32, rounding="stochastic", seed=1),
            2 * n + wr_both,
        ),
        (
            "quant packed only (saved for bwd), H32",
            lambda: fused_quantize(x, hadamard_size=32, write_fp8=False),
            2 * n + n * (0.5 + 1 / 32),
        ),
        (
            "quant packed only, transpose, H32",
            lambda: fused_quantize(xt.t(), k_dim=0, hadamard_size=32, write_fp8=False),
            2 * n + n * (0.5 + 1 / 32),
        ),
        ("quant both forms, no Hadamard", lambda: fused_quantize(x), 2 * n + wr_both),
        (
            "quant both forms, 128x128 tile scales, H32",
            lambda: fused_quantize(x, hadamard_size=32, tile=True),
            2 * n + wr_both,
        ),
    ]
    # what a linear's forward quantizes of x: the GEMM operand along K and x^T packed for backward
    dual_bytes = 2 * n + n * (1 + 4 / 128) + n * (0.5 + 1 / 32)
    cases.append(
        (
            "forward x, both axes, two kernels (fp8 wide along K + packed along tokens), H32",
            lambda: (
                fused_quantize(x, hadamard_size=32, write_packed=False, wide=True),
                fused_quantize(x, k_dim=0, hadamard_size=32, write_fp8=False),
            ),
            2 * n + dual_bytes,
        )
    )
    # what a linear's backward quantizes of g (x stands in): the left operands of both gradient GEMMs
    g_writes = n * (1 + 4 / 128) * 2 + n * (0.5 + 1 / 32) + rows
    cases.append(
        (
            "backward g, both axes, two kernels (wide fp8 + packed + row flags along K, wide fp8 along tokens), H32",
            lambda: (
                fused_quantize(x, hadamard_size=32, wide=True, row_flags=True),
                fused_quantize(x, k_dim=0, hadamard_size=32, write_packed=False, wide=True),
            ),
            4 * n + g_writes,
        )
    )

    saved = fused_quantize(x, hadamard_size=32, write_fp8=False)
    cases.append(
        (
            "re-encode packed -> fp8",
            lambda: fused_reencode(saved["packed"], saved["scales"]),
            n * (0.5 + 1 / 32) + n * (1 + 4 / 128),
        )
    )
    cases.append(
        (
            "re-encode packed -> fp8, tile",
            lambda: fused_reencode(saved["packed"], saved["scales"], tile=True),
            n * (0.5 + 1 / 32) + n,
        )
    )
    for name, fn, nbytes in cases:
        try:
            t = bench(fn, rep)
            res[name] = dict(ms=t, gbps=nbytes / t / 1e6, frac=nbytes / t / 1e6 / copy_bw)
        except Exception as exc:
            res[name] = dict(error=f"{type(exc).__name__}: {exc}")
    return res


def tune_quantizer(rows, k, dev, rep):
    """Sweep the fused quantizer's launch choices (same bits for all); returns {case: {config: GB/s}}."""
    from adahop.kernels.quantize import fused_quantize
    from adahop.kernels.state import FastPathState, activate

    x = torch.randn(rows, k, device=dev, dtype=torch.bfloat16)
    xt = x.t().contiguous().t()
    n = x.numel()
    nbytes = 2 * n + n * (1 + 0.5 + 1 / 32) + n / 128 * 4
    state = FastPathState()
    previous = activate(state)
    # (strided "t" = the in-layout kernel _quantize_kernel_t; hv0 / hv2 = the transpose-first kernel)
    res = {"contig": {}, "strided": {}}
    try:
        for hv in ("t", 0, 2):
            for br, nw in ((16, 4), (32, 4), (32, 8), (64, 4), (64, 8)):
                state.tuning.update(
                    contig=(br, nw),
                    strided=(br, nw),
                    strided_t=(br, nw),
                    hv_contig=hv if hv != "t" else 0,
                    hv_strided=hv if hv != "t" else 0,
                    strided_kernel="t" if hv == "t" else "trans",
                )
                key = f"hv{hv}_br{br}_w{nw}"
                for case, fn in (
                    ("contig", lambda: fused_quantize(x, hadamard_size=32)),
                    ("strided", lambda: fused_quantize(xt.t(), k_dim=0, hadamard_size=32)),
                ):
                    if case == "strided" and hv != "t" and (br, nw) not in ((32, 8), (16, 4)):
                        continue
                    try:
                        res[case][key] = nbytes / bench(fn, rep) / 1e6
                    except Exception as exc:
                        res[case][key] = f"{type(exc).__name__}"
    finally:
        activate(previous)
    return res


def gemm_only(M, N, K, dev, rep):
    """bf16 matmul vs the fp8 blockwise _scaled_mm calls the fast path makes (A 1x128; B 1x128 or 128x128)."""
    a = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
    b = torch.randn(N, K, device=dev, dtype=torch.bfloat16)
    a8, b8 = a.to(torch.float8_e4m3fn), b.to(torch.float8_e4m3fn)
    sa = torch.ones(K // 128, M, device=dev)
    sb = torch.ones(K // 128, N, device=dev)
    sbt = torch.ones(N // 128, K // 128, device=dev)
    res = {"bf16": bench(lambda: a @ b.t(), rep)}
    for name, scale_b, od in (
        ("fp8 1x128.1x128 ->bf16", sb, torch.bfloat16),
        ("fp8 1x128.128x128 ->bf16", sbt.t(), torch.bfloat16),
        ("fp8 1x128.128x128 ->fp32", sbt.t(), torch.float32),
    ):
        try:
            res[name] = bench(
                lambda scale_b=scale_b, od=od: torch._scaled_mm(
                    a8, b8.t(), scale_a=sa.t(), scale_b=scale_b, out_dtype=od
                ),
                rep,
            )
        except Exception as exc:
            res[name] = f"{type(exc).__name__}: {exc}"[:200]
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--tokens", nargs="*", type=int, default=[8192, 16384])
    ap.add_argument("--modes", nargs="*", default=MODES)
    ap.add_argument("--sr", nargs="*", default=["0", "1"])
    ap.add_argument("--quick", action="store_true", help="8B up/gate and down shapes only")
    ap.add_argument("--rep", type=int, default=60, help="do_bench rep (ms)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--skip-bandwidth", action="store_true")
    ap.add_argument("--tune", action="store_true", help="sweep the quantizer's launch choices first")
    ap.add_argument("--no-baselines", action="store_true", help="skip the fp8 baselines (torchao / _scaled_mm)")
    ap.add_argument("--shapes", nargs="*", default=None, help="subset of q/o k/v up/gate down")
    ap.add_argument(
        "--tile-b",
        nargs="*",
        default=["none"],
        choices=["none", "forward", "weights", "all"],
        help="[quantize.linear.mx.kernels] tile_b settings to time the AdaHOP linear with",
    )
    ap.add_argument(
        "--sync-every-gemm",
        action="store_true",
        help="time the AdaHOP linear with its per-GEMM deficient-block sync (default: as in training, "
        "the check deferred to once per timed call, adahop.kernels.deferred)",
    )
    args = ap.parse_args()
    exit_on_removed_switches()

    from adahop.kernels import gemm
    from adahop.linear import mxfp4_linear

    dev = torch.device("cuda")
    torch.manual_seed(0)
    results = {
        "device": torch.cuda.get_device_name(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "argv": sys.argv,
        "linear": [],
    }
    import triton

    results["triton"] = triton.__version__
    try:
        import torchao

        results["torchao"] = torchao.__version__
    except Exception as exc:
        results["torchao"] = f"unavailable: {exc}"

    if args.tune:
        results["tune_16384x4096"] = tune_quantizer(16384, 4096, dev, 30)
        print(json.dumps(results["tune_16384x4096"], indent=1), flush=True)
    if not args.skip_bandwidth:
        results["bandwidth_16384x4096"] = quantizer_bandwidth(16384, 4096, dev, args.rep)
        results["gemm_only_16384x14336x4096"] = gemm_only(16384, 14336, 4096, dev, args.rep)
        print(
            json.dumps({k: results[k] for k in ("bandwidth_16384x4096", "gemm_only_16384x14336x4096")}, indent=1),
            flush=True,
        )

    for model in args.models:
        for T in args.tokens:
            for sname, fin, fout in shapes(model):
                if args.quick and sname not in ("up/gate", "down"):
                    continue
                if args.shapes and sname not in args.shapes:
                    continue
                x = (torch.randn(T, fin, device=dev) * (1 + 29 * (torch.rand(fin, device=dev) < 0.005))).to(
                    torch.bfloat16
                )
                x.requires_grad_()
                w = torch.nn.Parameter((torch.randn(fout, fin, device=dev) / fin**0.5).to(torch.bfloat16))
                gy = torch.randn(T, fout, device=dev, dtype=torch.bfloat16)
                row = dict(model=model, tokens=T, shape=sname, fin=fin, fout=fout, t={}, saved={})
                impls = {"bf16": (lambda x, w=w: F.linear(x, w), [w])}
                for name, mod in ({} if args.no_baselines else make_baselines(fin, fout, dev)).items():
                    params = list(mod.parameters()) if isinstance(mod, torch.nn.Module) else []
                    impls[name] = (mod, params)
                for mode in args.modes:
                    for sr in args.sr:
                        for tile in args.tile_b:
                            name = (
                                f"{SHORT[mode]}{'+sr' if sr == '1' else ''}{'' if tile == 'none' else '+tile_' + tile}"
                            )
                            impls[name] = (
                                lambda x, w=w, m=mode, s=sr == "1", t=tile: mxfp4_linear(
                                    x, w, forward_y=m, backward_gx=m, backward_gw=m, use_sr_grad=s, tile_b=t
                                ),
                                [w],
                            )
                adahop_impls = set(list(impls)[-len(args.modes) * len(args.sr) * len(args.tile_b) :])
                cuda_dev = torch.device("cuda", torch.cuda.current_device())
                for name, (fn, params) in impls.items():
                    try:
                        defer = cuda_dev if name in adahop_impls and not args.sync_every_gemm else None
                        row["t"][name] = time_fwd_bwd(fn, x, params, gy, args.rep, defer)
                        row["saved"][name] = saved_bytes(fn, x, params)
                    except Exception as exc:
                        row["t"][name] = None
                        row.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"[:300]
                        traceback.print_exc()
                bf = row["t"]["bf16"]
                line = (
                    f"{model:12s} T={T:5d} {sname:8s} [{fin}->{fout}] "
                    f"bf16 fwd/bwd/fb {bf[0]:.3f}/{bf[1]:.3f}/{bf[2]:.3f} ms |"
                )
                for name, tt in row["t"].items():
                    if name != "bf16" and tt:
                        line += f" {name} {bf[2] / tt[2]:.2f}x"
                print(line, flush=True)
                results["linear"].append(row)
                if args.out:  # keep partial results if the run is cut short
                    with open(args.out, "w") as f:
                        json.dump(results, f, indent=1)
                del x, w, gy
                torch.cuda.empty_cache()
    results["gemm_stats"] = dict(gemm.stats())
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    print_tables(results)


def print_tables(results):
    print(
        f"\n## {results['device']}  {results['date']}  torch {results['torch']}  triton {results['triton']}  "
        f"torchao {results['torchao']}"
    )
    bw = results.get("bandwidth_16384x4096")
    if bw:
        print("\n| quantizer case (16384x4096 bf16) | ms | GB/s | of copy |\n| --- | --- | --- | --- |")
        for k, v in bw.items():
            if "error" in v:
                print(f"| {k} | {v['error']} | | |")
            else:
                print(f"| {k} | {v['ms']:.4f} | {v['gbps']:.0f} | {v['frac']:.2f} |")
    go = results.get("gemm_only_16384x14336x4096")
    if go:
        print("\n| GEMM only 16384x14336x4096 | ms |\n| --- | --- |")
        for k, v in go.items():
            print(f"| {k} | {v if isinstance(v, str) else f'{v:.3f}'} |")
    rows = results["linear"]
    if not rows:
        return
    names = [n for n in rows[0]["t"] if n != "bf16"]
    for idx, label in ((2, "fwd+bwd"), (0, "fwd"), (1, "bwd")):
        print(f"\n### speedup over BF16 nn.Linear, {label} (BF16 time in ms; >1 is faster)\n")
        print("| model | tokens | shape | bf16 ms | " + " | ".join(names) + " |")
        print("| --- " * (4 + len(names)) + "|")
        for r in rows:
            bf = r["t"]["bf16"][idx]
            cells = [f"{bf / r['t'][n][idx]:.2f}" if r["t"].get(n) else "err" for n in names]
            print(f"| {r['model']} | {r['tokens']} | {r['shape']} | {bf:.3f} | " + " | ".join(cells) + " |")
    print("\n### bytes kept for backward (activation side, parameters not counted): BF16 / this\n")
    print("| model | tokens | shape | bf16 MB | " + " | ".join(names) + " |")
    print("| --- " * (4 + len(names)) + "|")
    for r in rows:
        bf = r["saved"].get("bf16")
        cells = [f"{bf / r['saved'][n]:.2f}" if r["saved"].get(n) else "-" for n in names]
        print(f"| {r['model']} | {r['tokens']} | {r['shape']} | {bf / 2**20:.1f} | " + " | ".join(cells) + " |")
    print(f"\ngemm stats: {results.get('gemm_stats')}")


if __name__ == "__main__":
    main()
