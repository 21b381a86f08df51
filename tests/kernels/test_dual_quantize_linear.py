"""ADAHOP_DUAL_QUANT in the linear: one read of x in forward and of g in backward must give the same y, gx
and gw bit for bit as the separate quantizations, with deficient blocks, row fixes and stochastic rounding.

Runs the fast path's wiring on any machine: on the GPU as it is; without one the Triton kernels run on the
interpreter and the fast path is forced on (backend.fast_device), its GEMMs then computing on the CPU from
the same fp8 operands. tests/kernels/test_gpu_path.py repeats it on the GPU over more shapes and modes."""

from __future__ import annotations

import contextlib

import pytest
import torch

from adahop import backend
from adahop.kernels import deferred, gemm
from adahop.kernels import quantize as kq
from linear_runs import linear_grads

DEV = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def fast_path(monkeypatch):
    if DEV == "cpu":
        monkeypatch.setattr(backend, "fast_device", lambda device: True)
    elif torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("the fast path needs sm90+")


def operands(tokens, fin, fout):
    torch.manual_seed(0)
    x = torch.randn(tokens, fin, dtype=torch.bfloat16)
    x[:, 3] *= 30
    x[5] *= 2.0**20  # deficient blocks along the tokens of x^T: the weight gradient's correction
    w = (torch.randn(fout, fin) / fin**0.5).to(torch.bfloat16)
    gy = torch.randn(tokens, fout, dtype=torch.bfloat16)
    gy[7, :64] *= 2.0**36  # beyond the wide window along K: the input gradient's row fix; along the tokens:
    # deficient blocks of g^T (the weight gradient's correction, from the packed form the dual path writes)
    return x, w, gy


def compare(x, w, gy, monkeypatch, *, in_step=False, **kw):
    """Run the linear with the switch off, then on; returns (outputs, STATS, step counter) of each, and
    the calls of fused_quantize_dual (their row_flags) and of the packed-only re-runs of fused_quantize."""
    x, w, gy = x.to(DEV), w.to(DEV), gy.to(DEV)
    calls, repacks = [], []
    real_dual, real_quantize = kq.fused_quantize_dual, kq.fused_quantize
    monkeypatch.setattr(kq, "fused_quantize_dual",
                        lambda *a, **k: calls.append(k.get("row_flags", False)) or real_dual(*a, **k))

    def quantize(*a, **k):
        if k.get("write_fp8") is False:
            repacks.append(k.get("k_dim", 1))
        return real_quantize(*a, **k)

    monkeypatch.setattr(kq, "fused_quantize", quantize)
    results = {}
    for dual in ("0", "1"):
        monkeypatch.setenv("ADAHOP_DUAL_QUANT", dual)
        repacks.clear()
        gemm.reset_stats()
        with deferred.deferred_check(DEV) if in_step else contextlib.nullcontext() as counter:
            outputs = linear_grads(x, w, gy, 1, **kw)
        results[dual] = (outputs, dict(gemm.STATS), None if counter is None else int(counter.item()), list(repacks))
        if dual == "0":
            assert calls == []
    for a, b, name in zip(results["1"][0], results["0"][0], ("y", "gx", "gw")):
        assert torch.equal(a, b), name
    assert results["1"][1] == results["0"][1] and results["1"][2] == results["0"][2]
    return results, calls


@pytest.mark.parametrize("sr", [False, True])
@pytest.mark.parametrize("modes", [("hadamard", "hadamard", "hadamard"), ("none", "hadamard", "none")])
def test_operands_quantized_once_equal_two_quantizations(modes, sr, fast_path, monkeypatch):
    kw = dict(zip(("forward_y", "backward_gx", "backward_gw"), modes), use_sr_grad=sr, randomized_hadamard=True)
    results, calls = compare(*operands(256, 256, 384), monkeypatch, **kw)
    assert calls == [False, True]  # x in forward, g in backward
    stats = results["1"][1]
    assert stats["gemms"] == 3 and stats["corrected_gemms"] >= 1  # the rare path ran, so its inputs were checked
    assert bool(torch.isfinite(results["1"][0][2]).all())


def test_padded_tokens_and_a_128_hadamard_with_stochastic_rounding(fast_path, monkeypatch):
    """1000 tokens: the weight gradient's K padded to 1024 by the dual kernel (its zero rows, the signs of
    the padded length); Hadamard blocks of 128 on both axes."""
    results, calls = compare(*operands(1000, 256, 384), monkeypatch, hadamard_size=128, use_sr_grad=True,
                             randomized_hadamard=True)
    assert calls == [False, True] and results["1"][1]["gemms"] == 3


