"""MoE expert grouped GEMMs, forward + backward, against BF16 torch._grouped_mm in the same run (one GPU).

    python3 scripts/bench_grouped.py [--experts 32] [--dim 1024] [--hidden 512] [--tokens 32768] [--modes hadamard]
        [--loop] [--rep 50]

The shapes default to configs/moe_small_*.toml (32 experts, dim 1024, expert hidden 512, 8192 tokens top-4 =
32768 routed rows); group sizes are drawn once from an uneven routing (seeded). Timed per weight stack (w1/w3:
dim -> hidden, w2: hidden -> dim): BF16 torch._grouped_mm fwd+bwd; AdaHOP's grouped GEMM fwd+bwd inside a
deferred exactness check, as a training step runs it (every group in one call, adahop.grouped_mm; `--loop`
also times the per-group loop); and, as the fp8 speed reference, the forward GEMM alone as rowwise-scaled fp8
torch._scaled_grouped_mm against the BF16 forward GEMM alone. Prints a markdown table of ms and ratios.
"""

from __future__ import annotations

import argparse

import torch

from adahop import grouped_mm
from adahop.cli import exit_on_removed_switches
from adahop.grouped import mxfp4_grouped_mm
from adahop.kernels import deferred
from adahop.linear import LinearRecipe


def group_sizes(tokens: int, experts: int, seed: int = 0) -> torch.Tensor:
    """An uneven routing (loads from 0.05 to 1.05 of a uniform draw squared), summing to `tokens`."""
    g = torch.Generator().manual_seed(seed)
    weights = torch.rand(experts, generator=g) ** 2 + 0.05
    sizes = torch.floor(weights / weights.sum() * tokens).to(torch.int64)
    sizes[0] += tokens - int(sizes.sum())
    return sizes


def bench(fn, rep: int) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=10, rep=rep)


def fwd_bwd(fn, x, w, gy):
    def step():
        x.grad = w.grad = None
        fn(x, w).backward(gy)

    return step


def fp8_forward_reference(x, w, ends, rep: int) -> dict:
    """The forward GEMM alone as rowwise-scaled fp8 torch._scaled_grouped_mm, against the BF16 one."""
    tokens, experts, out_f = x.shape[0], w.shape[0], w.shape[1]
    x8, w8 = x.to(torch.float8_e4m3fn), w.to(torch.float8_e4m3fn)
    sx = torch.ones(tokens, device=x.device)
    sw = torch.ones(experts, out_f, device=x.device)
    with torch.no_grad():
        fwd_bf16 = bench(lambda: torch._grouped_mm(x, w.transpose(-2, -1), offs=ends), rep)
        try:
            fwd_fp8 = bench(
                lambda: torch._scaled_grouped_mm(x8, w8.transpose(-2, -1), sx, sw, offs=ends, out_dtype=torch.bfloat16),
                rep,
            )
        except RuntimeError as e:
            print(f"# torch._scaled_grouped_mm refused: {str(e).splitlines()[0]}")
            return {}
    return {"rowwise fp8 forward GEMM vs BF16": fwd_bf16 / fwd_fp8}


def cell(key: str, value) -> str:
    if key == "BF16 fwd+bwd ms":
        return f"{value:.3f}"
    return f"{value:.2f}x" if isinstance(value, float) else str(value)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experts", type=int, default=32)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--tokens", type=int, default=32768)
    p.add_argument("--modes", nargs="*", default=["hadamard"])
    p.add_argument("--loop", action="store_true", help="also time the per-group loop")
    p.add_argument("--rep", type=int, default=50, help="do_bench rep (ms)")
    args = p.parse_args()
    exit_on_removed_switches()
    if not torch.cuda.is_available():
        raise SystemExit("bench_grouped.py times GPU kernels: run it on a GPU machine (scripts/gpu.sh grouped)")
    dev = torch.device("cuda")
    sizes = group_sizes(args.tokens, args.experts).to(dev)
    ends = torch.cumsum(sizes, 0, dtype=torch.int32)
    print(
        f"# {torch.cuda.get_device_name()}, torch {torch.__version__}; {args.experts} experts, {args.tokens} rows, "
        f"group sizes {int(sizes.min())}..{int(sizes.max())}"
    )
    rows = []
    for name, in_f, out_f in (("w1/w3", args.dim, args.hidden), ("w2", args.hidden, args.dim)):
        torch.manual_seed(0)
        x = torch.randn(args.tokens, in_f, device=dev, dtype=torch.bfloat16, requires_grad=True)
        w = (torch.randn(args.experts, out_f, in_f, device=dev) / in_f**0.5).to(torch.bfloat16).requires_grad_()
        gy = torch.randn(args.tokens, out_f, device=dev, dtype=torch.bfloat16)
        bf16 = bench(fwd_bwd(lambda a, b: torch._grouped_mm(a, b.transpose(-2, -1), offs=ends), x, w, gy), args.rep)
        row = {"stack": f"{name} ({in_f} -> {out_f})", "BF16 fwd+bwd ms": bf16}
        for mode in args.modes:
            recipe = LinearRecipe(mode, mode, mode)

            def adahop(a, b, recipe=recipe):
                return mxfp4_grouped_mm(a, b, sizes, recipe)

            with deferred.deferred_check(dev) as counter:
                t = bench(fwd_bwd(adahop, x, w, gy), args.rep)
                assert counter.item() == 0, "group sizes flagged invalid"
            row[f"{mode} one call"] = bf16 / t
            if args.loop:
                real = grouped_mm.in_one_call
                grouped_mm.in_one_call = lambda *a: False
                try:
                    with deferred.deferred_check(dev):
                        row[f"{mode} per group"] = bf16 / bench(fwd_bwd(adahop, x, w, gy), max(args.rep // 5, 5))
                finally:
                    grouped_mm.in_one_call = real
        row.update(fp8_forward_reference(x.detach(), w.detach(), ends, args.rep))
        rows.append(row)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    print("| " + " | ".join(keys) + " |")
    print("| " + " | ".join("---" for _ in keys) + " |")
    for r in rows:
        print("| " + " | ".join(cell(k, r.get(k, "")) for k in keys) + " |")


if __name__ == "__main__":
    main()
