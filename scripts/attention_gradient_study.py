"""Gradient errors of MXFP4 attention against exact float64 attention, and two changes that may reduce them.

Measures, for causal attention on synthetic inputs, how far the MXFP4 attention of adahop.attention (Hadamard
along head_dim for Q K^T and dO V^T) is from float64 softmax attention and its exact gradients, for four
variants of its [quantize.linear.mx.attention] settings:

- current: all six GEMMs in MXFP4, keys as they come (quantize_dp = true, smooth_keys = false; checked against
  the reference ops first)
- full dP: dP = dO V^T in float32, everything else as current
- smooth K: K minus its mean over the sequence (per batch and head) before every GEMM; softmax is unchanged
  (each score row shifts by q . mean(k)), and dK is projected to zero mean over the sequence, as autograd
  through the centering gives
- both: full dP and smooth K (the defaults, there with dP from bf16 dO and V)

Inputs (seeded): Gaussian q, k, v, dO; the same with dO scaled by 1e-3; keys with a common offset per head
(mean vector norm several times a token's noise norm); that offset plus two outlier channels (x10) in q and k;
peaked attention (q x4). One markdown table per input: relative Frobenius error of O, dQ, dK, dV and of the
score gradient dS, cosine similarity of dQ and dK, and the mean over rows of |sum_j dS_ij| / sum_j |dS_ij|
(exact softmax makes every row of dS sum to zero) and the same ratio pooled over all rows. A yardstick table
gives the relative error of one MXFP4 linear GEMM on Gaussian data.

    python3 scripts/attention_gradient_study.py [--seq 1024] [--seed 0] [--batch 1]
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from adahop.attention import LOG2E, attention_backward, attention_forward
from adahop.hadamard import block_hadamard
from adahop.mx import fake_quantize_mxfp4

HEADS = 4
HEAD_DIM = 64
HADAMARD = 32
VARIANTS = {  # name: (dP in full precision, smoothed keys)
    "current": (False, False),
    "full dP": (True, False),
    "smooth K": (False, True),
    "full dP + smooth K": (True, True),
}


def mx(x, axis, hadamard=False):
    """MXFP4 fake quantization along `axis` (the GEMM's inner dimension), optionally after the block Hadamard."""
    if hadamard:
        x = block_hadamard(x, axis=axis, block=HADAMARD)
    return fake_quantize_mxfp4(x.to(torch.float32), axis=axis)


def causal_mask(tq, tk):
    return torch.ones(tq, tk, dtype=torch.bool).tril()  # top-left aligned: query i sees keys 0..i


def mx_attention(q, k, v, do, scale, full_dp=False, smooth_k=False):
    """O, dQ, dK, dV, dS of the MXFP4 attention (adahop.attention's formulas) in float32, with the two options."""
    q, k, v, do = (t.to(torch.float32) for t in (q, k, v, do))
    if smooth_k:
        k = k - k.mean(dim=-2, keepdim=True)
    mask = causal_mask(q.shape[2], k.shape[2])
    # forward: unnormalized probabilities E = 2^(t - M), quantized before the row sum so weights sum to one
    t = mx(q, -1, hadamard=True) @ mx(k, -1, hadamard=True).mT * (scale * LOG2E)
    t = t.masked_fill(~mask, float("-inf"))
    e = torch.exp2(t - t.amax(dim=-1, keepdim=True).ceil())
    eq = mx(e, -1)
    total = eq.sum(dim=-1, keepdim=True)
    o = (eq @ mx(v, -2)) / total
    p = e / total
    # backward: straight-through q, dS on the unquantized P
    dv = mx(p, -2).mT @ mx(do, -2)
    dp = do @ v.mT if full_dp else mx(do, -1, hadamard=True) @ mx(v, -1, hadamard=True).mT
    ds = p * (dp - (do * o).sum(dim=-1, keepdim=True))
    dq = mx(ds, -1) @ mx(k, -2) * scale
    dk = mx(ds, -2).mT @ mx(q, -2) * scale
    if smooth_k:
        dk = dk - dk.mean(dim=-2, keepdim=True)  # the gradient through k - mean(k)
    return o, dq, dk, dv, ds


def exact_attention(q, k, v, do, scale):
    """O, dQ, dK, dV, dS of plain causal softmax attention in float64 (gradients by autograd)."""
    q, k, v = (t.to(torch.float64).requires_grad_() for t in (q, k, v))
    do = do.to(torch.float64)
    s = (q @ k.mT * scale).masked_fill(~causal_mask(q.shape[2], k.shape[2]), float("-inf"))
    p = torch.softmax(s, dim=-1)
    o = p @ v
    o.backward(do)
    with torch.no_grad():
        ds = p * (do @ v.mT - (do * o).sum(dim=-1, keepdim=True))  # softmax backward, for the dS columns
    return o.detach(), q.grad, k.grad, v.grad, ds.detach()


def rel_err(x, ref):
    return ((x.to(torch.float64) - ref).norm() / ref.norm()).item()


def cosine(x, ref):
    x = x.to(torch.float64).flatten()
    return (x @ ref.flatten() / (x.norm() * ref.norm())).item()


def ds_row_sums(ds):
    """How far the rows of dS are from summing to zero: the mean over rows of |sum_j dS_ij| / sum_j |dS_ij|, and
    the pooled sum_i |sum_j dS_ij| / sum_ij |dS_ij|. In near one-hot rows sum_j |dS_ij| is itself at rounding
    level, so their ratio measures rounding, even in float64; the pooled ratio weighs rows by their gradient.
    Query 0 sees one key (its ratio is trivially 1) and is left out."""
    ds = ds.to(torch.float64)[..., 1:, :]
    num, den = ds.sum(dim=-1).abs(), ds.abs().sum(dim=-1)
    keep = den > 0
    return (num[keep] / den[keep]).mean().item(), (num.sum() / den.sum()).item()


def make_inputs(case, batch, seq, gen):
    shape = (batch, HEADS, seq, HEAD_DIM)
    q, k, v, do = (torch.randn(shape, generator=gen) for _ in range(4))
    note = "unit-variance Gaussian q, k, v, dO"
    if case in ("offset", "offset+outliers"):
        # one mean key per head, entries of std 5: norm ~5x a token's noise norm sqrt(64) = 8
        mean = 5.0 * torch.randn(1, HEADS, 1, HEAD_DIM, generator=gen)
        k = k + mean
        ratio = (mean.norm(dim=-1) / math.sqrt(HEAD_DIM)).mean().item()
        note = f"k = randn + per-head mean vector (|mean| = {ratio:.1f}x a token's noise norm)"
    if case == "offset+outliers":
        chans = torch.randperm(HEAD_DIM, generator=gen)[:2]
        q[..., chans] *= 10  # the same channels in q and k, as massive channels appear in trained LLMs
        k[..., chans] *= 10
        note += f"; channels {chans.tolist()} of q and k x10"
    if case == "peaked":
        q = 4 * q
        note = "q x4 (near one-hot rows), k, v, dO Gaussian"
    if case == "small dO":
        do = 1e-3 * do
        note = "Gaussian, dO x1e-3"
    return (q, k, v, do), note


def check_against_reference(q, k, v, do, scale):
    """Largest |mine - reference| / max |reference| over O, dQ, dK, dV: the 'current' variant is the repo's op."""
    o_ref, p_ref = attention_forward(q, k, v, scale, True, HADAMARD, False)
    grads_ref = attention_backward(do, q, k, v, o_ref, p_ref, scale, HADAMARD, False)
    mine = mx_attention(q, k, v, do, scale)[:4]
    return max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(mine, (o_ref, *grads_ref)))


