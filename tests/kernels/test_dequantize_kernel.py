"""The packed MXFP4 -> bf16 kernel (adahop.kernels.dequantize) against the torch reference
(adahop.mx.dequantize_mxfp4 in float32, rounded to bf16), bit for bit: every code with every scale byte (the
subnormal, overflowing and NaN ends included), ragged shapes, and random operands of the quantizer.

Runs on CUDA when present, else on the CPU with TRITON_INTERPRET=1 (see conftest.py)."""

from __future__ import annotations

import pytest
import torch

from adahop import backend
from adahop.kernels.dequantize import dequantize_bf16
from adahop.mx import MXFP4Tensor, dequantize_mxfp4

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit patterns, NaN in the same places (a NaN's payload and sign carry nothing)."""
    nan = a.isnan()
    return torch.equal(nan, b.isnan()) and torch.equal(a.view(torch.int16)[~nan], b.view(torch.int16)[~nan])


def reference(packed, scales):
    return dequantize_mxfp4(packed.cpu(), scales.cpu(), axis=-1, dtype=torch.bfloat16)


def test_every_code_with_every_scale_byte():
    """Row b holds scale byte b for each of its blocks; its 32-element blocks cycle through the 16 codes, so
    every (code, byte) pair appears: 2^-127 scales (subnormal bf16 results), 2^127 (6 * 2^127 overflows to inf
    as in float32), 255 (a NaN block), negative zero."""
    codes = torch.arange(64 * 2, dtype=torch.int64) % 16  # 128 codes a row: four blocks of 32
    packed_row = (codes[0::2] | (codes[1::2] << 4)).to(torch.uint8)
    packed = packed_row.repeat(256, 1)
    scales = torch.arange(256, dtype=torch.int64).to(torch.uint8)[:, None].repeat(1, 4)
    got = dequantize_bf16(packed.to(DEV), scales.to(DEV)).cpu()
    want = reference(packed, scales)
    assert same_bits(got, want)
    assert torch.isinf(want).any() and torch.isnan(want).any()
    assert (want.float().abs() < 2.0**-126).logical_and(want != 0).any()  # subnormals were checked


@pytest.mark.parametrize("rows, k", [(1, 32), (17, 96), (33, 288), (5, 1024)])
def test_ragged_shapes(rows, k):
    g = torch.Generator().manual_seed(rows)
    packed = torch.randint(0, 256, (rows, k // 2), generator=g, dtype=torch.int64).to(torch.uint8)
    scales = torch.randint(100, 150, (rows, k // 32), generator=g, dtype=torch.int64).to(torch.uint8)
    assert same_bits(dequantize_bf16(packed.to(DEV), scales.to(DEV)).cpu(), reference(packed, scales))


def test_operands_of_the_quantizer_through_the_backend():
    """What adahop.grouped_mm multiplies: backend.dequantize_bf16 of a quantized operand (fast path where the
    device has one) equals the reference values of the same packed bytes."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 256, generator=g)
    x[:, 5] *= 300
    x[3] *= 2.0**-100
    _, packed = backend.quantize(x.to(DEV, torch.bfloat16), hadamard_size=32, packed=True)
    got = backend.dequantize_bf16(packed).cpu()
    assert same_bits(got, reference(packed.data, packed.scales))


def test_refuses_mismatched_scales():
    with pytest.raises(ValueError, match="scales uint8"):
        dequantize_bf16(torch.zeros(4, 16, dtype=torch.uint8), torch.zeros(4, 2, dtype=torch.uint8))


def test_mxfp4_tensor_dequantize_is_the_reference():
    """The reference of this file is the same function MXFP4Tensor.dequantize uses (not the code under test)."""
    packed = torch.randint(0, 256, (3, 16), dtype=torch.int64).to(torch.uint8)
    scales = torch.full((3, 1), 127, dtype=torch.uint8)
    assert same_bits(MXFP4Tensor(packed, scales, axis=-1, dtype=torch.bfloat16).dequantize(), reference(packed, scales))


@pytest.mark.parametrize(
    "modes", [("hadamard",) * 3, ("none",) * 3, ("hadamard", "inner_outlier_extract_left", "none")]
)
def test_grouped_gemms_in_one_call_on_the_kernels_are_the_reference_path(modes, monkeypatch):
    """The one-call grouped GEMMs with their operands from the kernels (backend.quantize_bf16's fused pass, the
    saved x through dequantize_bf16) give the bits of the same code on the torch reference's operands."""
    from adahop.grouped import mxfp4_grouped_mm
    from adahop.linear import LinearRecipe

    g = torch.Generator().manual_seed(1)
    sizes = torch.tensor([37, 0, 5, 71], device=DEV)
    x = torch.randn(113, 256, generator=g)
    x[:, 7] *= 200  # an outlier channel
    x[40:45] *= 2.0**-100
    w = torch.randn(4, 128, 256, generator=g) / 16
    gy = torch.randn(113, 128, generator=g)

    def run(fast):
        monkeypatch.setattr(backend, "fast_device", lambda device: fast)
        xs = x.to(DEV, torch.bfloat16).requires_grad_()
        ws = w.to(DEV, torch.bfloat16).requires_grad_()
        y = mxfp4_grouped_mm(xs, ws, sizes, LinearRecipe(*modes))
        y.backward(gy.to(DEV, torch.bfloat16))
        return [t.detach().cpu() for t in (y, xs.grad, ws.grad)]

    for got, want in zip(run(True), run(False)):
        assert same_bits(got, want)
