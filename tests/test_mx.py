"""MXFP4 format against the independent float64 / ml_dtypes reference in tests/reference.py."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from reference import quantize_last_axis

from adahop.mx import dequantize_mxfp4, fake_quantize_mxfp4, quantize_mxfp4


def wide_range(shape, seed, lo=-60, hi=60):
    """Gaussian values with a random power-of-two offset per leading index: tiny to huge scales."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    shifts = torch.randint(lo, hi, (shape[0],) + (1,) * (len(shape) - 1), generator=g).float()
    return x * torch.exp2(shifts)


def unpack(data):
    return torch.stack((data & 15, data >> 4), -1).reshape(*data.shape[:-1], -1)


def assert_matches_reference(x: torch.Tensor, axis: int):
    ours = fake_quantize_mxfp4(x, axis=axis)
    assert ours.dtype == x.dtype
    moved = x.float().movedim(axis, -1).double().numpy()
    deq, codes, scales = quantize_last_axis(moved)
    expected = torch.from_numpy(deq).movedim(-1, axis).to(x.dtype)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0, equal_nan=True)
    data, sc = quantize_mxfp4(x, axis=axis)
    assert data.dtype == torch.uint8 and sc.dtype == torch.uint8
    assert np.array_equal(sc.movedim(axis, -1).numpy(), scales)
    assert np.array_equal(unpack(data.movedim(axis, -1)).numpy(), codes)
    back = dequantize_mxfp4(data, sc, axis=axis, dtype=torch.float64)
    torch.testing.assert_close(back, torch.from_numpy(deq).movedim(-1, axis), rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("axis", [-1, 0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_wide_exponents(dtype, axis, seed):
    x = wide_range((64, 96), seed).to(dtype)
    if axis == 0:
        x = x.t().contiguous()
    assert_matches_reference(x, axis)


def test_three_dims_middle_axis():
    x = wide_range((6, 64, 5), 3, -10, 10)
    assert_matches_reference(x, 1)


def test_grid_ties_round_to_even_and_saturate():
    # amax in [4, 8) gives scale 1, so these values are the scaled ones: midpoints of the E2M1 grid,
    # both sides of saturation, and exact grid points.
    vals = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0, 7.0, 7.9999, 0.5, 1.5, 3.0, 4.0, 0.2499, 0.2501]
    block = torch.tensor(vals + [-v for v in vals], dtype=torch.float32).reshape(1, 32)
    expected = [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, 6.0, 6.0, 0.5, 1.5, 3.0, 4.0, 0.0, 0.5]
    out = fake_quantize_mxfp4(block)
    assert out[0, :16].tolist() == expected
    assert out[0, 16:].tolist() == [-v for v in expected]
    assert_matches_reference(block, -1)


def test_zero_nan_inf_tiny_huge_blocks():
    x = torch.randn(8, 64)
    x[0, :32] = 0.0
    x[1, 3] = float("nan")
    x[2, 31] = float("inf")
    x[3, 0] = -float("inf")
    x[4, :32] = 1e-40  # subnormal float32: the exponent clamps at 2^-127
    x[5, :32] = torch.linspace(-3e38, 3e38, 32)  # near the float32 maximum
    x[6, :32] = 2.0**-127
    x[7, :32] = torch.tensor(2.0**-133)
    assert_matches_reference(x, -1)
    out = fake_quantize_mxfp4(x)
    assert torch.all(out[0, :32] == 0)
    for r in (1, 2, 3):
        assert torch.isnan(out[r, :32]).all() and torch.isfinite(out[r, 32:]).all()
    data, scales = quantize_mxfp4(x)
    assert scales[1, 0] == 255 and scales[0, 0] == 0


def test_length_not_multiple_of_32_refused():
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize_mxfp4(torch.randn(4, 48))
    with pytest.raises(ValueError, match="multiple of 32"):
        fake_quantize_mxfp4(torch.randn(40, 64), axis=0)


@pytest.mark.parametrize("axis", [2, -3, 5])
def test_axis_out_of_range_refused_not_wrapped(axis):
    """axis=2 of a 2-d tensor used to wrap onto axis 0 and quantize the wrong axis."""
    x = torch.randn(64, 64)
    for quantize in (quantize_mxfp4, fake_quantize_mxfp4):
        with pytest.raises(IndexError, match=f"axis {axis} is out of range for a 2-d tensor"):
            quantize(x, axis=axis)
    data, scales = quantize_mxfp4(x)
    with pytest.raises(IndexError, match="out of range"):
        dequantize_mxfp4(data, scales, axis=axis)


def test_zero_dim_and_complex_refused():
    for quantize in (quantize_mxfp4, fake_quantize_mxfp4):
        with pytest.raises(IndexError, match="0-d tensor"):
            quantize(torch.tensor(1.5))
        with pytest.raises(TypeError, match="complex64.*x.real and x.imag"):
            quantize(torch.randn(2, 32, dtype=torch.complex64))


@pytest.mark.parametrize("shape, axis", [((0, 64), -1), ((0, 64), 0), ((64, 0), 0), ((2, 0, 64), -1)])
def test_empty_tensors_give_empty_results(shape, axis):
    x = torch.zeros(shape)
    data, scales = quantize_mxfp4(x, axis)
    want = list(shape)
    want[axis] //= 2
    assert list(data.shape) == want and data.dtype == torch.uint8
    want[axis] = shape[axis] // 32
    assert list(scales.shape) == want
    assert dequantize_mxfp4(data, scales, axis).shape == x.shape
    assert fake_quantize_mxfp4(x, axis).shape == x.shape


def test_packing_low_nibble_is_first_element():
    x = torch.zeros(1, 32)
    x[0, 0], x[0, 1] = 6.0, -0.5  # scale 1: codes 0b0111 and 0b1001
    data, scales = quantize_mxfp4(x)
    assert data[0, 0].item() == (0b1001 << 4) | 0b0111
    assert scales[0, 0].item() == 127


def test_unknown_rounding_refused():
    with pytest.raises(ValueError, match="rounding"):
        fake_quantize_mxfp4(torch.randn(1, 32), rounding="up")


finite_f32 = st.floats(allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, (2, 64), elements=finite_f32))
def test_hypothesis_round_trip(a):
    x = torch.from_numpy(a.copy())
    data, scales = quantize_mxfp4(x)
    deq = dequantize_mxfp4(data, scales)
    # the reference agrees, quantizing again is the identity, and the error is at most half a grid step
    assert_matches_reference(x, -1)
    data2, scales2 = quantize_mxfp4(deq)
    assert torch.equal(dequantize_mxfp4(data2, scales2), deq)
    blocks = x.double().reshape(-1, 32)
    err = (deq.double().reshape(-1, 32) - blocks).abs()
    amax = blocks.abs().amax(1, keepdim=True)
    scale = torch.tensor([2.0 ** max(math.frexp(v)[1] - 3, -127) if v > 0 else 2.0**-127 for v in amax[:, 0].tolist()])
    unsaturated = blocks.abs() <= 6 * scale[:, None]
    assert torch.all(err[unsaturated] <= scale[:, None].expand_as(err)[unsaturated] + 1e-300)


@pytest.mark.parametrize("target", [0.3, 1.1, 2.7, 5.1, 7.3])
def test_stochastic_rounding_is_unbiased(target):
    # One block: the target repeated, plus a block max of 7.5. At the OCP scale 7.5 would saturate to 6
    # every time; SR must pick a scale that never clips, so the max column is unbiased too.
    torch.manual_seed(0)
    n = 4000
    x = torch.full((n, 32), target)
    x[:, 0] = 7.5
    out = fake_quantize_mxfp4(x, rounding="stochastic").double()
    for column, value in ((out[:, 1:], target), (out[:, 0], 7.5)):
        mean = column.mean().item()
        std_err = column.std().item() / math.sqrt(column.numel())
        assert abs(mean - value) < 5 * std_err + 1e-12
        # every output is one of the two grid neighbours of the value at that block's scale
        assert len(torch.unique(column)) <= 2
        assert column.min() <= value <= column.max()


def test_stochastic_rounding_random_blocks_unbiased():
    torch.manual_seed(1)
    x = wide_range((8, 64), 7, -5, 5)
    reps = torch.stack([fake_quantize_mxfp4(x, rounding="stochastic") for _ in range(600)]).double()
    mean = reps.mean(0)
    se = reps.std(0) / math.sqrt(reps.shape[0])
    z = ((mean - x.double()) / se.clamp_min(1e-30))[se > 0]
    assert z.abs().max() < 6
    assert z.mean().abs() < 0.2


def test_stochastic_nan_block_stays_nan():
    x = torch.randn(2, 32)
    x[0, 5] = float("nan")
    out = fake_quantize_mxfp4(x, rounding="stochastic")
    assert torch.isnan(out[0]).all() and torch.isfinite(out[1]).all()
