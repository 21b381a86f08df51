"""MXFP4 attention (the flash kernels of adahop.kernels.attention), forward + backward, against BF16 SDPA in the
same run (one GPU).

    python3 scripts/bench_attention.py [--seqs 2048 8192] [--batch 1] [--heads 32] [--kv-heads 8] [--head-dim 128]
        [--rep 50] [--sweep] [--profile] [--quantize-dp] [--no-smooth-keys]

Causal, GQA (--heads query heads over --kv-heads key/value heads), bf16. For each sequence length: BF16
F.scaled_dot_product_attention with the flash backend (enable_gqa) and adahop.attention.mxfp4_attention, each
timed fwd+bwd and forward alone (triton.testing.do_bench), and the peak memory one fwd+bwd allocates above its
inputs. Prints a markdown table with the ratios (SDPA time / MXFP4 time: above 1 is faster), and how the peak
memory grows from the shortest to the longest sequence (x4 per doubling would be quadratic; x2, linear).
`--sweep` also times MXFP4 fwd+bwd at the first length under other tile shapes of the kernels (SWEEP);
`--profile` prints where one MXFP4 fwd+bwd at the first length spends GPU time, kernel by kernel. MXFP4 attention
runs with the defaults of [quantize.linear.mx.attention] (smoothed keys, dP from bf16 dO and V) unless
`--quantize-dp` (dP in MXFP4) or `--no-smooth-keys` say otherwise; the header line names the settings.
"""

from __future__ import annotations

import argparse
import functools

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from adahop.attention import mxfp4_attention
from adahop.cli import exit_on_removed_switches
from adahop.kernels import attention as flash

# (forward, dQ, dK/dV) tiles: (rows, keys or queries, warps) each, as adahop.kernels.attention names them
SWEEP = [
    ((128, 64, 8), (128, 64, 8), (32, 128, 8)),
    ((128, 128, 8), (128, 64, 8), (32, 128, 8)),
    ((128, 64, 8), (64, 64, 4), (32, 64, 4)),
    ((128, 64, 8), (128, 64, 8), (64, 64, 8)),
]


def bench(fn, rep: int) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=10, rep=rep)


def sdpa(q, k, v):
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


def mxfp4_with(args):
    """MXFP4 attention under the command line's settings."""
    return functools.partial(
        mxfp4_attention, is_causal=True, enable_gqa=True, smooth_keys=args.smooth_keys, quantize_dp=args.quantize_dp
    )


def timings(fn, q, k, v, do, rep: int) -> tuple[float, float, float]:
    """(fwd+bwd ms, forward ms, peak bytes of one fwd+bwd above what was allocated before)."""

    def step():
        q.grad = k.grad = v.grad = None
        fn(q, k, v).backward(do)

    with torch.no_grad():
        fwd = bench(lambda: fn(q, k, v), rep)
    both = bench(step, rep)
    q.grad = k.grad = v.grad = None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return both, fwd, torch.cuda.max_memory_allocated() - base


def operands(args, t: int, dev) -> tuple[torch.Tensor, ...]:
    """Random bf16 q [batch, heads, t, head_dim], k, v [batch, kv_heads, t, head_dim] (requiring grad) and dO."""
    q, k, v = (
        torch.randn(args.batch, h, t, args.head_dim, device=dev, dtype=torch.bfloat16).requires_grad_()
        for h in (args.heads, args.kv_heads, args.kv_heads)
    )
    return q, k, v, torch.randn_like(q)