def linear_yardstick(seq, gen):
    """Relative error of one MXFP4 GEMM [seq, K] x [K, seq] on Gaussian data, operands quantized along K."""
    print("## Yardstick: one MXFP4 linear GEMM, Gaussian operands, vs float64\n")
    print("| GEMM | Hadamard (block 32) | no Hadamard |")
    print("| --- | --- | --- |")
    for inner in (HEAD_DIM, seq):
        a, b = torch.randn(seq, inner, generator=gen), torch.randn(inner, seq, generator=gen)
        ref = a.double() @ b.double()
        errs = [rel_err(mx(a, -1, hadamard=h) @ mx(b, 0, hadamard=h), ref) for h in (True, False)]
        print(f"| [{seq}, {inner}] x [{inner}, {seq}] | {errs[0]:.4f} | {errs[1]:.4f} |")
    print()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=1)
    args = p.parse_args()
    gen = torch.Generator().manual_seed(args.seed)
    scale = HEAD_DIM**-0.5
    start = time.time()
    print(f"# MXFP4 attention gradient errors: B={args.batch}, H={HEADS}, T={args.seq}, D={HEAD_DIM}, causal,")
    print(f"scale 1/sqrt({HEAD_DIM}), seed {args.seed}, round-to-nearest, errors vs float64 exact attention\n")

    (q, k, v, do), _ = make_inputs("gaussian", args.batch, args.seq, gen)
    diff = check_against_reference(q, k, v, do, scale)
    print(f"current variant vs adahop.attention reference ops: max |diff| / max |ref| = {diff:.2e}\n")

    linear_yardstick(args.seq, gen)

    cols = ["O", "dQ", "dK", "dV", "dS"]
    for case in ("gaussian", "small dO", "offset", "offset+outliers", "peaked"):
        (q, k, v, do), note = make_inputs(case, args.batch, args.seq, gen)
        ex = exact_attention(q, k, v, do, scale)
        print(f"## {case}: {note}\n")
        print("| variant | " + " | ".join(f"rel {c}" for c in cols) + " | cos dQ | cos dK | dS row sum | pooled |")
        print("| --- " * (len(cols) + 5) + "|")
        sums = " | ".join(f"{x:.1e}" for x in ds_row_sums(ex[4]))
        print(f"| exact (float64) | {' | '.join(['0'] * len(cols))} | 1 | 1 | {sums} |")
        for name, (full_dp, smooth_k) in VARIANTS.items():
            got = mx_attention(q, k, v, do, scale, full_dp, smooth_k)
            errs = " | ".join(f"{rel_err(g, r):.4f}" for g, r in zip(got, ex))
            coss = f"{cosine(got[1], ex[1]):.5f} | {cosine(got[2], ex[2]):.5f}"
            sums = " | ".join(f"{x:.4f}" for x in ds_row_sums(got[4]))
            print(f"| {name} | {errs} | {coss} | {sums} |")
        print()
    print(f"({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