def test_token_padding_of_a_large_hadamard_size(fast_path, monkeypatch):
    """hadamard_size 256 pads the tokens to 256 even in the modes without a transform (128 tokens here), and
    the dual kernel must pad to the same length (a padding to 128 gave mismatched GEMM shapes)."""
    modes = dict(forward_y="none", backward_gx="none", backward_gw="none")
    results, calls = compare(*operands(128, 256, 256), monkeypatch, hadamard_size=256, **modes)
    assert calls == [False, True]


def test_forward_correction_rewrites_the_packed_x_with_the_same_signs(fast_path, monkeypatch):
    """A block of x 2^40 above its group's others (and W's matching columns zero, so the others' share shows
    in y): the forward GEMM is corrected from the packed x the dual path re-writes on demand."""
    x, w, gy = operands(256, 256, 384)
    x[9, :32] *= 2.0**40
    w[:, :32] = 0
    results, _ = compare(x, w, gy, monkeypatch, randomized_hadamard=True)
    assert 1 in results["1"][3], "the forward operand's packed form was not re-written"


def test_inside_a_training_step_the_shared_counter_agrees(fast_path, monkeypatch):
    """Inside deferred_check (as in training) the counts go to the step's one counter: the same total."""
    results, calls = compare(*operands(1000, 256, 384), monkeypatch, in_step=True, use_sr_grad=True)
    assert calls == [False, True] and results["1"][2] > 0


@pytest.mark.parametrize("sr", [False, True])
@pytest.mark.parametrize("gw_mode", ["hadamard", "inner_outlier_extract_right", "full_precision"])
def test_side_stream_wiring_gives_the_same_bits(fast_path, monkeypatch, gw_mode, sr):
    """ADAHOP_SIDE_STREAM=1 in the linear: what the side stream computes (x^T kept for the weight gradient)
    and what the allocator is told about are the right tensors, and y, gx, gw are unchanged. On the CPU the
    stream itself is a stand-in that runs the work at once (tests/kernels/test_gpu_path.py runs real
    streams on the GPU)."""
    x, w, gy = (t.to(DEV) for t in operands(256, 256, 128))
    kw = dict(forward_y="hadamard", backward_gx="hadamard", backward_gw=gw_mode, outlier_k=16, use_sr_grad=sr)
    seen = []
    if DEV == "cpu":
        monkeypatch.setattr(backend, "side_stream", lambda device: "side" if backend.side_stream_on() else None)
        monkeypatch.setattr(backend, "join_side_stream", lambda stream: None)

        def on_side(stream, fn, inputs, outputs_of):
            result = fn()
            seen.append(([t for t in outputs_of(result) if t is not None], inputs))
            return result

        monkeypatch.setattr(backend, "on_side_stream", on_side)

    def run(side):
        monkeypatch.setenv("ADAHOP_SIDE_STREAM", side)
        return linear_grads(x, w, gy, 6, **kw)

    ref = run("0")
    got = run("1")
    for u, v, name in zip(got, ref, ("y", "gx", "gw")):
        assert torch.equal(u, v), name
    if DEV == "cpu":
        forward = [] if gw_mode == "full_precision" else seen[:1]  # full precision keeps x as it is
        if forward:
            (outputs, inputs), = forward
            # the packed x^T (codes [in, tokens/2], scales [in, tokens/32]) and, for OE-right, its rows
            assert [tuple(t.shape) for t in outputs[:2]] == [(256, 128), (256, 8)]
            assert len(outputs) == (4 if gw_mode == "inner_outlier_extract_right" else 2)
            assert len(inputs) == 1 and inputs[0].shape == (256, 256)
        backward = seen[len(forward):]
        if gw_mode != "hadamard":  # the side stream in backward needs both gradient GEMMs to quantize all of g
            assert backward == []
        else:
            (outputs, inputs), = backward
            # g^T (wide fp8 [out, tokens] + scales [tokens/128, out]) and x^T in fp8 ([in, tokens] + scales)
            shapes = [tuple(t.shape) for t in outputs if t.dim() == 2]
            assert (128, 256) in shapes and (256, 256) in shapes, shapes
            assert inputs[0] is not None and inputs[0].shape == (256, 128)  # g, then the saved x^T
            assert [tuple(t.shape) for t in inputs[1:3]] == [(256, 128), (256, 8)]
