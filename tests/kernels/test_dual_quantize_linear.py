"""ADAHOP_DUAL_QUANT in the linear: one read of x in forward and of g in backward must give the same y, gx
and gw bit for bit as the separate quantizations, with deficient blocks, row fixes and stochastic rounding.

Runs the fast path's wiring on any machine: on the GPU as it is; without one the Triton kernels run on the
interpreter and the fast path is forced on (backend.fast_device), its GEMMs then computing on the CPU from
the same fp8 operands. tests/kernels/test_gpu_path.py repeats it on the GPU over more shapes and modes."""

from __future__ import annotations

import pytest
import torch

from adahop import backend
from adahop.kernels import gemm
from adahop.kernels import quantize as kq
from adahop.linear import mxfp4_linear

DEV = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def fast_path(monkeypatch):
    if DEV == "cpu":
        monkeypatch.setattr(backend, "fast_device", lambda device: True)
    elif torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("the fast path needs sm90+")


@pytest.mark.parametrize("sr", [False, True])
@pytest.mark.parametrize("modes", [("hadamard", "hadamard", "hadamard"), ("none", "hadamard", "none")])
def test_operands_quantized_once_equal_two_quantizations(modes, sr, fast_path, monkeypatch):
    torch.manual_seed(0)
    tokens, fin, fout = 256, 256, 384
    x = torch.randn(tokens, fin, dtype=torch.bfloat16)
    x[:, 3] *= 30
    x[5] *= 2.0**20  # deficient blocks along the tokens of x^T: the weight gradient's correction
    w = (torch.randn(fout, fin) / fin**0.5).to(torch.bfloat16)
    gy = torch.randn(tokens, fout, dtype=torch.bfloat16)
    gy[7, :64] *= 2.0**36  # beyond the wide window along K: the input gradient's row fix; along the tokens:
    # deficient blocks of g^T (the weight gradient's correction, from the packed form the dual path rewrites)
    x, w, gy = x.to(DEV), w.to(DEV), gy.to(DEV)
    kw = dict(zip(("forward_y", "backward_gx", "backward_gw"), modes), use_sr_grad=sr, randomized_hadamard=True)
    calls = []
    real = kq.fused_quantize_dual
    monkeypatch.setattr(kq, "fused_quantize_dual", lambda *a, **k: calls.append(k.get("row_flags", False)) or real(*a, **k))

    def run(dual: str):
        monkeypatch.setenv("ADAHOP_DUAL_QUANT", dual)
        torch.manual_seed(1)  # the same stochastic-rounding seeds for both
        gemm.reset_stats()
        xx, ww = x.clone().requires_grad_(), w.clone().requires_grad_()
        y = mxfp4_linear(xx, ww, **kw)
        y.backward(gy)
        return (y, xx.grad, ww.grad), dict(gemm.STATS)

    two, stats_two = run("0")
    assert calls == []
    once, stats_once = run("1")
    assert calls == [False, True]  # x in forward, g in backward
    assert stats_once["gemms"] == 3 and stats_once == stats_two, (stats_once, stats_two)
    assert stats_once["corrected_gemms"] >= 1  # the rare path ran, so its inputs were checked too
    for a, b, name in zip(once, two, ("y", "gx", "gw")):
        assert torch.equal(a, b), name
    assert bool(torch.isfinite(once[2]).all())
