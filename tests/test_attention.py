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


def bf16(a):
    return torch.from_numpy(a).to(torch.bfloat16).double().numpy()


def definition(q, k, v, do, causal=True, shift=0, smooth_keys=False, quantize_dp=True):
    """float64 forward and backward of the MXFP4 attention (module docstring table); `shift` moves the integer
    stabilizer M, which must not change anything; smooth_keys centres K over the sequence (and so dK, as the
    gradient through the centring); without quantize_dp, dP is the float64 product of bf16 dO and V."""
    q, k, v, do = (t.double().numpy() for t in (q, k, v, do))
    if smooth_keys:
        k = k - k.mean(-2, keepdims=True)
    scale = 1 / math.sqrt(D)
    t = fq(q, -1, True) @ np.swapaxes(fq(k, -1, True), -1, -2) * scale * math.log2(math.e)
    if causal:
        t = np.where(np.tril(np.ones((T, T), bool)), t, -np.inf)
    e = 2.0 ** (t - np.ceil(t.max(-1, keepdims=True)) - shift)  # quantized before normalization
    total = fq(e, -1).sum(-1, keepdims=True)  # the sum of the quantized E
    p = e / total
    o = fq(e, -1) @ fq(v, -2) / total
    dv = np.swapaxes(fq(p, -2), -1, -2) @ fq(do, -2)
    if quantize_dp:
        dp = fq(do, -1, True) @ np.swapaxes(fq(v, -1, True), -1, -2)
    else:
        dp = bf16(do) @ np.swapaxes(bf16(v), -1, -2)
    ds = p * (dp - (do * o).sum(-1, keepdims=True))
    dq = fq(ds, -1) @ fq(k, -2) * scale
    dk = np.swapaxes(fq(ds, -2), -1, -2) @ fq(q, -2) * scale
    if smooth_keys:
        dk = dk - dk.mean(-2, keepdims=True)
    return [torch.from_numpy(t) for t in (o, dq, dk, dv)]


def rel(a, b):
    return ((a.double() - b).norm() / b.norm()).item()


@pytest.mark.parametrize("quantize_dp", [True, False])
@pytest.mark.parametrize("smooth_keys", [True, False])
@pytest.mark.parametrize("causal", [True, False])
def test_forward_backward_match_definition(causal, smooth_keys, quantize_dp):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, generator=g) for _ in range(3))
    q[..., 5] *= 10  # an outlier channel along head_dim: what the Hadamard is for
    k += 3.0 * torch.randn(D, generator=g)  # the offset keys share (what smooth_keys removes)
    do = torch.randn(B, H, T, D, generator=g)
    qr, kr, vr = (t.clone().requires_grad_(True) for t in (q, k, v))
    o = mxfp4_attention(qr, kr, vr, is_causal=causal, smooth_keys=smooth_keys, quantize_dp=quantize_dp)
    o.backward(do)
    want = definition(q, k, v, do, causal, smooth_keys=smooth_keys, quantize_dp=quantize_dp)
    for got, w in zip((o, qr.grad, kr.grad, vr.grad), want):
        assert rel(got, w) < 2e-3
    # and it is MXFP4, not exact attention
    exact = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=causal)
    assert rel(o, exact) > 1e-2
    if smooth_keys:  # (the shared offset of the keys, left in, costs more: the next test)
        assert rel(o, exact) < 0.5  # averaging many keys shrinks O, so its relative error is large


def exact_attention(q, k, v, do, causal=True):
    """float64 O, dQ, dK, dV of softmax attention."""
    q, k, v = (t.double().requires_grad_(True) for t in (q, k, v))
    o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    o.backward(do.double())
    return [t.detach() for t in (o, q.grad, k.grad, v.grad)]


def errors(q, k, v, do, **kwargs):
    """Relative errors of mxfp4_attention's O, dQ, dK, dV against exact attention."""
    qr, kr, vr = (t.clone().requires_grad_(True) for t in (q, k, v))
    o = mxfp4_attention(qr, kr, vr, **kwargs)
    o.backward(do)
    return [rel(got, want) for got, want in zip((o, qr.grad, kr.grad, vr.grad), exact_attention(q, k, v, do))]


