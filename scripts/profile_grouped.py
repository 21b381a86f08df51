"""Profile one fwd+bwd of the one-call MXFP4 grouped GEMM at the MoE small shapes (one GPU): the ops by GPU time and
by host time, to see whether the host or the kernels set the pace.

    python3 scripts/profile_grouped.py [--mode hadamard] [--rows 25]
"""

from __future__ import annotations

import argparse

import torch
from bench_grouped import group_sizes  # noqa: E402  (scripts/ is on sys.path when run as a script)
from torch.profiler import ProfilerActivity, profile

from adahop.grouped import mxfp4_grouped_mm
from adahop.kernels import deferred
from adahop.linear import LinearRecipe


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", default="hadamard")
    p.add_argument("--rows", type=int, default=25)
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("profile_grouped.py profiles GPU kernels: run it on a GPU machine")
    dev = torch.device("cuda")
    sizes = group_sizes(32768, 32).to(dev)
    x = torch.randn(32768, 1024, device=dev, dtype=torch.bfloat16, requires_grad=True)
    w = (torch.randn(32, 512, 1024, device=dev) / 32).to(torch.bfloat16).requires_grad_()
    gy = torch.randn(32768, 512, device=dev, dtype=torch.bfloat16)
    recipe = LinearRecipe(args.mode, args.mode, args.mode)

    def step():
        x.grad = w.grad = None
        mxfp4_grouped_mm(x, w, sizes, recipe).backward(gy)

    with deferred.deferred_check(dev):
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                step()
            torch.cuda.synchronize()
    table = prof.key_averages()
    print(table.table(sort_by="cuda_time_total", row_limit=args.rows))
    print(table.table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
