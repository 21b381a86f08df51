"""MXFP4 attention forward/backward against a float64 definition built from tests/reference.py."""

import math

import numpy as np
import pytest
import reference as ref
import torch
import torch.nn.functional as F

from adahop.attention import MXFP4Attention, mxfp4_attention

B, H, T, D = 1, 2, 64, 64


def fq(a, axis, hadamard=False):
    a = np.moveaxis(a, axis, -1)
    if hadamard:
        a = ref.block_hadamard(a, 32)
    return np.moveaxis(ref.fake_quant(a), -1, axis)


def definition(q, k, v, do, causal=True):
    """float64 forward and backward of the MXFP4 attention (module docstring table)."""
    q, k, v, do = (t.double().numpy() for t in (q, k, v, do))
    scale = 1 / math.sqrt(D)
    s = fq(q, -1, True) @ np.swapaxes(fq(k, -1, True), -1, -2) * scale
    if causal:
        s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
    e = np.exp(s - s.max(-1, keepdims=True))  # quantized before normalization: each row's largest is 1
    p = e / e.sum(-1, keepdims=True)
    o = fq(e, -1) @ fq(v, -2) / e.sum(-1, keepdims=True)
    dv = np.swapaxes(fq(p, -2), -1, -2) @ fq(do, -2)
    dp = fq(do, -1, True) @ np.swapaxes(fq(v, -1, True), -1, -2)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True))
    dq = fq(ds, -1) @ fq(k, -2) * scale
    dk = np.swapaxes(fq(ds, -2), -1, -2) @ fq(q, -2) * scale
    return [torch.from_numpy(t) for t in (o, dq, dk, dv)]


def rel(a, b):
    return ((a.double() - b).norm() / b.norm()).item()


@pytest.mark.parametrize("causal", [True, False])
def test_forward_backward_match_definition(causal):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, generator=g) for _ in range(3))
    q[..., 5] *= 10  # an outlier channel along head_dim: what the Hadamard is for
    do = torch.randn(B, H, T, D, generator=g)
    qr, kr, vr = (t.clone().requires_grad_(True) for t in (q, k, v))
    o = mxfp4_attention(qr, kr, vr, is_causal=causal)
    o.backward(do)
    want = definition(q, k, v, do, causal)
    for got, w in zip((o, qr.grad, kr.grad, vr.grad), want):
        assert rel(got, w) < 2e-3
    # and it is MXFP4, not exact attention
    exact = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=causal)
    assert rel(o, exact) > 1e-2
    assert rel(o, exact) < 0.5  # averaging many keys shrinks O, so its relative error is large


def test_gqa_and_module_signature():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 4, 32, 32, generator=g)
    k, v = torch.randn(1, 2, 32, 32, generator=g), torch.randn(1, 2, 32, 32, generator=g)
    out = MXFP4Attention()(q, k, v, enable_gqa=True, is_causal=True)
    exact = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert out.shape == exact.shape and rel(out, exact.double()) < 0.3
    with pytest.raises(ValueError, match="enable_gqa"):
        mxfp4_attention(q, k, v)


def test_lengths_must_be_blocks():
    q = torch.randn(1, 1, 40, 32)
    with pytest.raises(ValueError, match="query length"):
        mxfp4_attention(q, q, q)


def test_causal_mask_matches_sdpa_when_queries_and_keys_differ():
    import adahop.attention as att

    g = torch.Generator().manual_seed(2)
    q, k, v = (
        torch.randn(1, 1, 32, 32, generator=g),
        torch.randn(1, 1, 64, 32, generator=g),
        torch.randn(1, 1, 64, 32, generator=g),
    )
    identity = lambda t, axis, rounding="nearest", hadamard=None: t.float()  # noqa: E731  (quantizer off)
    orig, att._q = att._q, identity
    try:
        out = mxfp4_attention(q, k, v, is_causal=True)
    finally:
        att._q = orig
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True), rtol=1e-5, atol=1e-5)