def test_smoothed_keys_make_the_shared_offset_of_the_keys_harmless():
    """Keys that share an offset (as trained models' keys do) change no exact output (q . kbar shifts a whole
    row of scores), but in MXFP4 the offset takes the scores' precision and, through dQ = dS K, carries the part
    of dS that quantization keeps from summing to zero: dQ's error exceeds its size. Centred keys give the errors
    of keys without the offset."""
    g = torch.Generator().manual_seed(0)
    q, k, v, do = (torch.randn(B, H, T, D, generator=g) for _ in range(4))
    offset = k + 3.0 * torch.randn(D, generator=g)
    plain = errors(q, k, v, do, smooth_keys=False)
    raw = errors(q, offset, v, do, smooth_keys=False)
    smoothed = errors(q, offset, v, do, smooth_keys=True)
    assert raw[1] > 0.8 and raw[1] > 2 * smoothed[1], (raw, smoothed)  # dQ
    assert all(s < 1.2 * p for s, p in zip(smoothed, plain)), (smoothed, plain)
    # the gradient through the centring: dK sums to zero over the sequence, as the exact dK does
    kr = offset.clone().requires_grad_(True)
    mxfp4_attention(q, kr, v, smooth_keys=True).backward(do)
    assert kr.grad.sum(-2).abs().max() < 1e-4 * kr.grad.abs().sum(-2).max()


def test_dp_from_bf16_operands_cuts_the_score_gradients_error():
    """dS = P (dP - rowsum(dO * O)) differences two nearly equal terms: dP in MXFP4 adds error to both dQ and dK
    that bf16 dP (the default) does not."""
    g = torch.Generator().manual_seed(1)
    q, k, v, do = (torch.randn(B, H, T, D, generator=g) for _ in range(4))
    mx = errors(q, k, v, do, quantize_dp=True)
    bf = errors(q, k, v, do, quantize_dp=False)
    assert bf[0] == mx[0] and bf[3] == mx[3]  # O and dV do not involve dP
    assert bf[1] < 0.92 * mx[1] and bf[2] < 0.92 * mx[2], (bf, mx)


def test_the_stabilizer_changes_no_bit_of_the_output():
    """Quantization commutes with a power of two, and O divides by the sum of the quantized E: any integer M gives
    the same O, which is what lets the flash kernel rescale its running sums exactly."""
    g = torch.Generator().manual_seed(3)
    q, k, v, do = (torch.randn(B, H, T, D, generator=g) for _ in range(4))
    base = definition(q, k, v, do)[0]
    for shift in (-7, 1, 40):
        assert torch.equal(definition(q, k, v, do, shift=shift)[0], base)


def test_a_row_with_one_dominant_key_gives_that_keys_value():
    """The weights of V sum to one: a row whose scores single out one key returns that key's quantized V, whatever
    E2M1 does to the key's weight (here E = 2^(S log2(e) - M) of the dominant key is 0.9, which MXFP4 holds as
    0.75)."""
    g = torch.Generator().manual_seed(4)
    v = torch.randn(1, 1, T, D, generator=g)
    q, k = torch.zeros(1, 1, T, D), torch.zeros(1, 1, T, D)  # every score 0 but one
    k[0, 0, 9, 0] = 1.0  # Hadamard: +-1/sqrt(32), which MXFP4 rounds to +-0.1875
    q[0, 0, 20, 0] = 4 * math.sqrt(32)  # Hadamard: +-4, exact; so S of query 20 and key 9 is 32 * 4 * 0.1875 * scale
    t = 200 + math.log2(0.9) % 1 - 1  # that score in base 2: M = 200, E = 2^(t - M) = 0.9
    o = mxfp4_attention(q, k, v, scale=t / (24 * math.log2(math.e)), is_causal=True, hadamard_size=32)
    want = torch.from_numpy(fq(v.double().numpy(), -2))[0, 0, 9]
    torch.testing.assert_close(o[0, 0, 20].double(), want, rtol=1e-6, atol=0)


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


def test_reference_ops_refuse_what_they_would_misread():
    """The custom ops may be called directly: o or P of another shape would broadcast into wrong gradients."""
    from adahop.attention import attention_backward, attention_forward

    q = torch.randn(1, 2, 32, 32)
    o, p = attention_forward(q, q, q, 0.2, True, 32, False)
    with pytest.raises(ValueError, match="do and o like q"):
        attention_backward(o, q, q, q, o[:, :1], p, 0.2, 32, False)
    with pytest.raises(ValueError, match="probabilities"):
        attention_backward(o, q, q, q, o, p[..., :1], 0.2, 32, False)
    with pytest.raises(ValueError, match="as many key/value heads"):
        attention_forward(q, q[:, :1], q[:, :1], 0.2, True, 32, False)


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


@pytest.mark.parametrize("name", ["use_sr_grad", "smooth_keys", "quantize_dp"])
@pytest.mark.parametrize("value", ["false", 0, None])
def test_settings_take_booleans_only(name, value):
    """bool("false") is True: a setting that is not a bool is refused, not coerced."""
    q = torch.randn(1, 1, 32, 32)
    with pytest.raises(TypeError, match=name):
        mxfp4_attention(q, q, q, **{name: value})
    with pytest.raises(TypeError, match=name):
        MXFP4Attention(**{name: value})
