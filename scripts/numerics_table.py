"""Quantization error of every AdaHOP mode per GEMM slot, on Gaussian and outlier-planted operands.

    python scripts/numerics_table.py [--tokens 1024 --dim 1024] > table.md

Relative error ||out - exact|| / ||exact|| of y = x W^T, gx = g W and gw = g^T x, with every slot
running the same mode, against the float64 product of the unquantized operands.
"""

from __future__ import annotations

import argparse

import torch

from adahop.linear import mxfp4_linear
from adahop.modes import MODES

CASES = {
    "gaussian": "x, W, g Gaussian",
    "x_col": "x: 8 activation channels x30 (columns of x)",
    "x_row": "x: 8 tokens x30 (rows of x)",
    "g_row": "g: 8 tokens x30 (rows of g)",
    "g_col": "g: 8 output channels x30 (columns of g)",
    "w_col": "W: 8 input channels x30 (columns of W)",
}


def operands(case: str, tokens: int, dim: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, dim, generator=gen)
    w = torch.randn(dim, dim, generator=gen) / dim**0.5
    g = torch.randn(tokens, dim, generator=gen)
    idx = torch.randperm(dim, generator=gen)[:8]
    target, axis = {"x_col": (x, 1), "x_row": (x, 0), "g_row": (g, 0), "g_col": (g, 1), "w_col": (w, 1)}.get(
        case, (None, 0)
    )
    if target is not None:
        if axis == 0:
            target[idx] *= 30
        else:
            target[:, idx] *= 30
    return x, w, g


def errors(x, w, g, mode: str, sr: bool):
    xr, wr = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    y = mxfp4_linear(xr, wr, forward_y=mode, backward_gx=mode, backward_gw=mode, use_sr_grad=sr)
    y.backward(g)
    xd, wd, gd = x.double(), w.double(), g.double()
    exact = (xd @ wd.t(), gd @ wd, gd.t() @ xd)
    got = (y.detach(), xr.grad, wr.grad)
    return [((a.double() - b).norm() / b.norm()).item() for a, b in zip(got, exact)]


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    print(f"tokens={args.tokens}, in=out={args.dim}, outlier_k=64, hadamard_size=32, seed={args.seed}\n")
    print("| operands | mode | y | gx | gw |")
    print("| --- | --- | --- | --- | --- |")
    for case, desc in CASES.items():
        x, w, g = operands(case, args.tokens, args.dim, args.seed)
        for mode in MODES:
            for sr in (False, True) if mode == "hadamard" else (False,):
                name = mode + (" + SR grad" if sr else "")
                e = errors(x, w, g, mode, sr)
                print(f"| {desc} | {name} | " + " | ".join(f"{v:.4f}" for v in e) + " |", flush=True)


if __name__ == "__main__":
    main()