def profile_kernels(args, dev) -> None:
    """GPU time by kernel name of MXFP4 fwd+bwd at the first length (the mean of 5 traced steps)."""
    from torch.profiler import ProfilerActivity, profile

    t = args.seqs[0]
    q, k, v, do = operands(args, t, dev)
    mxfp4 = mxfp4_with(args)
    for _ in range(3):
        mxfp4(q, k, v).backward(do)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            mxfp4(q, k, v).backward(do)
        torch.cuda.synchronize()
    rows = [(e.key, e.device_time_total / 5e3, e.count // 5) for e in prof.key_averages() if e.device_time_total > 0]
    rows.sort(key=lambda r: -r[1])
    print(f"\n| kernel at seq {t} (one fwd+bwd) | GPU ms | launches |\n| --- | --- | --- |")
    for name, ms, n in rows[:12]:
        print(f"| {name[:70]} | {ms:.3f} | {n} |")
    print(f"| total | {sum(r[1] for r in rows):.3f} | |")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seqs", type=int, nargs="+", default=[2048, 8192])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--rep", type=int, default=50, help="do_bench rep (ms)")
    p.add_argument("--sweep", action="store_true", help="also time other tile shapes (SWEEP) at the first length")
    p.add_argument("--profile", action="store_true", help="GPU time by kernel of one MXFP4 fwd+bwd, first length")
    p.add_argument("--quantize-dp", action="store_true", help="dP = dO V^T in MXFP4 (default: from bf16 dO and V)")
    p.add_argument("--no-smooth-keys", dest="smooth_keys", action="store_false", help="keys as they come")
    args = p.parse_args()
    exit_on_removed_switches()
    if not torch.cuda.is_available():
        raise SystemExit("bench_attention.py times GPU kernels: run it on a GPU machine (scripts/gpu.sh attention)")
    dev = torch.device("cuda")
    print(
        f"# {torch.cuda.get_device_name()}, torch {torch.__version__}; batch {args.batch}, {args.heads} query heads, "
        f"{args.kv_heads} key/value heads, head_dim {args.head_dim}, causal, bf16; MXFP4 attention with "
        f"smooth_keys={args.smooth_keys}, quantize_dp={args.quantize_dp}"
    )
    mxfp4 = mxfp4_with(args)
    print(
        "| seq | SDPA fwd+bwd ms | MXFP4 fwd+bwd ms | fwd+bwd vs SDPA | forward vs SDPA | SDPA peak MiB "
        "| MXFP4 peak MiB |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    peaks = []
    for t in args.seqs:
        torch.manual_seed(0)
        q, k, v, do = operands(args, t, dev)
        ref_both, ref_fwd, ref_peak = timings(sdpa, q, k, v, do, args.rep)
        mx_both, mx_fwd, mx_peak = timings(mxfp4, q, k, v, do, args.rep)
        peaks.append((t, ref_peak, mx_peak))
        print(
            f"| {t} | {ref_both:.3f} | {mx_both:.3f} | {ref_both / mx_both:.2f}x | {ref_fwd / mx_fwd:.2f}x | "
            f"{ref_peak / 2**20:.0f} | {mx_peak / 2**20:.0f} |"
        )
    if args.sweep:
        t = args.seqs[0]
        q, k, v, do = operands(args, t, dev)
        ref = timings(sdpa, q, k, v, do, args.rep)[0]
        default = (flash.FORWARD_TILES, flash.DQ_TILES, flash.DKDV_TILES)
        print(f"\n| tiles at seq {t}: forward, dQ, dK/dV | MXFP4 fwd+bwd ms | vs SDPA |\n| --- | --- | --- |")
        for tiles in SWEEP:
            flash.FORWARD_TILES, flash.DQ_TILES, flash.DKDV_TILES = tiles
            try:
                ms = timings(mxfp4, q, k, v, do, args.rep)[0]
                print(f"| {tiles} | {ms:.3f} | {ref / ms:.2f}x |")
            except Exception as e:  # a shape the chip cannot build (shared memory, registers): say so, go on
                print(f"| {tiles} | failed: {type(e).__name__}: {str(e).splitlines()[0][:80]} | |")
        flash.FORWARD_TILES, flash.DQ_TILES, flash.DKDV_TILES = default
    if args.profile:
        profile_kernels(args, dev)
    if len(peaks) > 1:
        (t0, r0, m0), (t1, r1, m1) = peaks[0], peaks[-1]
        print(f"# peak memory from seq {t0} to {t1} (x{t1 / t0:.0f} tokens): SDPA x{r1 / r0:.1f}, MXFP4 x{m1 / m0:.1f}")


if __name__ == "__main__":
    main()
